"""Datasets by name: where they are looked for, how they are checked, how batches come out.

``load_dataset(name, data_dir=None, download=False)`` returns a :class:`Dataset` with a
``train`` and a ``test`` split; ``split.batch(indices)`` gives ``(x float32, y)`` ready for the
model.  Files are looked up in ``data_dir``, then ``$SSDFA_DATA``, then the user cache
(``$XDG_CACHE_HOME/ssdfa`` or ``~/.cache/ssdfa``), then system locations such as
``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist``).  A missing dataset raises
:class:`DatasetNotFound` naming the files expected, every place searched and how to get them; a
truncated or corrupt file raises :class:`DatasetCorrupt` naming the file (IDX header and size,
gzip CRC, pickle layout, MD5 of downloads) — nothing is half-loaded.

The package: ``registry`` (one :class:`DatasetEntry` per dataset: input shape, classes, default
model, files; the only table of them), ``splits`` (what a loaded dataset is), ``roots`` (where
files are looked for), ``normalization``, ``downloads``, ``safe_pickle`` (the numpy-only
unpickler), and one module per loader family: ``embedded`` (digits, the DRTP synthetic tasks),
``idx`` (MNIST, Fashion-MNIST), ``cifar`` (CIFAR-10/100), ``imagefolder``.
"""

from __future__ import annotations

import urllib.request  # noqa: F401  (ssdfa.data.urllib: tests replace urlopen through it)
from pathlib import Path  # noqa: F401  (kept importable from here)

from ..errors import DatasetCorrupt, DatasetError, DatasetNotFound
from . import cifar, embedded, idx, imagefolder  # noqa: F401  (each registers its datasets)
from .downloads import DOWNLOADS
from .idx import IDX_FILES, read_idx
from .imagefolder import ImageFolderSplit
from .normalization import NORMALIZATIONS, check_normalization, set_normalization
from .registry import (
    DatasetEntry,
    canonical_name,
    dataset_entry,
    dataset_info,
    dataset_shape,
    dataset_shapes,
    find_dataset,
    list_datasets,
    load_dataset,
    register,
)
from .roots import SYSTEM_ROOTS, cache_dir, search_roots
from .safe_pickle import read_pickle
from .safe_pickle import read_pickle as _read_pickle  # noqa: F401  (the old private name)
from .splits import Dataset, Split, TensorSplit

__all__ = [
    "Dataset",
    "Split",
    "TensorSplit",
    "ImageFolderSplit",
    "load_dataset",
    "list_datasets",
    "dataset_info",
    "find_dataset",
    "canonical_name",
    "dataset_entry",
    "dataset_shape",
    "dataset_shapes",
    "DatasetEntry",
    "register",
    "DatasetError",
    "DatasetNotFound",
    "DatasetCorrupt",
    "search_roots",
    "cache_dir",
    "SYSTEM_ROOTS",
    "NORMALIZATIONS",
    "check_normalization",
    "set_normalization",
    "DOWNLOADS",
    "IDX_FILES",
    "read_idx",
    "read_pickle",
]
