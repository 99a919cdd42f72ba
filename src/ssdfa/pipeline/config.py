"""What a pipeline run is asked to do, and what both runs (K stages, one process) share: the
seeded order of the batches and the optimizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        groups.append(
            {
                "params": list(feedback),
                "lr": cfg.feedback_lr if cfg.feedback_lr is not None else cfg.lr,
                "weight_decay": cfg.feedback_weight_decay,
            }
        )
    return torch.optim.SGD(groups, lr=cfg.lr)


def batches(n_train: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The indices of each step's batch: seeded shuffles, epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    out, perm = [], torch.randperm(n_train, generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > n_train:
            perm, pos = torch.randperm(n_train, generator=g), 0
        out.append(perm[pos : pos + batch])
        pos += batch
    return out
