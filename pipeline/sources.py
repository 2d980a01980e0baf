"""Where an input raster comes from: a local file, any GDAL path, or a STAC Item's asset.

GDAL reads ``/vsicurl/https://...`` (and ``/vsis3/``, ``/vsigs/``, ...) by HTTP range requests,
so a COG on a web server or in a bucket is predicted window by window without downloading it.
Such a name must stay a string: ``pathlib.Path`` folds the ``//`` of ``https://`` into ``/``.
A plain ``http(s)://`` URL of a raster becomes ``/vsicurl/<url>``. A STAC Item (a ``.json``
file or URL) names its image asset: ``asset`` if given, else the first asset with role
``data``, else the first with an image media type (GeoTIFF/COG, JP2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
IMAGE_MEDIA_TYPES = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff")


@dataclass(frozen=True)
class Source:
    """An input raster: the name GDAL opens, a stem for output names, the STAC Item it came
    from (as a dict, or None)."""

    path: str | Path
    stem: str
    item: dict[str, Any] | None = None


def is_remote(name: str | Path) -> bool:
    """A GDAL virtual path (``/vsi...``) or a URL, not a local file."""
    text = str(name)
    return text.startswith("/vsi") or bool(URL.match(text))


def gdal_name(name: str | Path) -> str | Path:
    """A local file as a Path; a URL as ``/vsicurl/<url>``; any other GDAL path as it is."""
    if isinstance(name, Path) or not is_remote(name):
        return Path(name)
    return f"/vsicurl/{name}" if name.startswith(("http://", "https://")) else name


def absolute(name: str | Path) -> str:
    """What a worker on another machine can open: a local file's absolute path, else the name."""
    return str(name) if is_remote(name) else str(Path(name).resolve())


def display_name(name: str | Path) -> str:
    """The file name part, for messages and progress bars."""
    return PurePosixPath(urlparse(str(name).split("/vsicurl/")[-1]).path or str(name)).name


def file_stem(name: str | Path) -> str:
    return PurePosixPath(display_name(name)).stem


def is_stac_item(name: str | Path) -> bool:
    return display_name(name).lower().endswith(".json")


def _pick_asset(item: Any, key: str | None) -> tuple[str, Any]:
    assets = item.assets
    if key is not None:
        if key not in assets:
            raise LookupError(f"STAC item {item.id}: no asset {key!r} (it has {', '.join(assets)})")
        return key, assets[key]
    for k, a in assets.items():
        if "data" in (a.roles or []):
            return k, a
    for k, a in assets.items():
        if (a.media_type or "").split(";")[0].strip() in IMAGE_MEDIA_TYPES:
            return k, a
    raise LookupError(
        f"STAC item {item.id}: no asset with role 'data' or an image media type; "
        f"name one with --asset ({', '.join(assets)})"
    )


def resolve_input(name: str | Path, asset: str | None = None) -> Source:
    """The raster to predict for a command-line input: a STAC Item's image asset, or the
    raster itself. Raises LookupError naming the item when the asset cannot be chosen."""
    if not is_stac_item(name):
        if asset is not None:
            raise ValueError(f"{name}: --asset applies to STAC items only")
        return Source(gdal_name(name), file_stem(name))
    import pystac

    text = str(name)
    href = text if URL.match(text) else str(Path(text).resolve())
    try:
        item = pystac.Item.from_file(href)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: STAC item not found") from None
    except Exception as e:  # not JSON, not an Item, an HTTP error: one line naming the input
        raise ValueError(f"{name}: not a STAC Item pystac can read ({e})") from None
    _, chosen = _pick_asset(item, asset)
    return Source(gdal_name(chosen.get_absolute_href()), item.id, item.to_dict())
