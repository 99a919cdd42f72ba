"""Fetching a dataset into the user cache (only with ``--download``), each file checked by MD5."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DatasetCorrupt, DatasetNotFound
from .roots import cache_dir

DOWNLOADS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    ),
}
"""Base URL and {file: MD5} of every dataset that can be fetched."""


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str) -> None:
    """``url`` into ``dest`` through a temporary file, kept only if its MD5 is ``md5``."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
            shutil.copyfileobj(r, out)
        got = _md5(Path(tmp))
        if got != md5:
            raise DatasetCorrupt(f"{url}: MD5 {got}, expected {md5}; not kept")
        os.replace(tmp, dest)
    except OSError as exc:
        raise DatasetNotFound(f"could not download {url}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download(name: str, subdir: str) -> Path:
    """Fetch ``name`` into ``cache/subdir``, verify each file's MD5, and return its folder
    (archives are extracted into the cache, where they make ``subdir`` themselves)."""
    if name not in DOWNLOADS:
        raise DatasetNotFound(f"dataset {name!r} cannot be downloaded automatically")
    base, files = DOWNLOADS[name]
    target = cache_dir() / subdir
    target.mkdir(parents=True, exist_ok=True)
    for fname, md5 in files.items():
        dest = target / fname
        if dest.is_file() and _md5(dest) == md5:
            continue
        _fetch(base + fname, dest, md5)
        if fname.endswith(".tar.gz"):
            with tarfile.open(dest) as tar:
                tar.extractall(cache_dir(), filter="data")
    return target
