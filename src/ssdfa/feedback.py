"""Feedback matrices: how they are drawn (the factory) and how they are stored and applied.

Convention: a feedback matrix B has shape (M errors, N neurons); the signal a feedback point
receives is ``e @ B`` for an error batch ``e`` of shape (batch, M) (SSDFA paper, Eq. 8-11,
written there as B·e for a single example).

Storage follows sparsity. :class:`DenseFeedback` keeps the (M, N) matrix. :class:`SparseFeedback`
keeps, per neuron, the indices of its S errors and their S values, and applies them with a
gather, so memory and time are O(N·S) rather than O(N·M): the point of SDFA and SSDFA.
Everything needed to rebuild B is a buffer (or a parameter when B learns), so it is in
``state_dict``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FeedbackConfigError  # noqa: F401  (re-exported)

__all__ = [
    "FeedbackSpec",
    "DenseFeedback",
    "SparseFeedback",
    "make_feedback",
    "resolve_connections",
    "default_std",
    "feedback_std",
    "seeded_generator",
    "child_generator",
    "FEEDBACK_INITS",
    "init_std",
    "check_feedback_init",
]


def seeded_generator(seed: int | None) -> torch.Generator:
    """The generator every B_l of one conversion descends from (``seed=None``: a random one)."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63
    ):
        raise FeedbackConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return torch.Generator().manual_seed(
        int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    )


def child_generator(base: torch.Generator) -> torch.Generator:
    """An independent generator per point or layer, drawn from ``base`` in order."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=base)))


def default_std(neurons: int) -> float:
    """Std of the paper's dense init U(-1/sqrt(N), 1/sqrt(N)), N = neurons at the point.

    The SSDFA paper (Sec. VI) draws B uniformly in ±1/sqrt(fan-in) with the layer size as the
    fan-in; that is also the law of a freshly initialised PyTorch output layer reading that
    point, so e·B starts at the magnitude BP's first hidden error would have.  For conv points
    N = C·H·W, which keeps a conv layer's summed-over-positions update in scale with the rest.
    """
    return 1.0 / math.sqrt(3.0 * neurons)


def feedback_std(layer: nn.Module, neurons: int) -> float:
    """Std of B_l for a point of ``neurons`` fed by weight layer ``layer``.

    Linear: the paper's 1/sqrt(3N) (``default_std``): U(±1/sqrt(N)), N = neurons at the point.
    Conv2d: 1/sqrt(3·fan_in·N), fan_in = C_in/groups·k_h·k_w: the paper's U(±1/sqrt(N)) with N
    the whole map (C·H·W), divided once more by sqrt(fan_in).  A conv kernel is shared by every
    position of its map, and its inputs (ReLU/pool outputs) are mostly non-negative, so the
    fan_in inputs of neighbouring positions add up coherently in the forward effect of an
    update: per-position scaling alone (1/sqrt(3·max(fan_in, C_out)·P), the rule before this
    one) let the SSDFA paper's CIFAR CNN diverge at BP's lr 0.01 + momentum 0.9 through its
    conv layers of fan_in 2400 and 3200; with this rule dfa and ssdfa train it (README, "Conv
    feedback scale"; bench/conv_scale.py shows the per-layer updates).  ``feedback_scale``
    multiplies either rule.
    """
    if not isinstance(layer, nn.Conv2d):
        return default_std(neurons)
    fan_in = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
    return 1.0 / math.sqrt(3.0 * fan_in * neurons)


FEEDBACK_INITS = ("ours", "uniform:1/sqrt(n)", "kaiming-uniform")


def check_feedback_init(init, rule=None) -> str:
    """``init`` as one of :data:`FEEDBACK_INITS`, else a ValueError listing them; with ``rule``,
    also that the rule has direct feedback matrices for it to draw."""
    key = str(init).strip().lower().replace(" ", "")
    if key not in FEEDBACK_INITS:
        raise FeedbackConfigError(
            f"feedback_init {init!r} unknown; choose one of: {', '.join(FEEDBACK_INITS)}"
        )
    if rule is not None and key != "ours" and not (rule.direct and (rule.inject or rule.local)):
        raise FeedbackConfigError(
            f"feedback_init={key} has no effect with method {rule.name!r}, which has no direct "
            "feedback matrices; it applies to dfa, sdfa, ssdfa, dkp, sign_dfa and drtp"
        )
    return key


def init_std(
    init: str, layer: nn.Module | None, neurons: int, num_errors: int, connections: int | None = None
) -> float:
    """Std over all M·N entries of B_l (M = ``num_errors``, N = ``neurons`` at the point).

    ``ours``: :func:`feedback_std` (``default_std`` when no weight layer feeds the point).
    ``uniform:1/sqrt(n)``: the SSDFA code's draw (authors-code-setups.md): dense U(±1/√N),
    sparse rows with S = ``connections`` non-zeros U(±(M·S)^¼/√N), so std (M·S)^¼/√(3N)·√(S/M)
    counting the zeros; N is the whole map (C·H·W) at a conv point, with no fan-in factor.
    ``kaiming-uniform``: DRTP's and DKP's U(±√(6/N)), std √(2/N), whatever M.
    """
    if init == "ours":
        return default_std(neurons) if layer is None else feedback_std(layer, neurons)
    if init == "uniform:1/sqrt(n)":
        if connections is None or connections >= num_errors:
            return default_std(neurons)
        s, m = connections, num_errors
        return (m * s) ** 0.25 * default_std(neurons) * math.sqrt(s / m)
    if init == "kaiming-uniform":
        return math.sqrt(2.0 / neurons)
    raise FeedbackConfigError(f"feedback_init {init!r} unknown; choose one of: {', '.join(FEEDBACK_INITS)}")


@dataclass(frozen=True)
class FeedbackSpec:
    """What to draw: S non-zeros per neuron out of M errors, rank R (``None`` = full)."""

    connections: int | None = None  # S; None means dense (S = M)
    rank: int | None = None  # R; None means full rank, min(M, N)
    learnable: bool = False  # B as nn.Parameter (DKP) rather than a buffer


def _check_int(name: str, value, low: int, high: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FeedbackConfigError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise FeedbackConfigError(f"{name}={value} is out of range [{low}, {high}]: {why}")
    return value


def resolve_connections(num_errors: int, *, sparsity=None, connections=None) -> int | None:
    """Turn ``sparsity`` (fraction of zeros) or ``connections`` (non-zeros per neuron) into S.

    Returns None for dense feedback (neither given, or sparsity 0).
    """
    if sparsity is not None and connections is not None:
        raise FeedbackConfigError(
            "give either sparsity (fraction of zeros per row) or connections (non-zeros per neuron), not both"
        )
    if connections is not None:
        return _check_int(
            "connections",
            connections,
            1,
            num_errors,
            f"each neuron can listen to between 1 and all {num_errors} errors",
        )
    if sparsity is None:
        return None
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise FeedbackConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise FeedbackConfigError(
            f"sparsity={sparsity} must lie in [0, 1): it is the fraction of zeros in each row of "
            f"B; 1 would leave neurons with no feedback (SSDFA is sparsity {1 - 1 / num_errors:g} "
            f"for {num_errors} errors, or connections=1)"
        )
    s = round((1.0 - float(sparsity)) * num_errors)
    if s < 1:
        raise FeedbackConfigError(
            f"sparsity={sparsity} leaves no error per neuron with {num_errors} errors; use at most "
            f"{1 - 1 / num_errors:g} (connections=1, SSDFA)"
        )
    return None if s == num_errors else s


def _even_index_sets(m: int, s: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """R sets of S distinct errors out of M, covering every error as evenly as possible.

    Each set takes the S least-used errors so far (ties broken at random), so usage counts
    never differ by more than one; with S·R >= M every error lands in some set.
    """
    counts = torch.zeros(m)
    sets = []
    for _ in range(r):
        noise = torch.rand(m, generator=gen)  # random tie-break in [0, 1)
        pick = torch.argsort(counts + noise)[:s]
        counts[pick] += 1
        sets.append(torch.sort(pick).values)
    return torch.stack(sets)  # (R, S)


def _balanced_groups(n: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """Assign each of N neurons one of R groups, every group used (N >= R), order random."""
    groups = torch.arange(n) % r
    return groups[torch.randperm(n, generator=gen)]


def check_errors(e: torch.Tensor, num_errors: int) -> None:
    """The errors a feedback matrix projects are (batch, M)."""
    if e.dim() != 2 or e.shape[1] != num_errors:
        raise ValueError(f"feedback expects errors of shape (batch, {num_errors}), got {tuple(e.shape)}")


class _Feedback(nn.Module):
    """Base: a feedback matrix of shape (M, N) applied as ``e @ B``. Subclasses store it."""

    num_errors: int
    num_neurons: int

    def project(self, e: torch.Tensor) -> torch.Tensor:
        """(batch, M) errors -> (batch, N) signals, checking shapes once here."""
        check_errors(e, self.num_errors)
        return self._project(e)

    def dense(self) -> torch.Tensor:
        """The matrix as a dense (M, N) tensor, for inspection and analysis."""
        raise NotImplementedError

    def grad_from(self, e: torch.Tensor, h: torch.Tensor):
        """Gradient of sum(h * (e @ B)) w.r.t. the stored values: eᵀh in storage layout."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"errors={self.num_errors}, neurons={self.num_neurons}"


class DenseFeedback(_Feedback):
    """Dense B (M, N): O(N·M) memory and MACs per example."""

    def __init__(self, matrix: torch.Tensor, learnable: bool = False):
        super().__init__()
        self.num_errors, self.num_neurons = matrix.shape
        if learnable:
            self.matrix = nn.Parameter(matrix)
        else:
            self.register_buffer("matrix", matrix)

    def _project(self, e):
        return e @ self.matrix.to(e.dtype)

    def dense(self):
        return self.matrix.detach().clone()

    def grad_from(self, e, h):
        return e.t() @ h  # (M, N) = eᵀh


class SparseFeedback(_Feedback):
    """Sparse B kept as (index, value) per neuron, both (N, S): O(N·S) memory and MACs."""

    def __init__(self, index: torch.Tensor, value: torch.Tensor, num_errors: int, learnable: bool = False):
        super().__init__()
        if index.shape != value.shape or index.dim() != 2:
            raise ValueError("index and value must both have shape (neurons, connections)")
        self.num_errors = int(num_errors)
        self.num_neurons, self.connections = index.shape
        self.register_buffer("index", index.long())
        if learnable:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)

    def _project(self, e):
        # S = 1 (SSDFA): one error times one weight per neuron (Eq. 11); else a weighted bag of
        # rows of eᵀ, one fused kernel with no (batch, N, S) intermediate
        return _sparse_project(e, self.index, self.value.to(e.dtype))

    def dense(self):
        b = torch.zeros(self.num_errors, self.num_neurons, dtype=self.value.dtype, device=self.value.device)
        cols = torch.arange(self.num_neurons, device=self.index.device)
        cols = cols[:, None].expand_as(self.index)
        b.index_put_((self.index, cols), self.value.detach(), accumulate=True)
        return b

    def grad_from(self, e, h):
        # d/dvalue[n, s] of sum_b h[b, n] * e[b, index[n, s]] * value[n, s]; one connection at a
        # time, so memory stays O(batch·N)
        return torch.stack(
            [(e.index_select(1, self.index[:, k]) * h).sum(0) for k in range(self.connections)], dim=1
        )

    def extra_repr(self):
        return f"{super().extra_repr()}, connections={self.connections}"


def make_feedback(
    num_errors: int,
    num_neurons: int,
    spec: FeedbackSpec = FeedbackSpec(),
    *,
    generator: torch.Generator | None = None,
    std: float | None = None,
) -> _Feedback:
    """Draw a feedback matrix (M errors × N neurons) as ``spec`` asks.

    Dense full rank: i.i.d. U(-1/sqrt(N), 1/sqrt(N)).  Otherwise (S < M or R < M), as the SSDFA
    reference builds it: R index sets of S errors covering all errors evenly; each neuron is
    given one set (group); its row is a random scalar times its group's random sparse vector,
    so a group's rows share their zeros and B has rank R.  The result is rescaled so that its
    std over all M·N entries is the dense one: sparser rows get larger non-zeros and every
    neuron's signal keeps the dense magnitude.  Unlike the reference, every error reaches at
    least one neuron of the layer whenever N >= M.
    """
    m = _check_int("num_errors", num_errors, 1, 1 << 40, "need at least one error")
    n = _check_int("num_neurons", num_neurons, 1, 1 << 40, "need at least one neuron")
    gen = (
        generator
        if generator is not None
        else torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    )
    s = (
        m
        if spec.connections is None
        else _check_int(
            "connections", spec.connections, 1, m, f"a neuron can listen to between 1 and all {m} errors"
        )
    )
    full = min(m, n)
    r = (
        full
        if spec.rank is None
        else _check_int("rank", spec.rank, 1, full, f"B is {m}×{n}, so its rank is at most {full}")
    )
    if s * r < m:
        raise FeedbackConfigError(
            f"connections × rank = {s} × {r} = {s * r} < {m} errors: some errors would never be "
            f"fed back to this layer, so they could not train it. Raise the rank to at least "
            f"{math.ceil(m / s)} or the connections per neuron to at least {math.ceil(m / r)}."
        )
    target = default_std(n) if std is None else float(std)

    if s == m and r == m:
        bound = math.sqrt(3.0) * target
        mat = (torch.rand(m, n, generator=gen) * 2 - 1) * bound
        return DenseFeedback(mat, learnable=spec.learnable)

    sets = _even_index_sets(m, s, r, gen)  # (R, S)
    group_values = torch.rand(r, s, generator=gen) * 2 - 1  # (R, S)
    groups = _balanced_groups(n, r, gen)  # (N,)
    scalars = torch.rand(n, generator=gen) * 2 - 1  # (N,)
    index = sets[groups]  # (N, S)
    value = scalars[:, None] * group_values[groups]  # (N, S)
    # std over all M·N entries (zeros included) -> target
    current = torch.sqrt((value.double() ** 2).sum() / (m * n) - (value.double().sum() / (m * n)) ** 2)
    value = (value * (target / current.clamp_min(1e-30))).float()
    if s == m:
        fb = SparseFeedback(index, value, m)
        return DenseFeedback(fb.dense(), learnable=spec.learnable)
    return SparseFeedback(index, value, m, learnable=spec.learnable)


class FeedbackGroup(list):
    """Several points' feedback modules, projected together: e·[B_1 … B_L] in one product for
    dense B (one index_select or embedding_bag over the stacked (index, value) for sparse B of one
    connection count), split per point.  The same numbers as each module's ``project``, in one
    kernel instead of L; the stacked copy is kept until a B changes (its version counter)."""

    def __init__(self, modules):
        super().__init__(modules)
        self._key, self._stacked = None, None
        kinds = {type(fb) for fb in self}
        self._kind = kinds.pop() if len(kinds) == 1 and len(self) > 1 else None
        if self._kind is SparseFeedback and len({fb.connections for fb in self}) != 1:
            self._kind = None
        self._sizes = [fb.num_neurons for fb in self]

    def project(self, e: torch.Tensor) -> list[torch.Tensor]:
        """(rows, M) errors -> one (rows, N_l) signal per module."""
        if self._kind is None:
            return [fb.project(e) for fb in self]
        check_errors(e, self[0].num_errors)
        if self._kind is DenseFeedback:
            out = e @ self._stack(lambda: torch.cat([fb.matrix for fb in self], 1)).to(e.dtype)
        else:
            index, value = self._stack(
                lambda: (torch.cat([fb.index for fb in self], 0), torch.cat([fb.value for fb in self], 0))
            )
            out = _sparse_project(e, index, value.to(e.dtype))
        return list(out.split(self._sizes, 1))

    def _stack(self, make):
        tensors = [t for fb in self for t in (fb._buffers | fb._parameters).values()]
        if torch.compiler.is_compiling():  # traced once into the graph: no Python-side cache
            return make()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if key != self._key:
            with torch.no_grad():
                self._stacked, self._key = make(), key
        return self._stacked


def _sparse_project(e, index, value):
    """signal[b, n] = Σ_s value[n, s]·e[b, index[n, s]] (SSDFA Eq. 11 when S = 1)."""
    if index.shape[1] == 1:
        return e.index_select(1, index[:, 0]) * value[:, 0]
    bags = F.embedding_bag(index, e.t().contiguous(), per_sample_weights=value, mode="sum")
    return bags.t().contiguous()


def project_all(feedback, e: torch.Tensor) -> list[torch.Tensor]:
    """Each module's e·B_l: together when ``feedback`` is a :class:`FeedbackGroup`."""
    if isinstance(feedback, FeedbackGroup):
        return feedback.project(e)
    return [fb.project(e) for fb in feedback]
