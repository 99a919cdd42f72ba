"""Checkpoints: state dicts plus every RNG state, written atomically.

A checkpoint holds the model's ``state_dict`` (weights *and* feedback matrices, which live in it),
the optimizer's and scheduler's state, the torch/numpy/python RNG states, the data-order
generator, the epoch reached and the metrics so far — never a pickled model (code moves).  It is
written to a uniquely named temporary file in the same folder and moved into place with
``os.replace``, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from .rundir import open_atomic

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "CHECKPOINT",
           "CheckpointError", "REQUIRED_KEYS"]

CHECKPOINT = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, incomplete, or of another run or model."""


def capture_rng() -> dict:
    """Every global RNG state, as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
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
REQUIRED_KEYS = ("epoch", "model", "optimizer", "scheduler", "data_order", "rng", "history",
                 "config")


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
        why = ("it names objects other than tensors and plain values"
               if isinstance(exc, pickle.UnpicklingError) else first_line(exc, 100))
        raise CheckpointError(f"{path} is not a readable checkpoint ({why}); it is "
                              "truncated, empty or not written by ssdfa — start the run again "
                              "or restore the file") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not an ssdfa checkpoint")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it was not written by "
                              "`ssdfa train` — start the run again or restore the file")
    return ckpt


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, cut to ``limit`` characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
