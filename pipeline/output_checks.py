"""What a command's output path must be, checked before any work is done.

A name the format does not fit (``-o net.geojson`` for a GeoPackage), a folder, one of the
command's own inputs, an existing file without ``--overwrite``, a GeoPackage holding layers the
command does not write (``--overwrite`` replaces the whole file, and would delete them) and a
folder that cannot be written are refused in one line naming the path, instead of failing
after the work or writing something other than the name says.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.atomic import OutputError, refuse_existing

GEOPACKAGE = (".gpkg",)
GEOTIFF = (".tif", ".tiff")


def check_output(
    path: str | Path,
    *,
    suffixes: Sequence[str],
    overwrite: bool,
    inputs: Iterable[str | Path | None] = (),
    own_layers: Sequence[str] | None = None,
    formats: str | None = None,
) -> Path:
    """``path`` as a Path once it passes every check (see the module); ``own_layers``: the
    layers the command writes into a GeoPackage (``layer_styles`` always counts as its own);
    ``formats``: the suffixes in words, for the message."""
    if str(path).endswith(("/", os.sep)) or Path(path).is_dir():  # as given: Path drops a "/"
        path = Path(path)
        raise OutputError(
            f"{path}: is a folder; name the file to write in it (e.g. {path / ('out' + suffixes[0])})"
        )
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise OutputError(
            f"{path}: this output is written as {formats or ' or '.join(suffixes)}; give it "
            "that suffix"
        )
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise OutputError(f"{path}: is also an input of this command; write elsewhere")
    refuse_existing(path, overwrite)
    if own_layers is not None and path.exists():
        _refuse_foreign_layers(path, own_layers)
    _refuse_unwritable(path)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_foreign_layers(path: Path, own_layers: Sequence[str]) -> None:
    import pyogrio

    try:
        layers = [name for name, _ in pyogrio.list_layers(path)]
    except Exception:  # not a GeoPackage we can read: --overwrite replaces it as asked
        return
    foreign = [name for name in layers if name not in (*own_layers, "layer_styles")]
    if foreign:
        raise OutputError(
            f"{path}: holds layers this command does not write ({', '.join(foreign)}); "
            "--overwrite replaces the whole file and would delete them: write another file"
        )


def _refuse_unwritable(path: Path) -> None:
    """The nearest existing folder of ``path`` must be writable (folders below it are made)."""
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: cannot write here (permission denied); choose another folder")
