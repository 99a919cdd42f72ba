"""Run directories: one writer at a time, and files replaced atomically under unique names.

``with locked(path):`` creates the directory if needed and holds an exclusive ``flock`` on
``path/.ssdfa.lock`` until the block ends.  The kernel drops the lock when the process exits,
however it exits (``kill -9`` included), so a lock left by a dead process is never mistaken for
a live one: no pid files to go stale.  A second process asking for the same directory gets
:class:`RunDirBusy` at once, naming the holder's pid.  The lock is re-entrant within one
process (``ssdfa train`` locks the directory, then ``training.run`` locks it again).

``write_text_atomic`` and :func:`open_atomic` write to a temporary file with a unique name in
the same folder, ``fsync`` it and ``os.replace`` it into place, so a reader sees the old file or
the new one, never half of one, and two writers never share a temporary name.  New files get
the mode the umask gives ordinary files (``mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunDirError", "RunDirBusy", "locked", "make_dir", "write_text_atomic", "open_atomic",
           "remove_stale_temp_files", "LOCK_NAME"]

LOCK_NAME = ".ssdfa.lock"

# the files ssdfa writes into a run directory; leftovers of their temporary copies are removed
RUN_FILES = ("checkpoint.pt", "config.json", "metrics.csv", "metrics.json", "summary.json",
             "results.md", "results.json", "sweep.csv", "sweep.json")

_held: dict[str, list] = {}  # realpath -> [fd, depth]: locks this process holds


class RunDirError(Exception):
    """A run directory that cannot be used (busy, not creatable, not writable): exit status 2."""


class RunDirBusy(RunDirError):
    """Another process holds the directory's lock."""


def make_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents), or say in one line why it cannot be a run directory."""
    text = os.fspath(path)
    if not str(text).strip():
        raise RunDirError("the output directory is empty (''); give a folder name, e.g. "
                          "--out-dir runs/exp1")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory; pick another --out-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        raise RunDirError(f"cannot create {path}: {blocker or 'a part of the path'} is a file, "
                          "not a directory; pick another --out-dir") from None
    except PermissionError:
        raise RunDirError(f"cannot create {path}: permission denied; pick another --out-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot create {path}: {_reason(exc)}") from None
    return path


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    return exc.strerror or str(exc)


def _lock_fd(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover - Windows: lock the first byte instead
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def locked(path: str | os.PathLike):
    """Hold ``path``'s run-directory lock for the block (creating the directory first)."""
    path = make_dir(path)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    lock_file = path / LOCK_NAME
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        raise RunDirError(f"cannot write into {path}: permission denied; pick another "
                          "--out-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot write into {path}: {_reason(exc)}") from None
    if not _lock_fd(fd):
        try:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RunDirBusy(f"{path} is in use by another ssdfa process (pid {holder}); wait for "
                         "it to finish, or pick another --out-dir")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is only for the message; the lock itself is held
    _held[key] = [fd, 1]
    try:
        yield path
    finally:
        del _held[key]
        os.close(fd)  # releases the flock


def holds_lock(path: str | os.PathLike) -> bool:
    """Whether this process holds ``path``'s lock."""
    return os.path.realpath(path) in _held


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete temporary copies of run files left by a killed writer; call with the lock held."""
    removed = []
    for p in Path(path).iterdir():
        name = p.name.lstrip(".")
        if p.is_file() and name.endswith(".tmp") and any(name.startswith(f + ".") for f in RUN_FILES):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb"):
    """A file object whose contents replace ``path`` atomically when the block ends cleanly."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path``'s contents with ``text`` atomically (unique temp name, fsync, rename)."""
    with open_atomic(path, "w") as f:
        f.write(text)
    return Path(path)
