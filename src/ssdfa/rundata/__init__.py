"""Reading what ssdfa wrote, for figures and reports: runs, compares, reproductions, sweeps.

Every file is validated before anything is drawn: a damaged ``config.json``, ``metrics.json``,
``metrics.csv``, ``summary.json``, ``sweep.json``, ``results.json`` or ``checkpoint.pt`` raises
:class:`RunFileError` with one line naming the file and what is wrong with it.  Fields this
module does not use are ignored, so files that gain fields keep reading.

Directory kinds (:func:`read_inputs`):

- a **run**: ``metrics.json`` or ``metrics.csv`` (one row per epoch, ``angle/<key>`` columns
  when alignment was logged), ``config.json``, ``summary.json``, ``checkpoint.pt``;
- a **compare** or **reproduce** directory: runs in ``<row>/seed<k>`` (``<row>/<method>/seed<k>``
  for a reproduction's variant rows, ``pretrain/<method>/seed<k>`` for a transfer's pretraining)
  and ``results.json`` (a partly finished one without it is read from its runs);
- a **sweep**: ``sweep.json`` (:mod:`ssdfa.sweep`), also written by ``reproduce ssdfa-rank``.

Runs of one row are a :class:`Group`: the figures draw its mean over seeds with a ±1 std band.
Single run directories given side by side are each their own group, labelled by seed when one
method appears more than once.
"""

from __future__ import annotations

from ..errors import RunFileError
from .files import (
    first_conv_weight,
    is_run,
    is_sweep,
    load_results,
    load_run,
    load_sweep,
    read_json,
    read_metrics,
    run_label,
    series,
)
from .groups import Group, Source, _loose_groups, read_inputs  # noqa: F401  (_loose_groups: tests)

__all__ = [
    "RunFileError",
    "Group",
    "Source",
    "load_run",
    "load_sweep",
    "read_json",
    "load_results",
    "read_inputs",
    "is_run",
    "is_sweep",
    "run_label",
    "first_conv_weight",
    "series",
    "read_metrics",
]
