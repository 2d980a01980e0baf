"""OpenStreetMap roads as labels: which ways are road, how wide they are, what is visible.

An OSM extract (``.osm`` XML or ``.osm.pbf`` through GDAL's OSM driver, layer ``lines``; or a
GeoJSON/GeoPackage export from Overpass with a ``highway`` property) carries every way:
footpaths, railways, planned roads and tunnels beside the roads an image shows. Burned as
they come, they teach a model that a footpath through a field or a railway is road, and a
motorway gets a track's width. The rules here (``data.osm`` in params.yaml):

* a way is road when its ``highway`` value is in ``road_classes`` (default: motorway ...
  service and track, with their ``_link`` ramps; not footway, path, cycleway, steps,
  pedestrian, bridleway, construction, proposed, abandoned). Railways carry no ``highway``
  tag and never count;
* a tunnel (``tunnel`` other than ``no``, or ``covered=yes``) is left out of the labels:
  it cannot be seen from above. A bridge is kept: its deck is road seen from above;
* width, full carriageway in metres: the ``width`` tag when it parses (``7``, ``7.5 m``,
  ``24'`` in feet), else ``lanes`` x ``lane_width_m``, else the class's entry of
  ``class_widths_m``, else ``default_width_m``.

The GDAL OSM driver puts tags it has no column for into ``other_tags`` (an hstore string,
``"lanes"=>"3","bridge"=>"yes"``); they are unpacked into columns here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

OSM_SUFFIXES = (".osm", ".pbf")
OSM_LINES_LAYER = "lines"
HIGHWAY = "highway"
# tags read from other_tags into columns of their own
TAG_COLUMNS = ("width", "lanes", "bridge", "tunnel", "covered", "layer", "surface", "service")

_HSTORE_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_FEET = re.compile(r"(\d)\s*(?:'|ft\b|feet\b)")


def is_osm_file(path: str | Path) -> bool:
    """An OSM XML or PBF extract, read through GDAL's OSM driver."""
    name = Path(path).name.lower()
    return name.endswith(".osm") or name.endswith(".osm.pbf") or name.endswith(".pbf")


def parse_other_tags(text: object) -> dict[str, str]:
    """``"lanes"=>"3","bridge"=>"yes"`` (GDAL's hstore of the tags without a column) -> dict."""
    if not isinstance(text, str) or not text:
        return {}
    return {k.replace('\\"', '"'): v.replace('\\"', '"') for k, v in _HSTORE_PAIR.findall(text)}


def unpack_tags(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy the tags of ``TAG_COLUMNS`` out of ``other_tags`` into columns (when missing)."""
    if "other_tags" not in frame.columns:
        return frame
    tags = frame["other_tags"].map(parse_other_tags)
    frame = frame.copy()
    for key in TAG_COLUMNS:
        from_hstore = tags.map(lambda t, k=key: t.get(k))
        frame[key] = frame[key].fillna(from_hstore) if key in frame.columns else from_hstore
    return frame


def parse_width_m(value: object) -> float:
    """A ``width`` tag in metres (``7``, ``7.5 m``, ``7,5``, ``24'``/``24 ft``); NaN when unusable."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return float("nan")
    text = str(value).strip().lower()
    match = _NUMBER.search(text)
    if not match:
        return float("nan")
    number = float(match.group().replace(",", "."))
    if _FEET.search(text):
        number *= 0.3048
    return number if number > 0 else float("nan")


def parse_lanes(value: object) -> float:
    """A ``lanes`` tag as a number (``2``, ``2;3`` -> 2); NaN when unusable."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return float("nan")
    match = _NUMBER.search(str(value))
    lanes = float(match.group().replace(",", ".")) if match else float("nan")
    return lanes if lanes > 0 else float("nan")


def is_visible_road(frame: pd.DataFrame, road_classes: list[str]) -> np.ndarray:
    """Rows that are roads an image shows: a listed ``highway`` class, not in a tunnel."""
    highway = frame[HIGHWAY].astype(object).where(frame[HIGHWAY].notna(), "")
    road = highway.astype(str).isin(set(road_classes)).to_numpy()
    tunnel = _column(frame, "tunnel").fillna("no").astype(str).str.lower()
    covered = _column(frame, "covered").fillna("no").astype(str).str.lower()
    hidden = (~tunnel.isin({"no", "false", "0"})) | (covered == "yes")
    return road & ~hidden.to_numpy()


def full_widths_m(
    frame: pd.DataFrame,
    class_widths_m: dict[str, float],
    lane_width_m: float,
    default_width_m: float,
) -> np.ndarray:
    """Full road width in metres per row: ``width`` tag, else lanes x lane width, else class."""
    width = _column(frame, "width").map(parse_width_m).to_numpy(dtype=float)
    lanes = _column(frame, "lanes").map(parse_lanes).to_numpy(dtype=float)
    by_class = (
        frame[HIGHWAY]
        .map(lambda h: class_widths_m.get(str(h), default_width_m))
        .to_numpy(dtype=float)
    )
    out = np.where(np.isfinite(lanes), lanes * lane_width_m, by_class)
    return np.where(np.isfinite(width), width, out)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name].astype(object)
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)
