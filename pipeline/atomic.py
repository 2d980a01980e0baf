"""The one way roadseg writes an output file: a temporary file beside it, then a rename.

A reader never sees a half-written file under the final name, a killed or failing writer
leaves nothing under it, and an existing file is replaced only when the caller allows it.

Temporary files are named ``.<name>.<random>.part<suffix>`` beside the target, where
``<suffix>`` is the target's own suffix (drivers such as the GeoPackage driver choose the
format by it), so the leftovers of a killed run are recognisable (:func:`stale_temporaries`).
Files get the mode the umask gives a new file (0644 under umask 022), not the owner-only mode
``mkstemp`` would leave: outputs are read by colleagues and by Dask workers running as other
users.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

PART_MARK = ".part"


def default_file_mode() -> int:
    """The mode a new file gets under the current umask (0o644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_name(path: str | Path) -> Path:
    """A fresh, unused temporary name beside ``path`` (the file is not created)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{PART_MARK}{path.suffix}")


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files of ``path`` left beside it by a writer that was killed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}."
    return sorted(
        p
        for p in path.parent.iterdir()
        if p.name.startswith(prefix) and f"{PART_MARK}{path.suffix}" in p.name[len(prefix) :]
    )


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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite)
