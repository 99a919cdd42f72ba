"""Checkpoints: state dicts plus every RNG state, written atomically.

A checkpoint holds the model's ``state_dict`` (weights *and* feedback matrices, which live in it),
the optimizer's and scheduler's state, the torch/numpy/python RNG states, the data-order
generator, the epoch reached and the metrics so far — never a pickled model (code moves).  It is
written to a uniquely named temporary file in the same folder and moved into place with
``os.replace``, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError  # noqa: F401  (re-exported)
from .rundir import open_atomic

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng",
    "restore_rng",
    "CHECKPOINT",
    "CheckpointError",
    "REQUIRED_KEYS",
    "check_fields",
    "weights_digest",
]

CHECKPOINT = "checkpoint.pt"


def capture_rng() -> dict:
    """Every global RNG state, as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(st):
    version, internal, gauss = st
    return [version, list(internal), gauss]


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (unique temp file in the same folder, then rename).

    A full disk raises ``OSError(ENOSPC)`` naming the file (torch alone reports it as an
    "enforce fail at inline_container.cc"); the previous checkpoint is kept either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path, "wb") as f:
        sink = _RecordingWriter(f)
        try:
            torch.save(payload, sink)
        except RuntimeError as exc:  # torch wraps the OSError of a failed write
            if sink.error is not None:
                raise _write_error(sink.error, path) from exc
            raise
        except OSError as exc:
            raise _write_error(exc, path) from exc
    return path


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write, which torch.save hides."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        self.f.flush()


def _write_error(exc: OSError, path: Path) -> OSError:
    if exc.errno == errno.ENOSPC:
        return OSError(errno.ENOSPC, "the disk is full", str(path))
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


# every key a checkpoint written by save_checkpoint in ``training.run`` holds
REQUIRED_KEYS = ("epoch", "model", "optimizer", "scheduler", "data_order", "rng", "history", "config")


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *, required=()) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only).

    A missing file raises ``FileNotFoundError``; a truncated, empty or foreign file, or one
    without the ``required`` keys, raises :class:`CheckpointError` in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # torch raises many types for a bad file; all mean the same here
        why = (
            "it names objects other than tensors and plain values"
            if isinstance(exc, pickle.UnpicklingError)
            else first_line(exc, 100)
        )
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({why}); it is "
            "truncated, empty or not written by ssdfa — start the run again "
            "or restore the file"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not an ssdfa checkpoint")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}; it was not written by "
            "`ssdfa train` — start the run again or restore the file"
        )
    check_fields(ckpt, path)
    return ckpt


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad(path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {what}; the checkpoint is damaged or not written by ssdfa "
        "— start the run again or restore the file"
    )


def check_fields(ckpt: dict, path) -> None:
    """Every field a reader uses has the type and range ``training.run`` writes: a file read
    back is validated before use, so a damaged one is refused in one line before anything is
    written (never a TypeError in the middle of a resume that has rewritten config.json)."""
    if "epoch" in ckpt:
        e = ckpt["epoch"]
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise _bad(path, f"epoch is {_show(e)}, not a whole number of epochs")
    for key in ("model", "optimizer", "config"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise _bad(path, f"its {key} is a {type(ckpt[key]).__name__}, not a table")
    if isinstance(ckpt.get("model"), dict):
        odd = [k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)]
        if odd:
            raise _bad(path, f"its model state holds {_show(odd[0])}, which is not a tensor")
    if "scheduler" in ckpt and ckpt["scheduler"] is not None and not isinstance(ckpt["scheduler"], dict):
        raise _bad(path, "its scheduler state is not a table")
    if "history" in ckpt:
        history = ckpt["history"]
        if not isinstance(history, list):
            raise _bad(path, f"its history is a {type(history).__name__}, not a list of epochs")
        for i, row in enumerate(history):
            _check_row(row, i + 1, path)
        if "epoch" in ckpt and len(history) != ckpt["epoch"]:
            raise _bad(path, f"its history holds {len(history)} epochs but it says epoch {ckpt['epoch']}")
    for key, low in (("world_size", 1), ("num_classes", 1)):
        v = ckpt.get(key, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise _bad(path, f"{key} is {_show(v)}")
    if "init_from_digest" in ckpt and not isinstance(ckpt["init_from_digest"], str):
        raise _bad(path, "init_from_digest is not a string")


def _check_row(row, epoch: int, path) -> None:
    if not isinstance(row, dict):
        raise _bad(path, f"history row {epoch} is {_show(row)}, not a table of metrics")
    if row.get("epoch") != epoch or isinstance(row.get("epoch"), bool):
        raise _bad(path, f"history row {epoch} says epoch {_show(row.get('epoch'))}")
    for key, value in row.items():
        if not isinstance(key, str):
            raise _bad(path, f"history row {epoch} has a key {_show(key)}")
        if key in ("train_acc", "test_acc"):
            if value is not None and not (_number(value) and 0 <= value <= 1):
                raise _bad(path, f"history row {epoch}: {key} is {_show(value)}, not a fraction in [0, 1]")
        elif key in ("train_loss", "test_loss", "lr", "seconds"):
            if not _number(value):
                raise _bad(path, f"history row {epoch}: {key} is {_show(value)}, not a number")
        elif value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise _bad(path, f"history row {epoch}: {key} is {_show(value)}, not a number")


def _show(v) -> str:
    text = repr(v) if not isinstance(v, torch.Tensor) else f"a tensor {tuple(v.shape)}"
    return text if len(text) <= 40 else text[:37] + "..."


def weights_digest(state: dict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values, in name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, cut to ``limit`` characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
