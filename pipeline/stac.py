"""A STAC Item describing one prediction, so it can go back into a catalogue (pystac).

The Item's geometry and bbox are the probability COG's footprint in EPSG:4326; the projection
extension records its CRS, shape and transform; the raster extension its encoding (uint8,
scale 1/254, nodata 255). Assets: the probability COG (role ``data``), its QGIS style, the
centrelines and a road network when written. Properties name the model (``roadseg:model``,
``roadseg:model_version``, ``roadseg:model_uri``), the threshold and how predict ran
(window, overlap, tta, precision), read back from the COG's own tags. The datetime
is the source imagery's when the input was a STAC Item, else the time of the prediction.
Asset hrefs are relative to the Item's file when they share a folder tree, so the files move
together.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import raster
from pipeline.atomic import write_text_atomic

PREFIX = "roadseg"
GEOPACKAGE = "application/geopackage+sqlite3"
# COG tag -> (Item property, type); absent tags are left out
TAG_PROPERTIES = {
    "model": ("model", str),
    "model_uri": ("model_uri", str),
    "model_version": ("model_version", str),
    "model_encoder": ("model_encoder", str),
    "model_bands": ("model_bands", str),
    "threshold": ("threshold", float),
    "window": ("window", int),
    "overlap": ("overlap", int),
    "tta": ("tta", lambda v: v == "True"),
    "precision": ("precision", str),
}


def footprint_4326(info: raster.RasterInfo) -> tuple[list[float], dict[str, Any]]:
    """(bbox, GeoJSON polygon) of the raster's footprint in EPSG:4326, edges densified so a
    projected footprint's curved edges are kept."""
    import pyproj
    import shapely
    from shapely.geometry import box, mapping

    if info.crs is None:
        raise ValueError(f"{info.path}: no CRS, so no STAC Item (its geometry is in EPSG:4326)")
    to_wgs84 = pyproj.Transformer.from_crs(info.crs.to_wkt(), "EPSG:4326", always_xy=True)
    ring = shapely.segmentize(box(*info.bounds), max(info.width, info.height) / 20 * info.res[0])
    polygon = shapely.transform(
        ring, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1]))
    )
    return list(polygon.bounds), mapping(polygon)


def _href(path: Path, item_dir: Path) -> str:
    """Relative to the Item's folder when below it or beside it; else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(item_dir).as_posix()
    except ValueError:
        return str(path)


def _properties(tags: dict[str, str]) -> dict[str, Any]:
    props = {}
    for tag, (name, kind) in TAG_PROPERTIES.items():
        if tag in tags:
            props[f"{PREFIX}:{name}"] = kind(tags[tag])
    return props


def _datetime(source_item: dict[str, Any] | None) -> dt.datetime | None:
    props = (source_item or {}).get("properties", {})
    if props.get("datetime"):
        return dt.datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
    return None


def _new_item(
    output: Path, info: raster.RasterInfo, tags: dict[str, Any], source_item: dict[str, Any] | None
) -> Any:
    """The bare pystac Item: footprint, datetime (the source imagery's, else now), properties."""
    import pystac

    bbox, geometry = footprint_4326(info)
    now = dt.datetime.now(dt.timezone.utc)
    acquired = _datetime(source_item)
    props: dict[str, Any] = {"created": now.isoformat().replace("+00:00", "Z")}
    props.update(_properties({k: str(v) for k, v in tags.items()}))
    return pystac.Item(
        id=Path(output).stem,
        geometry=geometry,
        bbox=bbox,
        datetime=acquired or now,
        properties=props,
    )


def _add_probability(
    item: Any, output: Path, item_dir: Path, encoding: dict[str, Any] | None
) -> None:
    """The probability COG (role ``data``), with its encoding in the raster extension."""
    import pystac
    from pystac.extensions.raster import RasterBand, RasterExtension

    cog = pystac.Asset(
        _href(output, item_dir),
        title="road probability",
        media_type=pystac.MediaType.COG,
        roles=["data"],
    )
    item.add_asset("probability", cog)
    if encoding:
        # JSON has no NaN: STAC writes a float nodata NaN as the string "nan"
        enc = {k: ("nan" if v != v else v) for k, v in encoding.items() if v is not None}
        RasterExtension.ext(cog, add_if_missing=True).bands = [RasterBand.create(**enc)]


def _add_companions(
    item: Any, output: Path, item_dir: Path, vectors: Path | None, network: Path | None
) -> None:
    """The files written beside the probability: its QGIS style when there is one, the
    centrelines and the road network when given."""
    import pystac

    from pipeline.styles import style_path

    style = style_path(output)
    if style.exists():
        item.add_asset(
            "qgis_style",
            pystac.Asset(
                _href(style, item_dir),
                title="QGIS style of the probability",
                media_type=pystac.MediaType.XML,
                roles=["style"],
            ),
        )
    for key, path, title in (
        ("centrelines", vectors, "road centrelines (layer roads)"),
        ("network", network, "road network (layers edges, nodes)"),
    ):
        if path is not None:
            item.add_asset(
                key,
                pystac.Asset(
                    _href(path, item_dir), title=title, media_type=GEOPACKAGE, roles=["data"]
                ),
            )


def _add_projection(item: Any, info: raster.RasterInfo) -> None:
    """The projection extension: CRS (EPSG code, else WKT2), shape, transform, bbox."""
    from pystac.extensions.projection import ProjectionExtension

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = info.crs.to_epsg()
    proj.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=None if epsg else info.crs.to_wkt(),
        shape=[info.height, info.width],
        transform=list(info.transform)[:6],
        bbox=list(info.bounds),
    )


def prediction_item(
    item_path: Path,
    output: Path,
    info: raster.RasterInfo,
    tags: dict[str, Any],
    *,
    vectors: Path | None = None,
    network: Path | None = None,
    source_item: dict[str, Any] | None = None,
    encoding: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The STAC Item (as a dict) of a prediction written to ``output`` on ``info``'s grid."""
    import pystac

    item = _new_item(output, info, tags, source_item)
    item_dir = Path(item_path).resolve().parent
    _add_probability(item, output, item_dir, encoding)
    _add_companions(item, output, item_dir, vectors, network)
    _add_projection(item, info)
    if source_item is not None:
        for link in source_item.get("links", []):
            if link.get("rel") == "self":
                item.add_link(pystac.Link("derived_from", link["href"], pystac.MediaType.JSON))
    return item.to_dict(include_self_link=False)


def write_prediction_item(
    item_path: Path, output: Path, *args: Any, overwrite: bool = False, **kwargs: Any
) -> Path:
    """Write :func:`prediction_item` to ``item_path`` (JSON, atomically); returns the path."""
    item = prediction_item(item_path, output, *args, **kwargs)
    return write_text_atomic(item_path, json.dumps(item, indent=2) + "\n", overwrite)
