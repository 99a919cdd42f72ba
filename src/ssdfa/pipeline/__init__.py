"""Model parallel training over K processes, on the library's own rules and feedback modules.

Split as ``torch.distributed.pipelining`` splits it:

* :mod:`.partition`: cut the converted ``nn.Sequential`` into blocks at its weight layers and
  the blocks into K contiguous stages;
* :mod:`.stage`: one stage, holding its blocks and the feedback modules ``ssdfa.convert`` built
  (sdfa and ssdfa keep B as (index, value)), asking the rule for every signal;
* :mod:`.schedule`: the step order, chosen by what the rule's stages receive
  (``Rule.stage_receives``: the next stage's gradient for bp, e for dfa/sdfa/ssdfa/dkp/sign_dfa,
  the labels for drtp, nothing for shallow);
* :mod:`.communication`: counted send/recv/broadcast and the byte formula;
* :mod:`.launch`: one process per stage (gloo on 127.0.0.1), failures, divergence, the result;
* :mod:`.one_process`: the same training in one process, which a K-stage run must equal.

See ``docs/pipeline.md``.
"""

from ..errors import PipelineError
from .communication import Comm, expected_bytes
from .config import PipelineConfig, batches, make_optimizer
from .launch import (
    PipelineRun,
    evaluate,
    free_port,
    run_pipeline,
    spawn_stages,
    stage_worker,
    train_pipeline,
    train_pipelines,
    train_stage,
    worker_failure,
)
from .one_process import (
    OneProcessRun,
    compare,
    max_feedback_difference,
    max_loss_difference,
    max_weight_difference,
    single_process,
    train_one_process,
)
from .partition import (
    block_feedback,
    boundary_shapes,
    boundary_widths,
    build_net,
    convert_net,
    model_feedback,
    split_blocks,
    stage_blocks,
)
from .schedule import PIPELINE_METHODS, SCHEDULES, micro_sizes, train_step
from .stage import Stage, build_stage, feedback_grads, forward

_forward_blocks = forward  # the names tests used before the split
_feedback_grads = feedback_grads

__all__ = [
    "PIPELINE_METHODS",
    "SCHEDULES",
    "Comm",
    "OneProcessRun",
    "PipelineConfig",
    "PipelineError",
    "PipelineRun",
    "Stage",
    "batches",
    "block_feedback",
    "boundary_shapes",
    "boundary_widths",
    "build_net",
    "build_stage",
    "compare",
    "convert_net",
    "evaluate",
    "expected_bytes",
    "feedback_grads",
    "forward",
    "free_port",
    "make_optimizer",
    "max_feedback_difference",
    "max_loss_difference",
    "max_weight_difference",
    "micro_sizes",
    "model_feedback",
    "run_pipeline",
    "single_process",
    "spawn_stages",
    "split_blocks",
    "stage_blocks",
    "stage_worker",
    "train_one_process",
    "train_pipeline",
    "train_pipelines",
    "train_stage",
    "train_step",
    "worker_failure",
]
