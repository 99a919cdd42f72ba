"""Find the places a training step reads a tensor's value on the host (issue 21).

On a GPU each read (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, ``.cpu()``, …) waits
for every queued kernel, so the CPU cannot run ahead launching the next ones and a launch-bound
step costs CPU time plus GPU time.  The reads are visible on the CPU as well: the Python-level
ones by wrapping the Tensor methods (:func:`host_reads`), the C++-level ones as aten operators
in a profile (:data:`READ_OPS`).  On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` sees
every one, copies from pageable memory included.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")
READ_OPS = frozenset({"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero"})
_TORCH = str(Path(torch.__file__).parent)


@contextmanager
def host_reads() -> Iterator[list[tuple[str, str]]]:
    """Every Python-level read of a tensor's value while inside: (method, the first caller
    outside torch as ``file:line``)."""
    seen: list[tuple[str, str]] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        def read(self, *args, **kwargs):
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith(_TORCH)]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            seen.append((name, where))
            return originals[name](self, *args, **kwargs)

        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, counted(name))
        yield seen
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def aten_reads(prof) -> dict[str, int]:
    """The value-reading aten operators in a finished ``torch.profiler.profile``, with counts."""
    return {e.key: e.count for e in prof.key_averages() if e.key in READ_OPS}
