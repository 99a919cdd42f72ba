"""Datasets by name: where they are looked for, how they are checked, how batches come out.

``load_dataset(name, data_dir=None, download=False)`` returns a :class:`Dataset` with a
``train`` and a ``test`` split; ``split.batch(indices)`` gives ``(x float32, y)`` ready for the
model.  Files are looked up in ``data_dir``, then ``$SSDFA_DATA``, then the user cache
(``$XDG_CACHE_HOME/ssdfa`` or ``~/.cache/ssdfa``), then system locations such as
``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist``).  A missing dataset raises
:class:`DatasetNotFound` naming the files expected, every place searched and how to get them; a
truncated or corrupt file raises :class:`DatasetCorrupt` naming the file (IDX header and size,
gzip CRC, pickle layout, MD5 of downloads) — nothing is half-loaded.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from .errors import DatasetCorrupt, DatasetError, DatasetNotFound  # noqa: F401  (re-exported)

__all__ = [
    "Dataset", "Split", "TensorSplit", "load_dataset", "list_datasets", "dataset_info",
    "find_dataset", "canonical_name", "DatasetError", "DatasetNotFound", "DatasetCorrupt", "search_roots",
    "NORMALIZATIONS", "check_normalization", "set_normalization",
]

SYSTEM_ROOTS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))


# -- splits --------------------------------------------------------------------------------
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
            return _per_image(x), self.y[idx]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, self.y[idx]


def _per_image(x: torch.Tensor) -> torch.Tensor:
    """TF's per_image_standardization on 0-255 pixels: (x - mean) / max(std, 1/sqrt(C·H·W)),
    mean and (biased) std over each image's own values; x: (B, C, H, W) uint8."""
    x = x.float()
    flat = x.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, correction=0).clamp_min(1.0 / math.sqrt(flat.shape[1]))
    return (x - mean.view(-1, *[1] * (x.dim() - 1))) / std.view(-1, *[1] * (x.dim() - 1))


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
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test, input "
                f"{'x'.join(map(str, self.input_shape))}, {self.num_classes} "
                f"{'classes' if self.task == 'classification' else 'targets'}"
                + (f" ({self.source})" if self.source else ""))


# -- where to look -------------------------------------------------------------------------
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "ssdfa"


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched, in order: ``data_dir``, ``$SSDFA_DATA``, the user cache, system."""
    roots = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("SSDFA_DATA"):
        roots.append(Path(os.environ["SSDFA_DATA"]).expanduser())
    roots.append(cache_dir())
    roots.extend(SYSTEM_ROOTS)
    return roots


def _candidates(roots: list[Path], subdirs: tuple[str, ...], explicit: Path | None) -> list[Path]:
    out = []
    for root in roots:
        out.extend(root / s for s in subdirs)
        if explicit is not None and root == explicit:
            out.append(root)  # --data-dir may point straight at the files
    return out


# -- the registry --------------------------------------------------------------------------
@dataclass
class _Entry:
    summary: str
    loader: Callable[..., Dataset]
    files: tuple[str, ...] = ()  # what must be present (for messages and `ssdfa info`)
    subdirs: tuple[str, ...] = ()
    how: str = ""
    embedded: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, _Entry] = {}


def _register(name, **kw):
    def deco(fn):
        _REGISTRY[name] = _Entry(loader=fn, **kw)
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    """The registry name of a dataset, forgiving case, '_' for '-' and listed aliases."""
    key = str(name).strip().lower().replace("_", "-")
    for canon, entry in _REGISTRY.items():
        if key == canon or key in entry.aliases:
            return canon
    raise DatasetNotFound(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")


def load_dataset(name: str, data_dir=None, *, download: bool = False, image_size: int | None = None,
                 limit_train: int | None = None) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`); ``limit_train`` keeps the first n."""
    canon = canonical_name(name)
    entry = _REGISTRY[canon]
    ds = entry.loader(data_dir=data_dir, download=download, image_size=image_size)
    for which, split in (("train", ds.train), ("test", ds.test)):
        if len(split) == 0:  # a model trained or tested on nothing reports a number that is none
            raise DatasetCorrupt(f"dataset {canon} ({ds.source or 'as found'}): its {which} split "
                                 "holds no example; restore its files")
    if ds.task == "classification" and ds.num_classes < 2:
        raise DatasetCorrupt(f"dataset {canon} ({ds.source or 'as found'}) has "
                             f"{ds.num_classes} class; a classifier needs at least 2 (it would "
                             "reach 100 % by answering the one class)")
    if limit_train is not None:
        if limit_train < 1:
            raise DatasetError(f"limit_train must be >= 1, got {limit_train}")
        ds.train = _Subset(ds.train, min(limit_train, len(ds.train)))
    return ds


def find_dataset(name: str, data_dir=None) -> Path | None:
    """The folder holding dataset ``name``'s files, or None (embedded datasets: None)."""
    entry = _REGISTRY[canonical_name(name)]
    if entry.embedded:
        return None
    explicit = Path(data_dir).expanduser() if data_dir else None
    for cand in _candidates(search_roots(data_dir), entry.subdirs, explicit):
        if all(_exists_any(cand, f) for f in entry.files):
            return cand
    return None


def dataset_info(data_dir=None) -> list[tuple[str, str, str]]:
    """(name, summary, where found / 'embedded' / 'not found') for ``ssdfa info``."""
    rows = []
    for name in list_datasets():
        entry = _REGISTRY[name]
        if entry.embedded:
            where = "embedded"
        else:
            path = find_dataset(name, data_dir)
            where = str(path) if path else "not found"
        rows.append((name, entry.summary, where))
    return rows


class _Subset(Split):
    def __init__(self, split: Split, n: int):
        self.split, self.n = split, n

    def __len__(self):
        return self.n

    def batch(self, idx):
        return self.split.batch(idx)


# -- input standardisation (the papers' own setups) -----------------------------------------
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
    raise ValueError(f"normalization {mode!r} unknown; choose one of: {', '.join(NORMALIZATIONS)} "
                     "(e.g. mean-std:0.5,0.5)")


def _fixed_stats(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = key.split(":", 1)[1].split(",")
    mean = torch.tensor([float(v) for v in m.split("/")])
    std = torch.tensor([float(v) for v in s.split("/")])
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(key)
    return mean.view(-1, 1, 1), std.view(-1, 1, 1)


def _pixel_stats(x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of every pixel position over a split (on [0, 1]); shape (C, H, W)."""
    total = torch.zeros(x_uint8.shape[1:], dtype=torch.float64)
    sq = torch.zeros_like(total)
    for i in range(0, len(x_uint8), 5000):
        chunk = x_uint8[i:i + 5000].double().div_(255.0)
        total += chunk.sum(0)
        sq += chunk.pow(2).sum(0)
    n = max(len(x_uint8), 1)
    mean = total / n
    std = (sq / n - mean ** 2).clamp_min(0).sqrt()
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
        split = split.split if isinstance(split, _Subset) else split
        if not (isinstance(split, TensorSplit) and split.x.dtype == torch.uint8 and split.x.dim() == 4):
            raise DatasetError(f"normalization {mode} applies to image datasets stored as pixels "
                               f"(mnist, fashion-mnist, cifar10, cifar100), not {ds.name}; leave "
                               "it at mean-std")
        split.per_image = mode == "per-image"
        if mode in ("none", "per-image"):
            split.mean, split.std = None, None
        elif mode == "per-pixel":
            split.mean, split.std = _pixel_stats(split.x)
        else:
            split.mean, split.std = _fixed_stats(mode)
    return ds


def _exists_any(folder: Path, stem: str) -> bool:
    return (folder / stem).exists() or (folder / (stem + ".gz")).is_file()


def _not_found(name: str, entry: _Entry, data_dir) -> DatasetNotFound:
    explicit = Path(data_dir).expanduser() if data_dir else None
    places = _candidates(search_roots(data_dir), entry.subdirs, explicit)
    files = ", ".join(entry.files)
    return DatasetNotFound(
        f"dataset {name!r} not found: expected {files} (each may be .gz) in one of: "
        + ", ".join(str(p) for p in places)
        + f". {entry.how} Or pass --data-dir DIR, set SSDFA_DATA=DIR, or use --download if online."
    )


def _locate(name: str, data_dir, download: bool) -> Path:
    entry = _REGISTRY[name]
    found = find_dataset(name, data_dir)
    if found is not None:
        return found
    if download:
        return _download(name)
    raise _not_found(name, entry, data_dir)


# -- digits (embedded) ---------------------------------------------------------------------
@_register("digits", summary="scikit-learn 8x8 handwritten digits (1347 train / 450 test)",
           embedded=True)
def _load_digits(**_):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)  # (N, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = xtr.mean(), xtr.std()
    return Dataset("digits", TensorSplit(xtr, ytr, mean, std), TensorSplit(xte, yte, mean, std),
                   (1, 8, 8), 10, source="scikit-learn")


# -- DRTP synthetic tasks (Frenkel et al., Sec. 4.1-4.2) ------------------------------------
@_register("synthetic-classification", embedded=True, aliases=("drtp-classification",),
           summary="DRTP Sec. 4.2: make_classification, 256 features (128 informative), "
                   "10 classes x 5 clusters, class_sep 4.5; 25k train / 5k test, as 16x16")
def _load_synth_classification(**_):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=30000, n_features=256, n_informative=128,
                               n_redundant=0, n_repeated=0, n_classes=10,
                               n_clusters_per_class=5, class_sep=4.5, random_state=0)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 16, 16)
    y = torch.tensor(y, dtype=torch.long)
    return Dataset("synthetic-classification", TensorSplit(x[:25000], y[:25000]),
                   TensorSplit(x[25000:], y[25000:]), (1, 16, 16), 10, source="scikit-learn")


@_register("synthetic-regression", embedded=True, aliases=("drtp-regression",),
           summary="DRTP Sec. 4.1: 10 cosine targets cos(mean(x) + phi_j) of 256-d inputs; "
                   "5k train / 1k test")
def _load_synth_regression(**_):
    gen = np.random.default_rng(0)
    n = 6000
    centre = gen.uniform(-np.pi, np.pi, size=(n, 1))  # each example's mean ~ U(-pi, pi)
    x = centre + gen.standard_normal((n, 256))  # (n, 256), unit variance around it
    phi = -np.pi / 2 + np.arange(10) * np.pi / 9  # phi_j = -pi/2 + j*pi/9, j = 0..9
    y = np.cos(x.mean(axis=1, keepdims=True) + phi)  # (n, 10)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)
    return Dataset("synthetic-regression", TensorSplit(x[:5000], y[:5000]),
                   TensorSplit(x[5000:], y[5000:]), (256,), 10, task="regression",
                   source="generated")


# -- MNIST and Fashion-MNIST: IDX files ----------------------------------------------------
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

DOWNLOADS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/", {
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}),
}


def _read_maybe_gz(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()  # gzip checks its CRC-32 and length at the end of the stream
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetCorrupt(f"{path}: cannot be decompressed ({exc}); the file is truncated or "
                             "corrupt — delete it and fetch it again") from exc


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (ubyte data), checking the header against the file's size."""
    raw = _read_maybe_gz(path)
    if len(raw) < 4:
        raise DatasetCorrupt(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DatasetCorrupt(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, "
                             "expected 000008 followed by the number of dimensions)")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DatasetCorrupt(f"{path}: truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if 0 in dims[1:]:  # no examples (dims[0] == 0) is refused by load_dataset, by split
        raise DatasetCorrupt(f"{path}: header says {'x'.join(map(str, dims))}: a zero image "
                             "dimension; the file is corrupt — delete it and fetch it again")
    expected = math.prod(dims)  # Python ints: a header's product cannot overflow and wrap
    if len(raw) - head != expected:
        raise DatasetCorrupt(f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes "
                             f"of data, the file holds {len(raw) - head}; it is truncated or "
                             "corrupt — delete it and fetch it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    return folder / stem if (folder / stem).is_file() else folder / (stem + ".gz")


def _load_idx_dataset(name: str, data_dir, download) -> Dataset:
    folder = _locate(name, data_dir, download)
    arrays = [read_idx(_idx_file(folder, s)) for s in IDX_FILES]
    xtr, ytr, xte, yte = arrays
    for xs, ys, which in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise DatasetCorrupt(f"{folder}: {which} images {xs.shape} and labels {ys.shape} "
                                 "do not match (expected (N, H, W) and (N,))")
        if ys.size and ys.max() > 9:
            raise DatasetCorrupt(f"{folder}: {which} labels hold {int(ys.max())}, expected 0..9")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetCorrupt(f"{folder}: train images are {xtr.shape[1:]}, test {xte.shape[1:]}")
    h, w = xtr.shape[1:]
    xtr_t = torch.from_numpy(xtr.copy()).view(-1, 1, h, w)
    xte_t = torch.from_numpy(xte.copy()).view(-1, 1, h, w)
    mean, std = _channel_stats(xtr_t)
    return Dataset(name, TensorSplit(xtr_t, torch.from_numpy(ytr.astype(np.int64)), mean, std),
                   TensorSplit(xte_t, torch.from_numpy(yte.astype(np.int64)), mean, std),
                   (1, h, w), 10, source=str(folder))


def _channel_stats(x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], in chunks; shape (C, 1, 1)."""
    c = x_uint8.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for i in range(0, len(x_uint8), 5000):
        chunk = x_uint8[i:i + 5000].double().div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        sq += chunk.pow(2).sum(dim=(0, 2, 3))
        count += chunk.numel() // c
    if count == 0:
        return torch.zeros(c, 1, 1), torch.ones(c, 1, 1)
    mean = total / count
    std = (sq / count - mean ** 2).clamp_min(1e-12).sqrt()
    return mean.float().view(c, 1, 1), std.float().clamp_min(1e-3).view(c, 1, 1)


_IDX_HOW = ("On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (Fashion-MNIST, "
            "installed by setup.sh).")


@_register("fashion-mnist", files=IDX_FILES, aliases=("fashion_mnist", "fashionmnist"),
           subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST"), how=_IDX_HOW,
           summary="Zalando Fashion-MNIST, 28x28 grey, 60k/10k (IDX files)")
def _load_fashion(data_dir=None, download=False, **_):
    return _load_idx_dataset("fashion-mnist", data_dir, download)


@_register("mnist", files=IDX_FILES, subdirs=("mnist", "MNIST"),
           how="Get the four IDX files from the MNIST site (or a mirror).",
           summary="MNIST handwritten digits, 28x28 grey, 60k/10k (IDX files)")
def _load_mnist(data_dir=None, download=False, **_):
    return _load_idx_dataset("mnist", data_dir, download)


# -- CIFAR-10 / CIFAR-100: python pickle batches -------------------------------------------
def _pickle_globals() -> dict[tuple[str, str], object]:
    """The only (module, name) pairs a CIFAR batch may name, each mapped to its object.

    The objects are taken from numpy as already imported (from the callables its own arrays
    pickle with), never by importing the module a file names: importing runs that module's
    code, so ``numpy.f2py.__main__`` would run f2py.  numpy 1 files say ``numpy.core``, numpy 2
    files ``numpy._core``; both mean the same functions.
    """
    arr = np.zeros(1, dtype=np.uint8)
    reconstruct = arr.__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.int64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    frombuffer = arr.__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # bytes in protocol-2 pickles of Python 3
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays only: a dataset file cannot run code.

    ``find_class`` decides from the two strings alone against an explicit list of pairs and
    imports nothing (``pickle.Unpickler.find_class`` would import the module first).
    """

    _ALLOWED = _pickle_globals()

    def find_class(self, module, name):
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file "
                                         "(only numpy arrays are read)")
        return found


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DatasetCorrupt(f"{path}: not a readable CIFAR python batch ({exc}); it is "
                             "truncated or corrupt — delete it and fetch it again") from exc
    if not isinstance(obj, dict):
        raise DatasetCorrupt(f"{path}: expected a dict batch, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_arrays(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
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


def _int_labels(raw, path: Path, key: str) -> np.ndarray:
    """CIFAR labels as int64, refusing what is not a flat sequence of integers: strings, a
    dict, floats (never truncated), bools, NaN, numbers past int64, nested or 2-D lists."""
    def bad(what):
        return DatasetCorrupt(f"{path}: '{key}' {what}; expected a list of integer class "
                              "labels — the file is corrupt, delete it and fetch it again")

    if isinstance(raw, np.ndarray):
        if raw.ndim != 1:
            raise bad(f"is a {raw.ndim}-D array {raw.shape}")
        if raw.dtype.kind not in "iu":
            raise bad(f"holds {raw.dtype} values")
        return raw.astype(np.int64)
    if not isinstance(raw, (list, tuple)):
        raise bad(f"is a {type(raw).__name__}")
    for v in raw:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise bad(f"holds {type(v).__name__} {str(v)[:20]!r}")
        if not -2**63 <= int(v) < 2**63:
            raise bad(f"holds {int(v)}, past int64")
    return np.array([int(v) for v in raw], dtype=np.int64)


def _load_cifar(name: str, data_dir, download) -> Dataset:
    folder = _locate(name, data_dir, download)
    entry = _REGISTRY[name]
    if name == "cifar10":
        key, classes = "labels", 10
        train_files = [f for f in entry.files if f.startswith("data_batch")]
    else:
        key, classes = "fine_labels", 100
        train_files = ["train"]
    parts = [_cifar_arrays(folder / f, key, classes) for f in train_files]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _cifar_arrays(folder / ("test_batch" if name == "cifar10" else "test"), key, classes)
    xtr_t, xte_t = torch.from_numpy(xtr), torch.from_numpy(xte)
    mean, std = _channel_stats(xtr_t)
    return Dataset(name, TensorSplit(xtr_t, torch.from_numpy(ytr), mean, std),
                   TensorSplit(xte_t, torch.from_numpy(yte), mean, std), (3, 32, 32), classes,
                   source=str(folder))


@_register("cifar10", aliases=("cifar-10",), subdirs=("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
           files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
           how="Get cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
               "extract it (it holds cifar-10-batches-py/).",
           summary="CIFAR-10, 32x32 colour, 50k/10k (python pickle batches)")
def _load_cifar10(data_dir=None, download=False, **_):
    return _load_cifar("cifar10", data_dir, download)


@_register("cifar100", aliases=("cifar-100",), subdirs=("cifar-100-python", "cifar100/cifar-100-python", "cifar100"),
           files=("train", "test"),
           how="Get cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
               "extract it (it holds cifar-100-python/).",
           summary="CIFAR-100 (fine labels), 32x32 colour, 50k/10k (python pickle batches)")
def _load_cifar100(data_dir=None, download=False, **_):
    return _load_cifar("cifar100", data_dir, download)


# -- downloads (only with --download) ------------------------------------------------------
def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(name: str) -> Path:
    """Fetch ``name`` into the user cache, verify each file's MD5, and return its folder."""
    if name not in DOWNLOADS:
        raise DatasetNotFound(f"dataset {name!r} cannot be downloaded automatically")
    base, files = DOWNLOADS[name]
    target = cache_dir() / _REGISTRY[name].subdirs[0]
    target.mkdir(parents=True, exist_ok=True)
    for fname, md5 in files.items():
        dest = target / fname
        if dest.is_file() and _md5(dest) == md5:
            continue
        fd, tmp = tempfile.mkstemp(dir=target, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base + fname, timeout=60) as r:
                shutil.copyfileobj(r, out)
            got = _md5(Path(tmp))
            if got != md5:
                raise DatasetCorrupt(f"{base + fname}: MD5 {got}, expected {md5}; not kept")
            os.replace(tmp, dest)
        except OSError as exc:
            raise DatasetNotFound(f"could not download {base + fname}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if fname.endswith(".tar.gz"):
            with tarfile.open(dest) as tar:
                tar.extractall(cache_dir(), filter="data")
    if name.startswith("cifar"):
        return cache_dir() / _REGISTRY[name].subdirs[0]
    return target


# -- image folders (Tiny ImageNet, ImageNet) -------------------------------------------------
_MAX_PIXELS = 64 * 2**20  # 64 megapixels: beyond any ImageNet photo; PIL's own bomb limit is 89M
_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}
_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ImageFolderSplit(Split):
    """Images read from disk per batch, resized (shorter side) and centre-cropped to a square."""

    def __init__(self, items: list[tuple[Path, int]], size: int):
        self.items, self.size = items, size

    def __len__(self):
        return len(self.items)

    def _load(self, path: Path) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = self.size / min(w, h)
                im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))))
                w, h = im.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
                arr = np.asarray(im, dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetCorrupt(f"{path}: cannot be read as an image ({exc}); remove or "
                                 "replace it, then continue with --resume") from exc
        return torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W)

    def batch(self, idx):
        xs = torch.stack([self._load(self.items[int(i)][0]) for i in idx]).float().div_(255.0)
        ys = torch.tensor([self.items[int(i)][1] for i in idx], dtype=torch.long)
        return (xs - _IMAGENET_MEAN) / _IMAGENET_STD, ys


def _check_images(paths: list[Path]) -> None:
    """Open every image's header before training, so a file that is not an image (empty,
    garbage, cut inside its header, missing) is named now rather than mid-epoch.  Decoding
    every pixel would cost as much as an epoch; damage past the header is still reported, by
    name, when its batch is read."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
                if im.width * im.height > _MAX_PIXELS:
                    raise ValueError(f"it claims {im.width}x{im.height} pixels, more than "
                                     f"{_MAX_PIXELS} (a decompression bomb?)")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            bad.append((path, exc))
    if bad:
        path, exc = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetCorrupt(f"{path}: cannot be read as an image ({why}){more}; "
                             "remove or replace it")


def _scan_classes(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items = []
    for k, cls in enumerate(classes):
        for p in sorted((folder / cls).rglob("*")):
            if p.suffix.lower() in _IMAGE_EXT:
                items.append((p, k))
    return items


@_register("imagefolder", files=("train", "val"), subdirs=("tiny-imagenet-200", "imagenet", "imagefolder"),
           how="Arrange images as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (Tiny ImageNet's "
               "val/images + val_annotations.txt layout is also read).",
           summary="a train/val tree of images, one folder per class (Tiny ImageNet, ImageNet)")
def _load_imagefolder(data_dir=None, download=False, image_size=None, **_):
    entry = _REGISTRY["imagefolder"]
    explicit = Path(data_dir).expanduser() if data_dir else None
    root = next((c for c in _candidates(search_roots(data_dir), entry.subdirs, explicit)
                 if (c / "train").is_dir() and (c / "val").is_dir()), None)
    if root is None:
        raise _not_found("imagefolder", entry, data_dir)
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise DatasetError("the imagefolder dataset needs Pillow: pip install pillow") from exc
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetCorrupt(f"{root / 'train'}: no class folders")
    index = {c: k for k, c in enumerate(classes)}
    train = _scan_classes(root / "train", classes)
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():  # Tiny ImageNet: val/images/*.JPEG + a table of labels
        val = []
        try:
            lines = annotations.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetCorrupt(f"{annotations}: not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start}); restore the file from the dataset") from None
        for line in lines:
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                val.append((root / "val" / "images" / parts[0], index[parts[1]]))
    else:
        val = _scan_classes(root / "val", classes)
    if not train or not val:
        raise DatasetCorrupt(f"{root}: found {len(train)} train and {len(val)} val images")
    _check_images([p for p, _ in train + val])
    if image_size is None:
        from PIL import Image

        with Image.open(train[0][0]) as im:
            w, h = im.size
        image_size = w if w == h and w <= 256 else 224
    return Dataset("imagefolder", ImageFolderSplit(train, image_size),
                   ImageFolderSplit(val, image_size), (3, image_size, image_size), len(classes),
                   source=str(root))


