"""Where dataset files are looked for: ``data_dir``, ``$SSDFA_DATA``, the user cache, system folders."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_ROOTS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))


def cache_dir() -> Path:
    """The user cache, ``$XDG_CACHE_HOME/ssdfa`` or ``~/.cache/ssdfa`` (downloads go here)."""
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


def candidates(data_dir, subdirs: tuple[str, ...]) -> list[Path]:
    """Every folder a dataset stored under ``subdirs`` may be in, in look-up order; ``data_dir``
    itself too (``--data-dir`` may point straight at the files)."""
    explicit = Path(data_dir).expanduser() if data_dir else None
    out = []
    for root in search_roots(data_dir):
        out.extend(root / s for s in subdirs)
        if explicit is not None and root == explicit:
            out.append(root)
    return out


def exists_any(folder: Path, stem: str) -> bool:
    """``folder/stem`` is there, plain or as ``stem.gz``."""
    return (folder / stem).exists() or (folder / (stem + ".gz")).is_file()
