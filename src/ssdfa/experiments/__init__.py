"""The papers' experiments as data: what ``ssdfa reproduce NAME`` runs, beside what the paper reports.

Each :class:`Experiment` is a small frozen record: dataset, model, methods, the paper's optimizer,
learning rate, schedule, batch size, loss and epochs, a tiny ``quick`` budget for CI, and the
paper's own numbers per method with the table or figure they come from (checked against the
paper texts in ``shared/papers/``).  Where a paper leaves a setting out, ``notes`` says which
default stands in for it.  ``ssdfa reproduce`` trains through ``ssdfa compare``'s machinery.

Every row also records what **the authors' own code** ran it with (``authors``: optimizer with
its eps/betas/momentum, lr, batch, epochs, activation, weight and bias init, dropout, input
normalisation, feedback init; read from their public repositories into
``shared/papers/authors-code-setups.md``), and which epoch the paper's number is (``reported``:
the SSDFA code's ``max(test_acc)`` is the best epoch).  ``ssdfa reproduce`` runs one of three
:data:`SETUPS`: ``authors`` (the default), ``authors-default-init`` (the same, but torch's
default init where the authors start from zero weights, which at a short budget cannot move)
and ``uniform`` (one setup for every row: this project's SGD lr 0.01, momentum 0.9).

Kinds: ``train`` (one row per method, plus ``variants``: a method with extra settings, such as
BP training the FC layers only), ``transfer`` (a BP run per seed first, then every row trains
the FC layers on its frozen conv layers: SSDFA Table V), ``sweep`` (rank × sparsity grid through
:mod:`ssdfa.sweep`: SSDFA Figs. 5-6) and ``cost`` (counted with :mod:`ssdfa.cost`, no training).
"""

from __future__ import annotations

from . import papers_later  # noqa: F401  (registers the later papers' experiments after these)
from .papers import ALL
from .record import SETUP_KEYS, SETUPS, Budget, Experiment

__all__ = ["Experiment", "Budget", "EXPERIMENTS", "get", "names", "SETUPS", "SETUP_KEYS"]

EXPERIMENTS: dict[str, Experiment] = {}


def _add(exp: Experiment) -> Experiment:
    assert exp.name not in EXPERIMENTS, exp.name
    assert exp.kind in ("train", "transfer", "sweep", "cost"), exp.name
    assert exp.metric in ("accuracy", "error", "loss"), exp.name
    assert exp.kind in ("cost", "sweep") or set(exp.paper()) <= set(exp.labels()), exp.name
    assert exp.reported in ("best", "last"), exp.name
    assert {lab for lab, _ in exp.authors} <= set(exp.labels()) | set(exp.methods) | {"*"}, exp.name
    for _, opts in exp.authors:
        assert set(dict(opts)) <= set(SETUP_KEYS), (exp.name, set(dict(opts)) - set(SETUP_KEYS))
    EXPERIMENTS[exp.name] = exp
    return exp


def names() -> list[str]:
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    """The experiment called ``name``; KeyError naming the valid ones otherwise."""
    try:
        return EXPERIMENTS[name.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; choose one of: {', '.join(names())}") from None


for _exp in ALL:
    _add(_exp)
