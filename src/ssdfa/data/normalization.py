"""Input standardisation: train-set statistics (the default) and the papers' own setups."""

from __future__ import annotations

import torch

from ..errors import DatasetError
from .splits import Dataset, Subset, TensorSplit

NORMALIZATIONS = ("mean-std", "none", "per-image", "per-pixel", "mean-std:M,S")


def check_normalization(mode) -> str:
    """``mode`` canonical: mean-std (per-channel train-set statistics, the default), none
    (pixels / 255), per-image, per-pixel, or mean-std:M,S with fixed M and S on [0, 1] pixels
    (one number each, or per channel as M1/M2/M3,S1/S2/S3)."""
    key = str(mode).strip().lower().replace("_", "-").replace(" ", "")
    if key in NORMALIZATIONS[:4]:
        return key
    if key.startswith("mean-std:"):
        try:
            _fixed_stats(key)
            return key
        except ValueError:
            pass
    raise ValueError(
        f"normalization {mode!r} unknown; choose one of: {', '.join(NORMALIZATIONS)} (e.g. mean-std:0.5,0.5)"
    )


def _fixed_stats(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = key.split(":", 1)[1].split(",")
    mean = torch.tensor([float(v) for v in m.split("/")])
    std = torch.tensor([float(v) for v in s.split("/")])
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(key)
    return mean.view(-1, 1, 1), std.view(-1, 1, 1)


def channel_stats(x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], in chunks; shape (C, 1, 1)."""
    c = x_uint8.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for i in range(0, len(x_uint8), 5000):
        chunk = x_uint8[i : i + 5000].double().div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        sq += chunk.pow(2).sum(dim=(0, 2, 3))
        count += chunk.numel() // c
    if count == 0:
        return torch.zeros(c, 1, 1), torch.ones(c, 1, 1)
    mean = total / count
    std = (sq / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.float().view(c, 1, 1), std.float().clamp_min(1e-3).view(c, 1, 1)


def _pixel_stats(x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of every pixel position over a split (on [0, 1]); shape (C, H, W)."""
    total = torch.zeros(x_uint8.shape[1:], dtype=torch.float64)
    sq = torch.zeros_like(total)
    for i in range(0, len(x_uint8), 5000):
        chunk = x_uint8[i : i + 5000].double().div_(255.0)
        total += chunk.sum(0)
        sq += chunk.pow(2).sum(0)
    n = max(len(x_uint8), 1)
    mean = total / n
    std = (sq / n - mean**2).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)  # a constant pixel (MNIST's corners) stays 0


def set_normalization(ds: Dataset, mode: str = "mean-std") -> Dataset:
    """Standardise ``ds``'s image inputs as ``mode`` says (:func:`check_normalization`), in place.

    ``per-pixel`` takes each split's own statistics (the SSDFA code standardises the test set by
    its own), over the whole split as loaded (before ``limit_train``).  Only uint8 image splits
    (MNIST, Fashion-MNIST, CIFAR) can change; "mean-std" leaves every dataset as it loads."""
    mode = check_normalization(mode)
    if mode == "mean-std":
        return ds
    for which in ("train", "test"):
        split = getattr(ds, which)
        split = split.split if isinstance(split, Subset) else split
        if not (isinstance(split, TensorSplit) and split.x.dtype == torch.uint8 and split.x.dim() == 4):
            raise DatasetError(
                f"normalization {mode} applies to image datasets stored as pixels "
                f"(mnist, fashion-mnist, cifar10, cifar100), not {ds.name}; leave "
                "it at mean-std"
            )
        split.per_image = mode == "per-image"
        if mode in ("none", "per-image"):
            split.mean, split.std = None, None
        elif mode == "per-pixel":
            split.mean, split.std = _pixel_stats(split.x)
        else:
            split.mean, split.std = _fixed_stats(mode)
    return ds
