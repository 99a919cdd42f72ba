"""Gradients from the library against a reference computed without it, every name listed at once."""

from __future__ import annotations

import torch


def assert_same(got, want):
    """``got`` and ``want`` ({parameter name: gradient}) hold the same names and close values;
    a failure lists every name that differs, with its largest difference."""
    bad = []
    for n in sorted(set(got) | set(want)):
        if n not in got or n not in want:
            bad.append(f"{n}: only in {'library' if n in got else 'reference'}")
            continue
        try:
            torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6)
        except AssertionError:
            bad.append(f"{n}: max |diff| {(got[n] - want[n]).abs().max():.3g}")
    assert not bad, "\n".join(bad)
