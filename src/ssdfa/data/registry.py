"""The dataset registry: one entry per dataset, holding everything known about it before loading.

An entry names its input shape, its classes and its default model (read by ``ssdfa.models``,
``ssdfa.cost`` and the figures: there is no second table), the files it needs, where they sit
and how to get them.  Loaders register with :func:`register`; :func:`load_dataset` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetCorrupt, DatasetError, DatasetNotFound
from . import roots
from .downloads import download
from .splits import Dataset, Subset

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset.

    ``input_shape`` and ``num_classes`` are what its standard files hold (an IDX set of another
    image size loads at that size); None where only the files can say (``imagefolder``), whose
    well-known sizes are listed in ``presets`` (``imagenet``) for the cost model.
    """

    name: str
    summary: str
    loader: Callable[..., Dataset]
    input_shape: Shape | None
    num_classes: int | None
    default_model: str
    task: str = "classification"
    files: tuple[str, ...] = ()  # what must be present (for messages and `ssdfa info`)
    subdirs: tuple[str, ...] = ()
    how: str = ""
    embedded: bool = False
    aliases: tuple[str, ...] = ()
    presets: tuple[tuple[str, Shape, int], ...] = ()  # (name, input shape, classes)


_REGISTRY: dict[str, DatasetEntry] = {}


def register(name: str, **kw):
    """Decorator: register ``fn(data_dir=, download=, image_size=) -> Dataset`` as ``name``."""

    def deco(fn):
        _REGISTRY[name] = DatasetEntry(name=name, loader=fn, **kw)
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


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name`` (any spelling :func:`canonical_name` accepts)."""
    return _REGISTRY[canonical_name(name)]


def _squash(name: str) -> str:
    return str(name).strip().lower().replace("-", "").replace("_", "")


def dataset_shapes() -> dict[str, tuple[Shape, int]]:
    """(input shape, classes) of every dataset whose size is known before loading, and of the
    presets of those sized by their files (``imagenet``), by name."""
    out: dict[str, tuple[Shape, int]] = {}
    for name in list_datasets():
        entry = _REGISTRY[name]
        if entry.input_shape is not None and entry.num_classes is not None:
            out[name] = (entry.input_shape, entry.num_classes)
        for preset, shape, classes in entry.presets:
            out[preset] = (shape, classes)
    return out


def dataset_shape(name: str) -> tuple[Shape, int] | None:
    """(input shape, classes) of ``name`` written any way (``fashion-mnist``, ``CIFAR_10``,
    ``fashionmnist``, an alias, a preset such as ``imagenet``), or None."""
    key = _squash(name)
    shapes = dataset_shapes()
    for known, value in shapes.items():
        if key == _squash(known):
            return value
    for entry in _REGISTRY.values():
        if key in {_squash(a) for a in entry.aliases} and entry.name in shapes:
            return shapes[entry.name]
    return None


def _refuse_empty(canon: str, ds: Dataset) -> None:
    for which, split in (("train", ds.train), ("test", ds.test)):
        if len(split) == 0:  # a model trained or tested on nothing reports a number that is none
            raise DatasetCorrupt(
                f"dataset {canon} ({ds.source or 'as found'}): its {which} split "
                "holds no example; restore its files"
            )
    if ds.task == "classification" and ds.num_classes < 2:
        raise DatasetCorrupt(
            f"dataset {canon} ({ds.source or 'as found'}) has "
            f"{ds.num_classes} class; a classifier needs at least 2 (it would "
            "reach 100 % by answering the one class)"
        )


def load_dataset(
    name: str,
    data_dir=None,
    *,
    download: bool = False,
    image_size: int | None = None,
    limit_train: int | None = None,
) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`); ``limit_train`` keeps the first n."""
    canon = canonical_name(name)
    ds = _REGISTRY[canon].loader(data_dir=data_dir, download=download, image_size=image_size)
    _refuse_empty(canon, ds)
    if limit_train is not None:
        if limit_train < 1:
            raise DatasetError(f"limit_train must be >= 1, got {limit_train}")
        ds.train = Subset(ds.train, min(limit_train, len(ds.train)))
    return ds


def find_dataset(name: str, data_dir=None) -> Path | None:
    """The folder holding dataset ``name``'s files, or None (embedded datasets: None)."""
    entry = _REGISTRY[canonical_name(name)]
    if entry.embedded:
        return None
    for cand in roots.candidates(data_dir, entry.subdirs):
        if all(roots.exists_any(cand, f) for f in entry.files):
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


def not_found(name: str, data_dir) -> DatasetNotFound:
    """The error for a dataset whose files are nowhere: what, every place searched, how to get it."""
    entry = _REGISTRY[name]
    places = roots.candidates(data_dir, entry.subdirs)
    files = ", ".join(entry.files)
    return DatasetNotFound(
        f"dataset {name!r} not found: expected {files} (each may be .gz) in one of: "
        + ", ".join(str(p) for p in places)
        + f". {entry.how} Or pass --data-dir DIR, set SSDFA_DATA=DIR, or use --download if online."
    )


def locate(name: str, data_dir, download_missing: bool) -> Path:
    """The folder of ``name``'s files; fetched into the cache first if missing and allowed."""
    found = find_dataset(name, data_dir)
    if found is not None:
        return found
    if download_missing:
        return download(name, _REGISTRY[name].subdirs[0])
    raise not_found(name, data_dir)
