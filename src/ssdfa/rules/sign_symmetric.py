"""Sign-symmetric feedback (Liao, Leibo & Poggio 2016; BioTorch's uSF, frSF, brSF).

Layer-wise, like ``fa``: each Linear/Conv2d hands δ·B_l to its input, but B_l is rebuilt from
the current weights' signs at every step (``ssdfa.layerwise.sign``): uSF B = c·sign(W) with
c = sqrt(2/(fan_in+fan_out)); frSF B = |R|⊙sign(W), R drawn once; brSF the same with R redrawn
every batch.  Sign concordance keeps B within 90° of W, which is why these rules track BP far
more closely than FA on deep convolutional networks (Moskovitz et al. 2018; BioTorch's tables).
"""

from .base import Kind, Rule, register_rule


class _SignRule(Rule):
    kind = Kind.LAYERWISE
    stage_receives = "layer_feedback"
    learnable = False
    sign = ""


@register_rule("usf")
class USF(_SignRule):
    summary = "uniform sign-concordant feedback: B_l = c·sign(W_l), c = sqrt(2/(fan_in+fan_out)), per layer"
    sign = "usf"


@register_rule("frsf")
class FRSF(_SignRule):
    summary = "fixed random-magnitude sign feedback: B_l = |R_l|⊙sign(W_l), R_l drawn once"
    sign = "frsf"


@register_rule("brsf")
class BRSF(_SignRule):
    summary = "batchwise random-magnitude sign feedback: B_l = |R_l|⊙sign(W_l), R_l redrawn every batch"
    sign = "brsf"
