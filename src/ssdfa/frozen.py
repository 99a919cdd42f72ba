"""Transfer learning (SSDFA paper, Table V): a frozen feature extractor before the trained part.

``convert(..., train_only="fc")`` keeps every layer before the first Linear fixed: they run
without autograd (no graph is built, no gradient reaches them) and in eval mode (BatchNorm
statistics and dropout fixed), so the trained part sees fixed features; feedback points are
placed over the trained part only, its first Linear acting as the first layer.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from .errors import PretrainedError  # noqa: F401  (re-exported)
from .layers import is_weight_layer
from .validate import Problem, UnsupportedModelError, flatten_sequential

TRAIN_ONLY = ("fc",)


class FrozenFeatures(nn.Sequential):
    """Layers kept as they are: run under ``torch.no_grad()`` and always in eval mode."""

    def __init__(self, layers: OrderedDict[str, nn.Module]):
        super().__init__(layers)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


def split_leaves(leaves, train_only, model, method):
    """(frozen leaves, trained leaves) of a flattened Sequential for ``train_only``."""
    if train_only is None:
        return [], leaves
    if train_only not in TRAIN_ONLY:
        raise ValueError(
            f"train_only={train_only!r} is not known; choose one of: "
            f"{', '.join(TRAIN_ONLY)} (or None to train every layer)"
        )
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(
            [
                Problem(
                    "",
                    type(model).__name__,
                    "train_only needs the model as an nn.Sequential",
                    "Build it as nn.Sequential(features, nn.Flatten(), classifier) from your model's parts",
                )
            ],
            method,
        )
    first_fc = next((i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.Linear)), None)
    if first_fc is None:
        raise UnsupportedModelError(
            [
                Problem(
                    "",
                    "Sequential",
                    "train_only='fc' but the model has no Linear layer",
                    "Add a fully connected classifier",
                )
            ],
            method,
        )
    late = [(p, m) for p, m in leaves[first_fc:] if is_weight_layer(m) and not isinstance(m, nn.Linear)]
    if late:
        raise UnsupportedModelError(
            [
                Problem(
                    p,
                    type(m).__name__,
                    "a convolution after the first Linear cannot be frozen as a feature extractor",
                    "Put every convolution before the fully connected layers",
                )
                for p, m in late
            ],
            method,
        )
    return leaves[:first_fc], leaves[first_fc:]


def frozen_name(path: str) -> str:
    """The name a frozen layer at ``path`` of the plain model has inside :class:`FrozenFeatures`."""
    return path.replace(".", "_")


def frozen_module(frozen_leaves) -> FrozenFeatures | None:
    if not frozen_leaves:
        return None
    return FrozenFeatures(OrderedDict((frozen_name(p), m) for p, m in frozen_leaves))


def _source_state(source) -> tuple[dict, dict, str]:
    """(model state, saved config, where) of the run directory or checkpoint file ``source``."""
    path = Path(source)
    ckpt_path = path / CHECKPOINT if path.is_dir() else path
    try:
        ckpt = load_checkpoint(ckpt_path, required=("model",))
    except FileNotFoundError:
        raise PretrainedError(
            f"init_from: no checkpoint at {ckpt_path}; give the run directory "
            "of a finished `ssdfa train` run (it holds checkpoint.pt)"
        ) from None
    except CheckpointError as exc:
        raise PretrainedError(f"init_from: {exc}") from None
    state = ckpt["model"]
    if not isinstance(state, dict):
        raise PretrainedError(f"init_from: {ckpt_path} holds no model weights")
    return state, ckpt.get("config") or {}, str(ckpt_path)


def load_pretrained(
    net: nn.Module, source, train_only: str | None = None, model_name: str | None = None
) -> list[str]:
    """Copy a finished run's weights into the plain (unconverted) ``net``; return the keys set.

    Transfer learning as in the SSDFA paper's Table V: with ``train_only="fc"`` only the layers
    that will be frozen (those before the first Linear) are taken from ``source``, and the
    trained layers keep their fresh initialisation; without it every weight is taken
    (fine-tuning).  The source may have been trained by any rule, with or without train_only.
    """
    state, config, where = _source_state(source)
    src_model = config.get("model") if isinstance(config, dict) else None
    if model_name and src_model and src_model != model_name:
        raise PretrainedError(
            f"init_from: {where} was trained with model {src_model!r}, this run "
            f"builds {model_name!r}; use a run of the same model"
        )
    own = net.state_dict()
    leaves = flatten_sequential(net) if isinstance(net, nn.Sequential) else []
    if train_only is not None:
        if not isinstance(net, nn.Sequential):
            raise PretrainedError("init_from with train_only needs the model as an nn.Sequential")
        frozen, _ = split_leaves(leaves, train_only, net, "init_from")
        prefixes = tuple(p + "." for p, _ in frozen)
        wanted = [k for k in own if k.startswith(prefixes)]
    else:
        wanted = list(own)
    # the converted model's keys: "net." before the plain path; frozen layers under
    # "net.frozen.<frozen_name(path)>"; feedback matrices under "feedback." (not weights: skipped)
    in_frozen = {p: f"net.frozen.{frozen_name(p)}" for p, _ in leaves}
    loaded, missing, misfit = {}, [], []
    for key in wanted:
        path, _, leaf = key.rpartition(".")
        candidates = ["net." + key, key]
        if path in in_frozen:
            candidates.insert(1, f"{in_frozen[path]}.{leaf}")
        found = next((c for c in candidates if c in state), None)
        if found is None:
            missing.append(key)
        elif tuple(state[found].shape) != tuple(own[key].shape):
            misfit.append(f"{key} {tuple(state[found].shape)} vs {tuple(own[key].shape)}")
        else:
            loaded[key] = state[found]
    if missing or misfit:
        what = (
            f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
            if missing
            else f"shapes differ: {'; '.join(misfit[:3])}"
        )
        raise PretrainedError(
            f"init_from: {where} does not fit this model ({what}); use a run "
            "of the same model on inputs of the same shape"
        )
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value)
    return list(loaded)
