"""Files that are never half-written, and directories one process writes at a time.

Every write goes to a temporary sibling named `.<name>.<pid>.tmp` and is renamed into place; on any
failure (a full disk included) the temporary is removed and an OSError becomes a SpeckvError naming
the path and the system's reason. A temporary left behind by a killed process carries its pid, so
`clean_stale` can tell it from one a live process is still writing. `dir_lock` gives a directory to
one process at a time (a flock'd file holding the owner's pid).

The bottom layer: imports nothing from speckv but errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from speckv.errors import SpeckvError

LOCK_NAME = ".speckv.lock"
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def os_error(exc: OSError, doing: str, path: Path) -> SpeckvError:
    """An OSError as a one-line user error: what failed, where, and the system's reason."""
    return SpeckvError(f"cannot {doing} {path}: {_reason(exc)}")


def temp_path(path: Path) -> Path:
    """The temporary sibling a write of `path` goes through (pid in the name, see clean_stale)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove(path: Path) -> None:
    """Remove a file or directory tree if present; never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def ensure_dir(path: Path) -> Path:
    """mkdir -p, with any OSError (read-only, a file in the way, disk full) as a SpeckvError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SpeckvError(f"cannot create directory {path}: a file is in the way") from None
    except OSError as exc:
        raise os_error(exc, "create directory", path) from None
    if not path.is_dir():
        raise SpeckvError(f"cannot create directory {path}: a file is in the way")
    return path


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) for a temporary sibling, then rename it to path. Nothing half-written survives:
    on any failure the temporary is removed; OSErrors become a SpeckvError naming path."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise os_error(exc, "write", path) from None
    finally:
        remove(tmp)  # gone after the rename; left only on failure
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=1))


def write_parquet(df, path: Path) -> Path:
    """A pandas DataFrame as Parquet (no index)."""
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def clean_stale(directory: Path, prefix: str = ".") -> list[Path]:
    """Remove the `.<name>.<pid>.tmp` files and directories in directory (whose names start with
    prefix) whose process is gone (a killed conversion leaves gigabytes there); returns them."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and entry.name.startswith(prefix) and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            remove(entry)
            removed.append(entry)
    return removed


def _lock(path: Path):
    from filelock import FileLock

    def stamp(fd: int) -> None:  # the holder's pid, for the message of whoever finds it held
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)

    return FileLock(str(path), blocking=False, on_acquired=stamp)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _try_acquire(lock, path: Path) -> bool:
    from filelock import Timeout

    try:
        lock.acquire()
    except Timeout:
        return False
    except OSError as exc:
        raise os_error(exc, "lock", path) from None
    return True


@contextmanager
def dir_lock(directory: Path, create: bool = True) -> Iterator[None]:
    """Hold directory for this process (one speckv process writes an output directory at a time);
    another holder is a SpeckvError naming its pid. create=False: a directory that does not exist
    is not created (nor locked)."""
    directory = Path(directory)
    if not create and not directory.is_dir():
        yield
        return
    path = ensure_dir(directory) / LOCK_NAME
    lock = _lock(path)
    if not _try_acquire(lock, path):
        pid = _holder(path)
        who = "this process" if pid == str(os.getpid()) else f"another speckv process (pid {pid})"
        raise SpeckvError(f"{directory} is in use by {who}; wait for it to finish or use another --out")
    try:
        yield
    finally:
        lock.release()


@contextmanager
def wait_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the lock file at path, waiting (with a line on stderr) while another process holds it."""
    path = Path(path)
    ensure_dir(path.parent)
    lock = _lock(path)
    if not _try_acquire(lock, path):
        print(f"speckv: waiting for another process (pid {_holder(path)}) {what} ...", file=sys.stderr, flush=True)
        try:
            lock.acquire(blocking=True, timeout=-1)
        except OSError as exc:
            raise os_error(exc, "lock", path) from None
    try:
        yield
    finally:
        lock.release()


def read_parquet(path: Path, columns: tuple[str, ...] = (), what: str = "records"):
    """A Parquet file as a DataFrame; unreadable bytes or missing columns are a SpeckvError naming it."""
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise SpeckvError(f"{path}: unreadable {what} ({type(exc).__name__}); delete it to re-create it") from None
    missing = sorted(set(columns) - set(df.columns))
    if missing:
        raise SpeckvError(f"{path}: not speckv {what} (lacks columns {', '.join(missing)})")
    return df
