"""One experiment of a paper as a frozen record (:class:`Experiment`), and the setups a
row can run in (:data:`SETUPS`); the records themselves are in :mod:`.papers`."""

from __future__ import annotations

from dataclasses import dataclass, field

SETUPS = ("authors", "authors-default-init", "uniform")
# the TrainConfig settings a row's setup fixes: what --json reports per row
SETUP_KEYS = (
    "optimizer",
    "lr",
    "momentum",
    "adam_eps",
    "adam_beta1",
    "adam_beta2",
    "weight_decay",
    "schedule",
    "batch_size",
    "epochs",
    "loss",
    "activation",
    "weight_init",
    "bias_init",
    "dropout",
    "normalization",
    "feedback_init",
    "feedback_lr",
    "feedback_gamma",
    "feedback_scale",
)


@dataclass(frozen=True)
class Budget:
    """How much to train: epochs, and the first ``limit_train`` examples (None: all)."""

    epochs: int
    limit_train: int | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    citation: str  # which paper, e.g. "SSDFA (Crafton et al., 2019)"
    source: str  # where the paper's numbers are, e.g. "Table III"
    dataset: str
    model: str | None
    methods: tuple[str, ...]
    paper_numbers: tuple[tuple[str, float], ...]  # (method, number) in the paper's metric
    metric: str = "accuracy"  # "accuracy" or "error": test accuracy / test error, in %
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    batch_size: int = 64
    loss: str = "auto"
    feedback_lr: float | None = None
    full: Budget = Budget(10)
    quick: Budget = Budget(1, 300)
    stand_ins: tuple[tuple[str, str], ...] = ()  # (missing dataset, dataset used instead)
    kind: str = "train"  # "train" or "cost"
    notes: str = ""
    cost_setups: tuple[tuple[str, str, str], ...] = field(default=())  # (label, model, dataset)
    # (row label, method, TrainConfig settings of that row): e.g. BP on the FC layers only
    variants: tuple[tuple[str, str, tuple[tuple[str, object], ...]], ...] = ()
    pretrain: str = "bp"  # kind="transfer": the rule that trains the conv layers first
    ranks: tuple[int, ...] = ()  # kind="sweep"
    sparsities: tuple[float, ...] = ()
    claims: str = ""  # what the paper reports in words where it gives no number
    # what the authors' code ran each row with: (row label, TrainConfig settings); "*" is every
    # row without its own entry; empty: the code is not public, the paper's text is the setup
    authors: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    reported: str = "last"  # the epoch whose number the paper reports: "best" or "last"
    authors_notes: str = ""  # where the authors' code is silent, and what stands in

    def setup(self, label: str, setup: str = "authors") -> dict:
        """The TrainConfig settings row ``label`` runs with in ``setup`` (one of SETUPS)
        beyond :meth:`train_options`; "epochs" is the authors' epochs where they differ."""
        if setup not in SETUPS:
            raise ValueError(f"unknown setup {setup!r}; choose one of: {', '.join(SETUPS)}")
        extra = next((dict(o) for lab, _, o in self.variants if lab == label), {})
        if setup == "uniform" or not self.authors:
            return extra
        rows = dict(self.authors)
        row = dict(rows.get(label, rows.get(self._method(label), rows.get("*", ()))))
        if setup == "authors-default-init" and row.get("weight_init") == "zero":
            row["weight_init"] = "default"
        return row | extra

    def _method(self, label: str) -> str:
        return next((m for lab, m, _ in self.rows() if lab == label), label)

    def zero_init(self) -> bool:
        """Whether some row of the authors' setup starts from zero weights."""
        return any(dict(o).get("weight_init") == "zero" for _, o in self.authors)

    def paper(self) -> dict[str, float]:
        """The paper's number per row label (or per cost quantity)."""
        return dict(self.paper_numbers)

    def rows(self) -> list[tuple[str, str, dict]]:
        """(label, method, extra TrainConfig settings) for every row of the table."""
        return [(m, m, {}) for m in self.methods] + [(lab, m, dict(o)) for lab, m, o in self.variants]

    def labels(self) -> list[str]:
        return [label for label, _, _ in self.rows()]

    def train_options(self) -> dict:
        """The TrainConfig fields this experiment fixes (the paper's setup)."""
        opts = {
            "dataset": self.dataset,
            "model": self.model,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "batch_size": self.batch_size,
            "loss": self.loss,
        }
        if self.feedback_lr is not None:
            opts["feedback_lr"] = self.feedback_lr
        return opts
