"""CIFAR-10 and CIFAR-100: the python pickle batches, read by the numpy-only unpickler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetCorrupt
from .normalization import channel_stats
from .registry import dataset_entry, locate, register
from .safe_pickle import read_pickle
from .splits import Dataset, TensorSplit


def _bad_labels(path: Path, key: str, what: str) -> DatasetCorrupt:
    return DatasetCorrupt(
        f"{path}: '{key}' {what}; expected a list of integer class "
        "labels — the file is corrupt, delete it and fetch it again"
    )


def _int_labels(raw, path: Path, key: str) -> np.ndarray:
    """CIFAR labels as int64, refusing what is not a flat sequence of integers: strings, a
    dict, floats (never truncated), bools, NaN, numbers past int64, nested or 2-D lists."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1:
            raise _bad_labels(path, key, f"is a {raw.ndim}-D array {raw.shape}")
        if raw.dtype.kind not in "iu":
            raise _bad_labels(path, key, f"holds {raw.dtype} values")
        return raw.astype(np.int64)
    if not isinstance(raw, (list, tuple)):
        raise _bad_labels(path, key, f"is a {type(raw).__name__}")
    for v in raw:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise _bad_labels(path, key, f"holds {type(v).__name__} {str(v)[:20]!r}")
        if not -(2**63) <= int(v) < 2**63:
            raise _bad_labels(path, key, f"holds {int(v)}, past int64")
    return np.array([int(v) for v in raw], dtype=np.int64)


def _cifar_arrays(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise DatasetCorrupt(f"{path}: missing 'data' or '{label_key}' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = _int_labels(batch[label_key], path, label_key)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetCorrupt(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if len(labels) != len(data):
        raise DatasetCorrupt(f"{path}: {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetCorrupt(f"{path}: labels outside 0..{classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


# name: (label key, train batches, test batch)
_LAYOUT = {
    "cifar10": ("labels", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    "cifar100": ("fine_labels", ("train",), "test"),
}


def _load_cifar(name: str, data_dir, download) -> Dataset:
    folder = locate(name, data_dir, download)
    entry = dataset_entry(name)
    key, train_files, test_file = _LAYOUT[name]
    parts = [_cifar_arrays(folder / f, key, entry.num_classes) for f in train_files]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _cifar_arrays(folder / test_file, key, entry.num_classes)
    xtr_t, xte_t = torch.from_numpy(xtr), torch.from_numpy(xte)
    mean, std = channel_stats(xtr_t)
    return Dataset(
        name,
        TensorSplit(xtr_t, torch.from_numpy(ytr), mean, std),
        TensorSplit(xte_t, torch.from_numpy(yte), mean, std),
        entry.input_shape,
        entry.num_classes,
        source=str(folder),
    )


@register(
    "cifar10",
    aliases=("cifar-10",),
    subdirs=("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
    files=_LAYOUT["cifar10"][1] + (_LAYOUT["cifar10"][2],),
    input_shape=(3, 32, 32),
    num_classes=10,
    default_model="cifar-fc",
    how="Get cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
    "extract it (it holds cifar-10-batches-py/).",
    summary="CIFAR-10, 32x32 colour, 50k/10k (python pickle batches)",
)
def _load_cifar10(data_dir=None, download=False, **_):
    return _load_cifar("cifar10", data_dir, download)


@register(
    "cifar100",
    aliases=("cifar-100",),
    subdirs=("cifar-100-python", "cifar100/cifar-100-python", "cifar100"),
    files=_LAYOUT["cifar100"][1] + (_LAYOUT["cifar100"][2],),
    input_shape=(3, 32, 32),
    num_classes=100,
    default_model="cifar-fc",
    how="Get cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
    "extract it (it holds cifar-100-python/).",
    summary="CIFAR-100 (fine labels), 32x32 colour, 50k/10k (python pickle batches)",
)
def _load_cifar100(data_dir=None, download=False, **_):
    return _load_cifar("cifar100", data_dir, download)
