"""What a loaded dataset is: a :class:`Dataset` of two :class:`Split` s giving ``(x, y)`` batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class Split:
    """A train or test split: ``len(split)`` examples, ``split.batch(idx) -> (x, y)``."""

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class TensorSplit(Split):
    """In-memory split. ``x`` is float32, or uint8 images standardised per batch (saves 4x RAM)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean=None, std=None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        self.x, self.y = x, y
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.y)

    per_image = False  # set_normalization(ds, "per-image"): each image by its own statistics

    def batch(self, idx):
        x = self.x[idx]
        if self.per_image:
            return per_image(x), self.y[idx]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, self.y[idx]


def per_image(x: torch.Tensor) -> torch.Tensor:
    """TF's per_image_standardization on 0-255 pixels: (x - mean) / max(std, 1/sqrt(C·H·W)),
    mean and (biased) std over each image's own values; x: (B, C, H, W) uint8."""
    x = x.float()
    flat = x.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, correction=0).clamp_min(1.0 / math.sqrt(flat.shape[1]))
    return (x - mean.view(-1, *[1] * (x.dim() - 1))) / std.view(-1, *[1] * (x.dim() - 1))


class Subset(Split):
    """The first ``n`` examples of ``split`` (``load_dataset(..., limit_train=n)``)."""

    def __init__(self, split: Split, n: int):
        self.split, self.n = split, n

    def __len__(self):
        return self.n

    def batch(self, idx):
        return self.split.batch(idx)


@dataclass
class Dataset:
    """A loaded dataset; ``input_shape`` excludes the batch dimension."""

    name: str
    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int  # output width (number of regression targets for a regression task)
    task: str = "classification"  # or "regression"
    source: str = ""  # where it was read from

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.train)} train / {len(self.test)} test, input "
            f"{'x'.join(map(str, self.input_shape))}, {self.num_classes} "
            f"{'classes' if self.task == 'classification' else 'targets'}"
            + (f" ({self.source})" if self.source else "")
        )
