"""Seeds and step counters kept as scalar buffers (so checkpoints hold them) with a host copy.

Reading a tensor's value on the host (``int(t)``) waits for the device on a GPU, and a rule
that reads its seed and counter every step serialises the step (issue 21).  The host copy is
re-read only when the buffer changed behind it: ``load_state_dict`` or an in-place write bumps
the tensor's version, ``.to()`` gives a new tensor.
"""

from __future__ import annotations

import torch
from torch import nn


class HostScalars:
    """Python ints mirroring some scalar buffers of one module, by buffer name."""

    def __init__(self):
        self._seen: dict[str, tuple] = {}

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        return (id(t), t.data_ptr(), t.device, t._version)

    def get(self, module: nn.Module, name: str) -> int:
        """The buffer's value, read from the tensor only if it changed since the last read."""
        t = getattr(module, name)
        seen = self._seen.get(name)
        if seen is None or seen[0] != self._key(t):
            seen = self._seen[name] = (self._key(t), int(t))
        return seen[1]

    def increment(self, module: nn.Module, name: str) -> int:
        """Add one to the buffer (on its device) and to its host copy; the value before."""
        value = self.get(module, name)
        t = getattr(module, name)
        with torch.no_grad():
            t.add_(1)
        self._seen[name] = (self._key(t), value + 1)
        return value


def host_scalars(module: nn.Module) -> HostScalars:
    """``module``'s host copies (made on first use, so modules pickled before them work)."""
    found = module.__dict__.get("_host_scalars")
    if found is None:
        found = module.__dict__["_host_scalars"] = HostScalars()
    return found
