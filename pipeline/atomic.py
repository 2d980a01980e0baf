"""The one way roadseg writes an output file: a temporary file beside it, then a rename.

A reader never sees a half-written file under the final name, a killed or failing writer
leaves nothing under it, and an existing file is replaced only when the caller allows it.

Temporary files are named ``.<name>.<random>.part<suffix>`` beside the target, where
``<suffix>`` is the target's own suffix (drivers such as the GeoPackage driver choose the
format by it), so the leftovers of a killed run are recognisable (:func:`stale_temporaries`).
An output that must not be replaced is renamed into place by a hard link, which fails when
the name was taken meanwhile; a long writer (predict) also holds :func:`exclusive_output`.
Files get the mode the umask gives a new file (0644 under umask 022), not the owner-only mode
``mkstemp`` would leave: outputs are read by colleagues and by Dask workers running as other
users.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

PART_MARK = ".part"


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The mode a new file gets under the current umask (0o644 under umask 022)."""
    return 0o666 & ~_current_umask()


def default_dir_mode() -> int:
    """The mode a new folder gets under the current umask (0o755 under umask 022)."""
    return 0o777 & ~_current_umask()


def temporary_name(path: str | Path) -> Path:
    """A fresh, unused temporary name beside ``path`` (the file is not created)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{PART_MARK}{path.suffix}")


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files of ``path`` left beside it by a writer that was killed (exactly
    ``.<name>.<8 hex digits>.part<suffix>``: never another output's temporaries)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}{re.escape(PART_MARK + path.suffix)}"
    )
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


class OutputError(ValueError):
    """An output that cannot be written where asked (read-only folder, disk full)."""


class OutputBusyError(FileExistsError):
    """Another process is writing the same output now."""


def lock_name(path: str | Path) -> Path:
    """The lock file ``.<name>.lock`` beside ``path`` (see :func:`exclusive_output`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_output(path: str | Path) -> Iterator[None]:
    """Hold the lock on ``path`` for as long as the block writes it, or fail at once.

    The lock is an ``flock`` on ``.<name>.lock`` beside ``path``: the kernel drops it when its
    holder exits, even by SIGKILL, so a lock is never stale. Holding it, no other roadseg
    process writes ``path``, so the temporaries of earlier, killed writers are removed here
    (:func:`stale_temporaries`). Raises OutputBusyError when another process holds the lock,
    OutputError when the folder cannot be written. The lock file is removed on leaving.
    """
    path = Path(path)
    lock = lock_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _locked_fd(lock, path)
    except OutputBusyError:
        raise
    except OSError as e:
        raise OutputError(
            f"{path.parent}: cannot write here ({e.strerror}); choose another folder"
        ) from None
    try:
        for stale in stale_temporaries(path):
            stale.unlink(missing_ok=True)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _locked_fd(lock: Path, path: Path) -> int:
    """An open descriptor of ``lock`` holding its flock; retried when the file was replaced
    between opening and locking (its previous holder removed it on leaving)."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"{path}: another process is writing it now (it holds {lock.name}); wait for "
                "it to finish, or write elsewhere"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def check_free_space(path: str | Path, need_bytes: int) -> None:
    """Raise OutputError when the file system of ``path`` has less than ``need_bytes`` free."""
    folder = Path(path).parent
    free = shutil.disk_usage(folder if folder.is_dir() else Path.cwd()).free
    if free < need_bytes:
        raise OutputError(
            f"{folder}: {free / 2**20:.0f} MiB free, but writing {Path(path).name} needs at "
            f"least {need_bytes / 2**20:.0f} MiB; free some space or write elsewhere"
        )


DISK_FULL_BYTES = 2**20  # a failed write with less free space than this: the disk is full


def error_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from (GDAL's reason is often a chained one)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def free_bytes_if_full(path: str | Path, error: BaseException) -> int | None:
    """After writing ``path`` failed with ``error``: the bytes left beside it when the disk is
    full, else None. libtiff and torch's zip writer report a full disk only as a failed
    write, so less than ``DISK_FULL_BYTES`` free counts as full too."""
    folder = Path(path).parent
    free = shutil.disk_usage(folder).free if folder.is_dir() else None
    said = any(
        getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
        for e in error_chain(error)
    )
    if said or (free is not None and free < DISK_FULL_BYTES):
        return free or 0
    return None


def refuse_existing(path: str | Path, overwrite: bool) -> None:
    """Raise FileExistsError naming ``path`` when it exists and ``overwrite`` is False."""
    if not overwrite and Path(path).exists():
        raise FileExistsError(f"{path}: exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success give it the default mode and rename
    it over ``path``. On any error (or Ctrl-C) the temporary file is removed and ``path`` is
    left as it was. The caller creates the temporary file (any writer, any driver)."""
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rename_no_clobber(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists, in one step: a hard link fails
    when the name is taken, so a file another process wrote there meanwhile is never replaced
    (the check at the start and this rename cannot race). File systems without hard links
    fall back to check-then-rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"{path}: appeared while this run wrote it (another process?); pass --overwrite "
            "to replace it"
        ) from None
    except OSError:  # no hard links here (e.g. FAT, some network shares)
        refuse_existing(path, overwrite=False)
        os.replace(tmp, path)


def write_bytes_atomic(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite)
