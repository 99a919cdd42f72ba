"""What a learning rule is, and the registry that names them.

A rule says *what signal each feedback point receives*; how that signal gets into a layer is
shared (``ssdfa.wrapper``).  Direct rules cut the autograd graph at every feedback point, so no
Wᵀ·δ is ever computed across blocks, and receive the output error e = ∂L/∂(network output).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch

from ..errors import RuleOptionError  # noqa: F401  (re-exported)
from ..feedback import FeedbackSpec, project_all, resolve_connections

RULES: dict[str, type[Rule]] = {}


class Kind(enum.StrEnum):
    """How a rule gets credit to the hidden layers: the one thing the engine branches on.

    ``direct`` rules cut the graph at every feedback point and inject a signal there during
    backward (DFA, SDFA, SSDFA, DKP, sign-DFA, DRTP); ``local`` rules give each block its
    gradient during the forward pass (DRTP with ``unlocked=True``); ``output_only`` cuts the
    graph and injects nothing, so only the output block learns (shallow); ``forward_feedback``
    is a direct rule whose B_l are estimated by forward-mode perturbation (FDFA);
    ``layerwise`` swaps B_l for W_l inside each layer's backward (FA, KP, the sign rules);
    ``forward_gradient`` needs no points and no B (forward gradient); ``backprop`` is BP.
    """

    BACKPROP = "backprop"
    LAYERWISE = "layerwise"
    DIRECT = "direct"
    LOCAL = "local"
    OUTPUT_ONLY = "output_only"
    FORWARD_FEEDBACK = "forward_feedback"
    FORWARD_GRADIENT = "forward_gradient"


# the kinds whose model cuts the autograd graph at the feedback points
CUT = frozenset({Kind.DIRECT, Kind.LOCAL, Kind.OUTPUT_ONLY, Kind.FORWARD_FEEDBACK})
# the kinds that feed a signal through B_l at the points (in backward, or in forward for local)
FEEDS_BACK = frozenset({Kind.DIRECT, Kind.LOCAL, Kind.FORWARD_FEEDBACK})


class _FromKind:
    """A read-only boolean (or value) derived from ``kind``, on the class and on an instance."""

    def __init__(self, derive: Callable[[Kind], object]):
        self.derive = derive

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, cls=None):
        return self.derive((cls if obj is None else obj).kind)

    def __set__(self, obj, value):
        raise AttributeError(f"{self.name} follows the rule's kind: set kind = Kind.... instead")


def register_rule(name: str):
    """Class decorator: make a rule available as ``convert(model, method=name)``."""

    def deco(cls):
        if name in RULES:
            raise ValueError(f"rule {name!r} registered twice")
        cls.name = name
        RULES[name] = cls
        return cls

    return deco


class Rule:
    """Base class. Subclasses set ``kind`` and override ``error_signal`` or ``point_signals``.

    ``options`` lists the keyword options a rule accepts; anything else is rejected by name.
    """

    name = "rule"
    kind: Kind = Kind.DIRECT
    # traits orthogonal to the kind
    needs_activations = False  # keep h_l for the backward pass (learned B, alignment)
    scale_free = False  # the signal ignores |e| (a sign, the target): it must carry the loss scale
    learned_feedback = False  # B_l are parameters the optimizer must hold (DKP)
    needs_target = False  # the signal reads the target (DRTP): labels are checked in forward
    # what a pipeline stage (ssdfa.pipeline) must receive to train its blocks: "error" (e, from
    # the last stage), "target" (the labels), "nothing", "gradient" (its output's gradient from
    # the next stage: BP's backward chain), "layer_feedback" (the next stage's δ·B: FA's chain)
    # or "tangent" (a forward-mode chain through every later stage)
    stage_receives = "error"
    options: tuple[str, ...] = ()
    summary = ""

    # read-only views of ``kind``, for the engine's older tests of them
    direct = _FromKind(lambda k: k in CUT)  # cut the graph at feedback points
    layerwise = _FromKind(lambda k: k is Kind.LAYERWISE)  # B_l replaces W_l; no points used
    # signals enter at the points during backward (False: shallow, unlocked DRTP)
    inject = _FromKind(lambda k: k not in (Kind.LOCAL, Kind.OUTPUT_ONLY))
    local = _FromKind(lambda k: k is Kind.LOCAL)  # blocks learn in forward from ``local_signal``
    # which model convert builds: FDFAModel (dual activities), ForwardGradientModel (dual weights)
    forward_mode = _FromKind(
        lambda k: {Kind.FORWARD_FEEDBACK: "activities", Kind.FORWARD_GRADIENT: "weights"}.get(k)
    )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        shadowed = sorted(
            n for n in ("direct", "layerwise", "inject", "local", "forward_mode") if n in vars(cls)
        )
        if shadowed:
            raise TypeError(
                f"rule {cls.__name__} sets {', '.join(shadowed)}: these follow its "
                "kind; set kind = Kind.DIRECT (or another Kind) instead"
            )
        if not isinstance(cls.kind, Kind):
            raise TypeError(f"rule {cls.__name__}: kind must be a Kind, got {cls.kind!r}")

    def __init__(self, **opts):
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            takes = ", ".join(self.options) or "no options"
            raise RuleOptionError(
                f"method {self.name!r} does not take {', '.join(unknown)}; it takes: {takes}"
            )
        self.opts = opts

    def feedback_spec(self, num_errors: int) -> FeedbackSpec:
        """How to draw B_l for this rule (dense, full rank by default)."""
        return FeedbackSpec()

    def error_signal(self, e: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The (batch, M) vector fed back through every B_l; plain DFA feeds e itself."""
        return e

    def point_signals(self, e, feedback, shapes, target):
        """Gradients injected at the feedback points, each of its point's shape (Eq. 8-9)."""
        sig = self.error_signal(e, target)
        return [s.view(shape) for s, shape in zip(project_all(feedback, sig), shapes, strict=True)]

    def feedback_grads(self, e, hs, feedback, target):
        """Gradients of learnable feedback tensors (only rules whose B learns override this)."""
        raise NotImplementedError(f"rule {self.name!r} has no learnable feedback")

    def local_signal(self, feedback, target, h):
        """The gradient point output ``h`` gets during the forward pass (update-unlocked rules)."""
        raise NotImplementedError(f"rule {self.name!r} has no forward-time signal")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.opts.items())
        return f"{type(self).__name__}({args})"


def by_kind(*kinds: Kind | str) -> list[str]:
    """Names of the registered rules of the given kinds, in registration order.

    What a generated test enumerates: registering a rule puts it in every test of its kind.
    """
    wanted = {Kind(k) for k in kinds}
    return [name for name, cls in RULES.items() if cls.kind in wanted]


def make_rule(method, **opts) -> Rule:
    """Look a rule up by name (case and dashes forgiven) and build it with ``opts``."""
    if isinstance(method, Rule):
        if opts:
            raise RuleOptionError("pass options to the Rule's constructor, not to convert")
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name such as 'ssdfa', got {type(method).__name__}")
    key = method.strip().lower().replace("-", "_")
    if key not in RULES:
        # registration order: the families together (bp; dfa, sdfa, ssdfa; ...; usf, frsf, brsf)
        raise KeyError(f"unknown method {method!r}; choose one of: {', '.join(RULES)}")
    opts = {k: v for k, v in opts.items() if v is not None}
    return RULES[key](**opts)


def sparse_spec(num_errors: int, opts: dict, default_sparsity=None, learnable=False) -> FeedbackSpec:
    """FeedbackSpec from the shared sparsity/connections/rank options."""
    sparsity = opts.get("sparsity")
    connections = opts.get("connections")
    if sparsity is None and connections is None and default_sparsity is not None:
        # the default must work for any class count: at least one connection per neuron
        connections = max(1, round((1.0 - default_sparsity) * num_errors))
    s = resolve_connections(num_errors, sparsity=sparsity, connections=connections)
    return FeedbackSpec(connections=s, rank=opts.get("rank"), learnable=learnable)
