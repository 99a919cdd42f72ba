"""MNIST and Fashion-MNIST: the four IDX files (plain or .gz), header checked against the size."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetCorrupt
from .normalization import channel_stats
from .registry import dataset_entry, locate, register
from .splits import Dataset, TensorSplit

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read_maybe_gz(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()  # gzip checks its CRC-32 and length at the end of the stream
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetCorrupt(
            f"{path}: cannot be decompressed ({exc}); the file is truncated or "
            "corrupt — delete it and fetch it again"
        ) from exc


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (ubyte data), checking the header against the file's size."""
    raw = _read_maybe_gz(path)
    if len(raw) < 4:
        raise DatasetCorrupt(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DatasetCorrupt(
            f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, "
            "expected 000008 followed by the number of dimensions)"
        )
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DatasetCorrupt(f"{path}: truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if 0 in dims[1:]:  # no examples (dims[0] == 0) is refused by load_dataset, by split
        raise DatasetCorrupt(
            f"{path}: header says {'x'.join(map(str, dims))}: a zero image "
            "dimension; the file is corrupt — delete it and fetch it again"
        )
    expected = math.prod(dims)  # Python ints: a header's product cannot overflow and wrap
    if len(raw) - head != expected:
        raise DatasetCorrupt(
            f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes "
            f"of data, the file holds {len(raw) - head}; it is truncated or "
            "corrupt — delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    return folder / stem if (folder / stem).is_file() else folder / (stem + ".gz")


def _check_pairs(folder: Path, xtr, ytr, xte, yte, classes: int) -> None:
    for xs, ys, which in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise DatasetCorrupt(
                f"{folder}: {which} images {xs.shape} and labels {ys.shape} "
                "do not match (expected (N, H, W) and (N,))"
            )
        if ys.size and ys.max() > classes - 1:
            raise DatasetCorrupt(f"{folder}: {which} labels hold {int(ys.max())}, expected 0..{classes - 1}")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetCorrupt(f"{folder}: train images are {xtr.shape[1:]}, test {xte.shape[1:]}")


def _load_idx_dataset(name: str, data_dir, download) -> Dataset:
    """The IDX set of ``name`` at the image size its files hold (28x28 for the real ones)."""
    folder = locate(name, data_dir, download)
    classes = dataset_entry(name).num_classes
    xtr, ytr, xte, yte = (read_idx(_idx_file(folder, s)) for s in IDX_FILES)
    _check_pairs(folder, xtr, ytr, xte, yte, classes)
    h, w = xtr.shape[1:]
    xtr_t = torch.from_numpy(xtr.copy()).view(-1, 1, h, w)
    xte_t = torch.from_numpy(xte.copy()).view(-1, 1, h, w)
    mean, std = channel_stats(xtr_t)
    return Dataset(
        name,
        TensorSplit(xtr_t, torch.from_numpy(ytr.astype(np.int64)), mean, std),
        TensorSplit(xte_t, torch.from_numpy(yte.astype(np.int64)), mean, std),
        (1, h, w),
        classes,
        source=str(folder),
    )


_IDX_HOW = (
    "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (Fashion-MNIST, installed by setup.sh)."
)


@register(
    "fashion-mnist",
    files=IDX_FILES,
    aliases=("fashion_mnist", "fashionmnist"),
    subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
    how=_IDX_HOW,
    input_shape=(1, 28, 28),
    num_classes=10,
    default_model="mnist-fc",
    summary="Zalando Fashion-MNIST, 28x28 grey, 60k/10k (IDX files)",
)
def _load_fashion(data_dir=None, download=False, **_):
    return _load_idx_dataset("fashion-mnist", data_dir, download)


@register(
    "mnist",
    files=IDX_FILES,
    subdirs=("mnist", "MNIST"),
    how="Get the four IDX files from the MNIST site (or a mirror).",
    input_shape=(1, 28, 28),
    num_classes=10,
    default_model="mnist-fc",
    summary="MNIST handwritten digits, 28x28 grey, 60k/10k (IDX files)",
)
def _load_mnist(data_dir=None, download=False, **_):
    return _load_idx_dataset("mnist", data_dir, download)
