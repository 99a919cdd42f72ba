"""Training with ssdfa's rules: ``ssdfa.training.run(TrainConfig(...))``.

The package holds, one job a module:

- :mod:`.config`: :class:`TrainConfig` (everything a run depends on) and its checks;
- :mod:`.factories`: the device, model, optimizer, schedule and loss a config builds;
- :mod:`.runfiles`: the run directory's files (config.json, metrics, summary, restore);
- :mod:`.loop`: :func:`run`, the loop itself, read top to bottom.
"""

from __future__ import annotations

from ..checkpoint import save_checkpoint  # noqa: F401  (ssdfa.training.save_checkpoint, as before)
from ..errors import ConfigError, Diverged
from .config import (  # noqa: F401
    _F32_MAX,
    _SEED_MAX,
    LOSSES,
    MAX_THREADS,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    check_types,
    resolve,
    setup_problems,
)
from .factories import (  # noqa: F401
    build_model,
    feedback_params,
    make_loss,
    make_optimizer,
    make_scheduler,
    named_model,
    pick_device,
    rule_options,
)
from .loop import evaluate, preflight, run
from .runfiles import (  # noqa: F401
    RESUME_MAY_CHANGE,
    check_checkpoint_config,
    check_model_state,
    default_out_dir,
    init_from_digest,
    load_state,
    read_run_config,
    settings_differ,
)

__all__ = [
    "TrainConfig",
    "run",
    "Diverged",
    "ConfigError",
    "build_model",
    "evaluate",
    "OPTIMIZERS",
    "SCHEDULES",
    "LOSSES",
    "read_run_config",
    "check_checkpoint_config",
    "load_state",
    "preflight",
]
