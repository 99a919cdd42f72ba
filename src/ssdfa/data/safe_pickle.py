"""An unpickler for dataset files that can build plain containers and numpy arrays, nothing else."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from ..errors import DatasetCorrupt


def _pickle_globals() -> dict[tuple[str, str], object]:
    """The only (module, name) pairs a CIFAR batch may name, each mapped to its object.

    The objects are taken from numpy as already imported (from the callables its own arrays
    pickle with), never by importing the module a file names: importing runs that module's
    code, so ``numpy.f2py.__main__`` would run f2py.  numpy 1 files say ``numpy.core``, numpy 2
    files ``numpy._core``; both mean the same functions.
    """
    arr = np.zeros(1, dtype=np.uint8)
    reconstruct = arr.__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.int64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    frombuffer = arr.__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }  # bytes in protocol-2 pickles of Python 3
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays only: a dataset file cannot run code.

    ``find_class`` decides from the two strings alone against an explicit list of pairs and
    imports nothing (``pickle.Unpickler.find_class`` would import the module first).
    """

    _ALLOWED = _pickle_globals()

    def find_class(self, module, name):
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a dataset file (only numpy arrays are read)"
            )
        return found


def read_pickle(path: Path) -> dict:
    """A CIFAR python batch as a dict with str keys; :class:`DatasetCorrupt` if it is not one."""
    try:
        with open(path, "rb") as f:
            obj = NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DatasetCorrupt(
            f"{path}: not a readable CIFAR python batch ({exc}); it is "
            "truncated or corrupt — delete it and fetch it again"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetCorrupt(f"{path}: expected a dict batch, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
