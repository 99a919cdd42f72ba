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

from .errors import RunDirBusy, RunDirError  # noqa: F401  (re-exported)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "RunDirError",
    "RunDirBusy",
    "locked",
    "make_dir",
    "write_text_atomic",
    "open_atomic",
    "remove_stale_temp_files",
    "LOCK_NAME",
    "run_kind",
    "enclosing_run",
    "refuse_foreign",
]

LOCK_NAME = ".ssdfa.lock"

# the files ssdfa writes into a run directory; leftovers of their temporary copies are removed
RUN_FILES = (
    "checkpoint.pt",
    "config.json",
    "metrics.csv",
    "metrics.json",
    "summary.json",
    "results.md",
    "results.json",
    "sweep.csv",
    "sweep.json",
)

_held: dict[str, list] = {}  # realpath -> [fd, depth]: locks this process holds


# what marks a directory as written by one command: train's run, or a table command's folder
_KINDS = (
    ("train", ("checkpoint.pt", "config.json")),
    ("sweep", ("sweep.json",)),
    ("table", ("results.json", "results.md")),
)


def run_kind(path: str | os.PathLike) -> str | None:
    """ "train", "sweep" or "table" (compare, reproduce) for a directory an ssdfa command wrote,
    from the files it holds; None for anything else (missing, empty, a plain folder)."""
    p = Path(path)
    try:
        if not p.is_dir():
            return None
        for kind, names in _KINDS:
            if any((p / n).is_file() for n in names):
                return kind
    except OSError:
        return None
    return None


def enclosing_run(path: str | os.PathLike) -> tuple[Path, str] | None:
    """The nearest directory at or above ``path`` that an ssdfa command wrote, and its kind."""
    p = Path(os.path.abspath(path))
    for d in (p, *p.parents):
        kind = run_kind(d)
        if kind is not None:
            return d, kind
    return None


def refuse_foreign(
    path: str | os.PathLike, allowed: tuple[str, ...], flag: str = "--out-dir", *, inside: bool = True
) -> None:
    """Refuse to write at ``path`` when it is (or, with ``inside``, lies within) a directory of
    a kind not in ``allowed``: no command writes into a run directory it does not own.  E.g.
    ``refuse_foreign(out, ("table",), "--out")`` before ``report`` writes a file there, and
    ``refuse_foreign(out, ("train",))`` before ``train`` uses a directory."""
    if inside:
        found = enclosing_run(path)
    else:
        kind = run_kind(path)
        found = (Path(path), kind) if kind is not None else None
    if found is None or found[1] in allowed:
        return
    where, kind = found
    what = {
        "train": "a training run (ssdfa train)",
        "sweep": "a sweep (ssdfa sweep)",
        "table": "the tables of ssdfa compare/reproduce",
    }[kind]
    raise RunDirError(
        f"{flag} {path}: {where} holds {what}; this command does not write into it — pick another {flag}"
    )


def make_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents), or say in one line why it cannot be a run directory."""
    text = os.fspath(path)
    if not str(text).strip():
        raise RunDirError("the output directory is empty (''); give a folder name, e.g. --out-dir runs/exp1")
    path = Path(text)
    try:
        long = next((p for p in path.parts if len(os.fsencode(p)) > 255), None)
        if long is not None:
            raise RunDirError(
                f"cannot create {_short(path)}: the name {_short(long)} is longer "
                "than the 255 bytes a file name may have; pick a shorter --out-dir"
            )
        if path.is_symlink() and not path.exists():
            raise RunDirError(
                f"{path} is a symbolic link that leads nowhere (or around a loop, "
                f"to {_short(os.readlink(path))}); pick another --out-dir"
            )
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} is a file, not a directory; pick another --out-dir")
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES on a parent...
        raise RunDirError(f"cannot create {_short(path)}: {_reason(exc)}; pick another --out-dir") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(
            (p for p in [path, *path.parents] if (p.exists() or p.is_symlink()) and not p.is_dir()), None
        )
        if blocker is not None and blocker.is_symlink() and not blocker.exists():
            raise RunDirError(
                f"cannot create {path}: {blocker} is a symbolic link that leads "
                "nowhere (or around a loop); pick another --out-dir"
            ) from None
        raise RunDirError(
            f"cannot create {path}: {blocker or 'a part of the path'} is a file, "
            "not a directory; pick another --out-dir"
        ) from None
    except PermissionError:
        raise RunDirError(f"cannot create {path}: permission denied; pick another --out-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot create {path}: {_reason(exc)}") from None
    return path


def _short(p) -> str:
    text = str(p)
    return text if len(text) <= 80 else text[:38] + "..." + text[-38:]


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
    """Hold ``path``'s run-directory lock for the block (creating the directory first; a block
    that fails before writing anything leaves no directory it created behind)."""
    fresh = not os.path.lexists(path)
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
        raise RunDirError(f"cannot write into {path}: permission denied; pick another --out-dir") from None
    except OSError as exc:
        raise RunDirError(f"cannot write into {path}: {_reason(exc)}") from None
    if not _lock_fd(fd):
        try:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RunDirBusy(
            f"{path} is in use by another ssdfa process (pid {holder}); wait for "
            "it to finish, or pick another --out-dir"
        )
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is only for the message; the lock itself is held
    _held[key] = [fd, 1]
    failed = True
    try:
        yield path
        failed = False
    finally:
        del _held[key]
        if failed and fresh and _only_lock(path):  # refused before anything was written
            try:
                os.unlink(lock_file)
                os.rmdir(path)
            except OSError:
                pass
        os.close(fd)  # releases the flock


def _only_lock(path: Path) -> bool:
    try:
        return [p.name for p in Path(path).iterdir()] == [LOCK_NAME]
    except OSError:
        return False


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
