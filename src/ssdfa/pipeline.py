"""Model parallel training over K processes: the backward pipeline (bp) against direct feedback.

An ``nn.Sequential`` is cut into *blocks*, one per weight layer (a block ends just before the
next Linear/Conv2d: ``[Flatten, Linear, Tanh] [Linear, Tanh] [Linear]``); block boundaries are
where ``ssdfa.convert`` places its feedback points.  K contiguous groups of blocks are the
*stages*, one process each (``torch.distributed``, gloo, on 127.0.0.1).

The :class:`Stage` knows its layers and what it sends and receives; the schedule
(:func:`_step`) is GPipe's: the micro-batches go forward one after the other, then

* ``bp``: the last stage computes the loss, the gradient w.r.t. each stage's input travels back
  stage by stage (send/recv), each stage runs its own backward;
* ``dfa`` (``sdfa``, ``ssdfa``, ``dkp``): once every forward of the step has run, the last stage
  computes e = dL/dlogits of each micro-batch and broadcasts them to every stage as one message; each stage puts e·B_l on each of its block outputs (B_l drawn
  exactly as ``ssdfa.convert(net, "dfa", seed=s)`` draws it) and runs its backward at once;
  nothing travels back stage to stage.  ``dkp`` learns its B_l: each stage also accumulates
  ∂B_l = eᵀh_l (h_l its own block output, the library's ``rules/dkp.py``) from the same e, so
  learning B costs no message;
* ``drtp`` (unlocked): the last stage broadcasts the labels once per step; each stage puts
  y*·B_l / batch on its block outputs and runs its backward as soon as its own forward of a
  micro-batch has run (SGD steps once per step, after the last micro-batch).

Stage 0 reads the inputs and the last stage reads the labels of each batch (both walk the same
seeded order).  The loss of a micro-batch is its summed cross entropy over the *whole* batch
size, so the gradients accumulated over the micro-batches of a step are one process's full-batch
mean-loss gradients, and a step of SGD is the same step.

Every tensor a stage sends or broadcasts is counted (numel × element size; a broadcast counts
once per receiving stage); :func:`expected_bytes` is the formula the counts are checked against.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from .errors import PipelineError  # noqa: F401  (re-exported)
from .distributed import leave

PIPELINE_METHODS = ("bp", "dfa", "sdfa", "ssdfa", "dkp", "drtp")
BROADCAST_E = ("dfa", "sdfa", "ssdfa", "dkp")  # the last stage broadcasts e; each stage e·B_l
LEARNED_FEEDBACK = ("dkp",)  # B_l learn from e and the stage's own h_l (no extra message)
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


# -- stages ----------------------------------------------------------------------------------
def split_blocks(net: nn.Sequential) -> list[list[int]]:
    """Indices of ``net``'s modules, one list per weight layer (a block ends before the next)."""
    if not isinstance(net, nn.Sequential):
        raise PipelineError(f"pipeline splits an nn.Sequential, got {type(net).__name__}")
    starts = [i for i, m in enumerate(net) if isinstance(m, WEIGHT_LAYERS)]
    if not starts:
        raise PipelineError("the model has no Linear or Conv2d layer to split at")
    cuts = [0] + starts[1:] + [len(net)]
    return [list(range(a, b)) for a, b in zip(cuts, cuts[1:])]


def stage_blocks(net: nn.Sequential, stages: int) -> list[list[list[int]]]:
    """The blocks of each of ``stages`` stages: contiguous, as even as possible, earlier larger."""
    blocks = split_blocks(net)
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise PipelineError(f"--stages must be a positive number of stages, got {stages!r}")
    if stages > len(blocks):
        raise PipelineError(f"--stages {stages} is more than the model's {len(blocks)} weight "
                            f"layers; give --stages 1..{len(blocks)} or a deeper --model")
    q, r = divmod(len(blocks), stages)
    out, i = [], 0
    for s in range(stages):
        n = q + (1 if s < r else 0)
        out.append(blocks[i:i + n])
        i += n
    return out


def boundary_shapes(net: nn.Sequential, input_shape, stages: int) -> list[tuple[int, ...]]:
    """Per-example shape at each of the K-1 stage boundaries (what one stage sends on)."""
    groups = stage_blocks(net, stages)
    shapes, x = [], torch.zeros(2, *input_shape)
    was = net.training
    net.eval()
    with torch.no_grad():
        for g in groups[:-1]:
            for block in g:
                for i in block:
                    x = net[i](x)
            shapes.append(tuple(x.shape[1:]))
    net.train(was)
    return shapes


def boundary_widths(net: nn.Sequential, input_shape, stages: int) -> list[int]:
    """Features per example at each of the K-1 stage boundaries."""
    return [math.prod(s) for s in boundary_shapes(net, input_shape, stages)]


def expected_bytes(method: str, widths: list[int], batch: int, classes: int) -> int:
    """Bytes sent per step by ``method`` with stage-boundary ``widths`` (float32, int64 labels).

    Forward activations: sum over boundaries of batch × width × 4.  bp sends the same back;
    dfa broadcasts e to the K-1 other stages: (K-1) × batch × classes × 4 (dkp the same: its B_l
    learn from that e and the stage's own activations); drtp broadcasts the labels to the K-1
    other stages: (K-1) × batch × 8.
    """
    act = sum(batch * w * 4 for w in widths)
    k1 = len(widths)
    if method == "bp":
        return 2 * act
    if method in BROADCAST_E:
        return act + k1 * batch * classes * 4
    if method == "drtp":
        return act + k1 * batch * 8
    raise PipelineError(f"unknown pipeline method {method!r}; choose from {', '.join(PIPELINE_METHODS)}")


@dataclass
class Stage:
    """One stage: its modules (blocks of the full net), its rank, and the B_l of its outputs."""

    rank: int
    stages: int
    blocks: list[nn.Sequential]
    feedback: list[torch.Tensor | None]  # one per block: B (classes × width) at its output, or None

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.stages - 1

    def parameters(self):
        return [p for b in self.blocks for p in b.parameters()]

    def learned_feedback(self) -> list[torch.Tensor]:
        """The B_l this stage learns (dkp): leaves whose ``.grad`` :func:`_feedback_grads` fills."""
        return [b for b in self.feedback if b is not None and b.requires_grad]


def build_stage(net: nn.Sequential, rank: int, stages: int, feedback: list[torch.Tensor]) -> Stage:
    """Stage ``rank`` of ``net``; ``feedback[j]`` is the B at the output of global block j."""
    groups = stage_blocks(net, stages)
    first_block = sum(len(g) for g in groups[:rank])
    blocks = [nn.Sequential(*[net[i] for i in b]) for b in groups[rank]]
    fbs = [feedback[first_block + j] if first_block + j < len(feedback) else None
           for j in range(len(blocks))]
    return Stage(rank, stages, blocks, fbs)


def model_feedback(net: nn.Sequential, input_shape, classes: int, method: str, seed: int):
    """B_l at every block output but the last, as ``ssdfa.convert(net, method, seed)`` draws them."""
    if method == "bp":
        return []
    import copy

    from . import convert, feedback_matrices

    wrapped = convert(copy.deepcopy(net), method, num_classes=classes, seed=seed,
                      input_shape=tuple(input_shape))
    return [b.detach().clone().requires_grad_(method in LEARNED_FEEDBACK)
            for b in feedback_matrices(wrapped).values()]


# -- communication, counted ----------------------------------------------------------------
class Comm:
    """send/recv/broadcast that count bytes sent and seconds spent waiting to receive."""

    def __init__(self, stages: int):
        self.stages = stages
        self.sent = 0
        self.wait = 0.0

    def send(self, t: torch.Tensor, dst: int):
        t = t.detach().contiguous()
        self.sent += t.numel() * t.element_size()
        dist.send(t, dst)

    def recv(self, shape, dtype, src: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype)
        t0 = time.perf_counter()
        dist.recv(t, src)
        self.wait += time.perf_counter() - t0
        return t

    def broadcast(self, t: torch.Tensor | None, shape, dtype, src: int) -> torch.Tensor:
        if dist.get_rank() == src:
            t = t.detach().contiguous()
            self.sent += t.numel() * t.element_size() * (self.stages - 1)
            dist.broadcast(t, src)
            return t
        t = torch.empty(shape, dtype=dtype)
        t0 = time.perf_counter()
        dist.broadcast(t, src)
        self.wait += time.perf_counter() - t0
        return t


# -- the schedule --------------------------------------------------------------------------
def _forward_blocks(stage: Stage, x, cut: bool):
    """Run the stage's blocks; with ``cut`` each block's input is detached (direct feedback)."""
    outs = []
    for block in stage.blocks:
        if cut:
            x = x.detach()
        x = block(x)
        outs.append(x)
    return outs


def _step(stage: Stage, comm: Comm, method: str, x, y, batch: int, micro: int, classes: int,
          in_shape, opt):
    """One training step of ``stage``: GPipe micro-batches, then the method's backward."""
    k, r = stage.stages, stage.rank
    sizes = [len(c) for c in torch.arange(batch).chunk(micro)]
    opt.zero_grad(set_to_none=True)
    if method == "drtp":  # the targets reach every stage once per step, before any forward
        y = comm.broadcast(y if stage.last else None, (batch,), torch.long, k - 1)
    xs = x.chunk(micro) if stage.first else [None] * len(sizes)
    ys = y.chunk(micro) if y is not None else [None] * len(sizes)
    kept = []
    for m, n in enumerate(sizes):
        h = xs[m] if stage.first else comm.recv((n, *in_shape), torch.float32, r - 1)
        if not stage.first and method == "bp":
            h.requires_grad_(True)
        outs = _forward_blocks(stage, h, cut=method != "bp")
        if not stage.last:
            comm.send(outs[-1], r + 1)
        if method == "drtp":  # unlocked: update from the targets as soon as the forward is done
            _direct_backward(stage, outs, ys[m], batch, classes, target=True)
        else:
            kept.append((h, outs))
    if method == "bp":
        for m in reversed(range(len(sizes))):
            h, outs = kept[m]
            if stage.last:
                loss = nn.functional.cross_entropy(outs[-1], ys[m], reduction="sum") / batch
                loss.backward()
            else:
                g = comm.recv(outs[-1].shape, torch.float32, r + 1)
                outs[-1].backward(g)
            if not stage.first:
                comm.send(h.grad, r - 1)
    elif method in BROADCAST_E:
        # every forward has finished before the first e exists, so the last stage sends the m
        # micro-batches' e as one message: one latency-bound broadcast per step, not m
        e = None
        if stage.last:
            es = []
            for (_, outs), target in zip(kept, ys):
                logits = outs[-1].detach().requires_grad_(True)
                loss = nn.functional.cross_entropy(logits, target, reduction="sum") / batch
                es.append(torch.autograd.grad(loss, logits)[0])
            e = torch.cat(es)
        e_all = comm.broadcast(e, (batch, classes), torch.float32, k - 1)
        for (_, outs), e in zip(kept, e_all.split(sizes)):
            _direct_backward(stage, outs, e, batch, classes, target=False)
            if method in LEARNED_FEEDBACK:
                _feedback_grads(stage, outs, e)
    opt.step()


def _direct_backward(stage: Stage, outs, signal, batch: int, classes: int, target: bool):
    """Put signal·B_l on each block output (the last block of the net gets the loss gradient)."""
    tensors, grads = [], []
    for out, b in zip(outs, stage.feedback):
        if b is None:  # the output layer: its gradient is e itself (dfa) or the loss's (drtp)
            if target:
                loss = nn.functional.cross_entropy(out, signal, reduction="sum") / batch
                tensors.append(loss)
                grads.append(torch.ones(()))
            else:
                tensors.append(out)
                grads.append(signal)
            continue
        if target:
            s = b[signal] / batch
        else:
            s = signal @ b.detach()
        tensors.append(out)
        grads.append(s.view_as(out))
    torch.autograd.backward(tensors, grads)


def _feedback_grads(stage: Stage, outs, e):
    """dkp: ∂B_l += eᵀh_l for each learned B_l of the stage (h_l: its block output, flattened).

    The same gradient ``rules/dkp.py`` gives B_l in one process (``fb.grad_from(e, h)``); the
    optimizer's step then makes ΔB_l = -η_B·(eᵀh_l + wd·B_l).  e is the micro-batch's share of
    the full-batch mean-loss gradient, so the micro-batches add up to one process's eᵀh_l.
    """
    for out, b in zip(outs, stage.feedback):
        if b is None or not b.requires_grad:
            continue
        g = e.t() @ out.detach().reshape(out.shape[0], -1)
        b.grad = g if b.grad is None else b.grad + g


# -- processes -----------------------------------------------------------------------------
@dataclass
class PipelineConfig:
    dataset: str = "digits"
    model: str | None = None
    stages: int = 2
    method: str = "dfa"
    steps: int = 10
    micro_batches: int = 2
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0
    threads: int = 1
    feedback_lr: float | None = None  # dkp: η_B; None: lr (the library's default)
    feedback_weight_decay: float = 0.0  # dkp: SGD weight decay of B_l (the library's default 0)


def make_optimizer(cfg: PipelineConfig, params, feedback) -> torch.optim.SGD:
    """SGD on the weights at ``lr``; learned B_l (dkp) in their own group, as ``ssdfa train`` does."""
    groups = [{"params": list(params)}]
    if feedback:
        groups.append({"params": list(feedback),
                       "lr": cfg.feedback_lr if cfg.feedback_lr is not None else cfg.lr,
                       "weight_decay": cfg.feedback_weight_decay})
    return torch.optim.SGD(groups, lr=cfg.lr)


def _batches(n_train: int, batch: int, steps: int, seed: int):
    """The indices of each step's batch: seeded shuffles, epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    out, perm = [], torch.randperm(n_train, generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > n_train:
            perm, pos = torch.randperm(n_train, generator=g), 0
        out.append(perm[pos:pos + batch])
        pos += batch
    return out


def build_net(cfg: PipelineConfig, data):
    from .models import create_model, default_model

    torch.manual_seed(cfg.seed)
    name = cfg.model or default_model(data.name, data.input_shape)
    net = create_model(name, data.input_shape, data.num_classes)
    return name, net


def _record_failure(outdir: str, rank: int, exc: BaseException):
    """Leave the stage's own error for :func:`run_pipeline` (the first one written is the cause)."""
    with open(os.path.join(outdir, f"rank{rank}.error.json"), "w") as f:
        json.dump({"rank": rank, "time": time.time(), "type": type(exc).__name__,
                   "message": str(exc)}, f)


def _worker(rank: int, cfg: PipelineConfig, port: int, outdir: str):
    try:
        torch.set_num_threads(cfg.threads)
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=cfg.stages)
    except Exception as exc:
        _record_failure(outdir, rank, exc)
        raise
    ok = False
    try:
        _train_stage(rank, cfg, outdir)
        ok = True
    except Exception as exc:
        _record_failure(outdir, rank, exc)
        raise
    finally:
        leave(ok)


def _train_stage(rank: int, cfg: PipelineConfig, outdir: str):
    """Stage ``rank``'s whole training; its counts, time and trained weights go to ``outdir``."""
    from .data import load_dataset

    data = load_dataset(cfg.dataset)
    _, net = build_net(cfg, data)
    fb = model_feedback(net, data.input_shape, data.num_classes, cfg.method, cfg.seed)
    stage = build_stage(net, rank, cfg.stages, fb)
    shapes = boundary_shapes(net, data.input_shape, cfg.stages)
    in_shape = tuple(data.input_shape) if rank == 0 else shapes[rank - 1]
    opt = make_optimizer(cfg, stage.parameters(), stage.learned_feedback())
    comm = Comm(cfg.stages)
    batches = _batches(len(data.train), cfg.batch_size, cfg.steps, cfg.seed)
    dist.barrier()
    t0 = time.perf_counter()
    for idx in batches:
        x, y = data.train.batch(idx)
        _step(stage, comm, cfg.method, x if stage.first else None,
              y if stage.last else None, len(idx), cfg.micro_batches, data.num_classes,
              in_shape, opt)
    dist.barrier()
    seconds = time.perf_counter() - t0
    groups = stage_blocks(net, cfg.stages)
    first_block = sum(len(g) for g in groups[:rank])
    torch.save({"rank": rank, "sent": comm.sent, "wait": comm.wait, "seconds": seconds,
                "state": {i: net[i].state_dict() for b in groups[rank] for i in b},
                "feedback": {first_block + j: b.detach().clone()
                             for j, b in enumerate(stage.feedback) if b is not None}},
               os.path.join(outdir, f"rank{rank}.pt"))


def worker_failure(cfg: PipelineConfig, outdir: str, exc) -> PipelineError:
    """One line for a failed run: the stage whose error came first, its own message, what to do.

    When one stage fails the others may fail after it (a closed connection in recv); the
    error each stage recorded carries a time, and the earliest is the cause.
    """
    found = []
    for r in range(cfg.stages):
        path = os.path.join(outdir, f"rank{r}.error.json")
        if os.path.exists(path):
            with open(path) as f:
                found.append(json.load(f))
    if found:
        first = min(found, key=lambda d: d["time"])
        rank, what = first["rank"], f"{first['type']}: {first['message']}"
    else:  # killed or exited without a Python exception (a signal, out of memory)
        rank, what = exc.error_index, str(exc).strip()
    what = "; ".join(ln.strip() for ln in what.splitlines() if ln.strip())
    return PipelineError(
        f"pipeline stage {rank} of {cfg.stages} ({cfg.method}, model {cfg.model or 'default'}) "
        f"failed: {what}; the other stages were stopped and nothing was kept. Fix the input "
        f"it names (--model, --stages, --batch-size, --micro-batches) and run again")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pipeline(cfg: PipelineConfig):
    """Train ``cfg.method`` over ``cfg.stages`` processes: (report, trained net, trained B_l).

    The B_l are one per block output but the last, in order (``[]`` for bp): drawn once and
    kept for dfa/sdfa/ssdfa/drtp, learned by dkp.
    """
    from .data import load_dataset

    if cfg.method not in PIPELINE_METHODS:
        raise PipelineError(f"unknown pipeline method {cfg.method!r}; choose from "
                            f"{', '.join(PIPELINE_METHODS)}")
    if cfg.micro_batches < 1 or cfg.micro_batches > cfg.batch_size:
        raise PipelineError(f"--micro-batches must be 1..--batch-size ({cfg.batch_size}), "
                            f"got {cfg.micro_batches}")
    data = load_dataset(cfg.dataset)
    if cfg.batch_size > len(data.train):
        raise PipelineError(f"--batch-size {cfg.batch_size} is more than the "
                            f"{len(data.train)} training examples")
    name, net = build_net(cfg, data)
    widths = boundary_widths(net, data.input_shape, cfg.stages)  # checks --stages
    with tempfile.TemporaryDirectory() as tmp:
        # when a stage fails, spawn stops the others and logs a warning per stage it stops;
        # the one-line error below says so, so that warning is held back
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        level = spawn_log.level
        spawn_log.setLevel(logging.ERROR)
        try:
            mp.spawn(_worker, args=(cfg, free_port(), tmp), nprocs=cfg.stages, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            raise worker_failure(cfg, tmp, exc) from exc
        finally:
            spawn_log.setLevel(level)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(cfg.stages)]
    # assemble the trained net
    for r in ranks:
        for i, state in r["state"].items():
            net[i].load_state_dict(state)
    feedback = dict(sorted((j, b) for r in ranks for j, b in r["feedback"].items()))
    broken = [name for name, t in [*net.state_dict().items(),
                                   *((f"B_{j}", b) for j, b in feedback.items())]
              if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:  # as ``ssdfa train``: a run whose loss became NaN or infinite is no result
        from .errors import Diverged

        raise Diverged(f"training diverged: {cfg.method} over {cfg.stages} stages ended with "
                       f"NaN or infinite values in {', '.join(broken[:3])} after {cfg.steps} "
                       f"steps. Try a lower --lr (now {cfg.lr}) or a smaller --batch-size.")
    sent = sum(r["sent"] for r in ranks)
    return {
        "method": cfg.method, "model": name, "dataset": data.name, "stages": cfg.stages,
        "micro_batches": cfg.micro_batches, "batch_size": cfg.batch_size, "steps": cfg.steps,
        "bytes_per_step": sent // cfg.steps,
        "expected_bytes_per_step": expected_bytes(cfg.method, widths, cfg.batch_size,
                                                  data.num_classes),
        "seconds_per_step": max(r["seconds"] for r in ranks) / cfg.steps,
        "recv_wait_seconds": [r["wait"] for r in ranks],
        "test_accuracy": evaluate(net, data),
    }, net, list(feedback.values())


def evaluate(net, data) -> float:
    net.eval()
    with torch.no_grad():
        x, y = data.test.batch(torch.arange(len(data.test)))
        acc = (net(x).argmax(1) == y).float().mean().item()
    net.train()
    return acc


def single_process(cfg: PipelineConfig):
    """The same training in one process: ``ssdfa.convert(net, method, seed)`` (bp: the net), SGD.

    Returns (trained net, its B_l as dense matrices, in order; ``[]`` for bp).  dkp's B_l are
    in their own SGD group (``feedback_lr``, ``feedback_weight_decay``), as in the pipeline.
    """
    from . import convert, feedback_matrices, feedback_parameters
    from .data import load_dataset

    data = load_dataset(cfg.dataset)
    _, net = build_net(cfg, data)
    model = net if cfg.method == "bp" else convert(net, cfg.method, num_classes=data.num_classes,
                                                   seed=cfg.seed, input_shape=data.input_shape)
    fb = list(feedback_parameters(model)) if cfg.method in LEARNED_FEEDBACK else []
    fb_ids = {id(p) for p in fb}
    opt = make_optimizer(cfg, [p for p in model.parameters() if id(p) not in fb_ids], fb)
    for idx in _batches(len(data.train), cfg.batch_size, cfg.steps, cfg.seed):
        x, y = data.train.batch(idx)
        opt.zero_grad(set_to_none=True)
        if cfg.method == "drtp":
            loss = nn.functional.cross_entropy(model(x, target=y), y)
        else:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    if cfg.method == "bp":
        return net, []
    return net, [b.detach().clone() for b in feedback_matrices(model).values()]


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between two nets' weights (and buffers)."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def max_feedback_difference(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> float:
    """Largest absolute difference between two lists of B_l (0.0 when both are empty)."""
    if len(fa) != len(fb):
        raise ValueError(f"{len(fa)} feedback matrices against {len(fb)}")
    return max((float((a.detach() - b.detach()).abs().max()) for a, b in zip(fa, fb)),
               default=0.0)
