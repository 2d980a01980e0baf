"""QGIS styles that travel with predict's outputs, so they open styled in QGIS.

* The probability COG gets a ``<name>.qml`` beside it, which QGIS applies when it loads the
  raster: pixels below the model's threshold are transparent, those above it are coloured by a
  yellow-to-red ramp, nodata is transparent. QGIS's GDAL provider applies the band scale
  (1/254 on our uint8 COGs), so the renderer sees probabilities 0..1 for both the uint8 and
  the float32 output, and the QML is written in probabilities.
* Vector layers in a GeoPackage get their default style in the ``layer_styles`` table (the
  convention QGIS and GDAL share): the centrelines (layer ``roads``) as red lines, a road
  network's ``edges`` graduated by mean probability and its ``nodes`` by degree
  (:func:`add_network_styles`).

Pure XML strings and sqlite3: no QGIS is needed to write them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pipeline.atomic import write_text_atomic

QGIS_VERSION = "3.22.0"  # the oldest QGIS these styles are written for (any later one reads them)
STYLE_NAME = "roadseg"
# ColorBrewer YlOrRd, light to dark: probability just above the threshold .. certain road
RAMP = ("#ffffb2", "#fecc5c", "#fd8d3c", "#f03b20", "#bd0026")
ROAD_COLOUR = "#e31a1c"
# (upper degree, label, colour, size in mm) for network nodes
NODE_CLASSES = (
    (1, "dead end", "#ff7f00", 1.6),
    (2, "through node", "#9e9ac8", 1.0),
    (1000, "junction", "#3f007d", 2.4),
)
# (upper mean d, label, colour, size in mm) for APLS control points: ColorBrewer RdYlGn, reversed
APLS_POINT_CLASSES = (
    (0.1, "paths kept (d <= 0.1)", "#1a9641", 1.2),
    (0.25, "0.1 - 0.25", "#a6d96a", 1.6),
    (0.5, "0.25 - 0.5", "#fdae61", 2.0),
    (0.99, "0.5 - 0.99", "#f46d43", 2.4),
    (1.0, "0.99 - 1: missing or cut off", "#d7191c", 2.8),
)
LAYER_STYLES_DDL = """CREATE TABLE layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    f_table_catalog TEXT(256),
    f_table_schema TEXT(256),
    f_table_name TEXT(256),
    f_geometry_column TEXT(256),
    styleName TEXT(30),
    styleQML TEXT,
    styleSLD TEXT,
    useAsDefault BOOLEAN,
    description TEXT,
    owner TEXT(30),
    ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""


def _header(extra: str = "") -> str:
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f'<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories"{extra}>\n'
    )


def _hex_rgba(colour: str, alpha: int = 255) -> str:
    """``#rrggbb`` -> QGIS's ``r,g,b,a`` colour string."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"{r},{g},{b},{alpha}"


# ----------------------------------------------------------------------------------- raster
def probability_qml(threshold: float) -> str:
    """QML of a probability raster (values 0..1 as QGIS reads them, after the band scale).

    An interpolated ramp from ``threshold`` to 1 with ``clip="1"``: values outside it are not
    drawn (transparent), so the map shows only what the model calls road. Nodata (the band's
    own nodata value, 255 raw on a uint8 COG) is transparent (``nodataColor`` empty).
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    steps = len(RAMP) - 1
    values = [threshold + (1.0 - threshold) * i / steps for i in range(len(RAMP))]
    items = "\n".join(
        f'          <item alpha="255" value="{v:.6g}" label="{v:.2f}" color="{c}"/>'
        for v, c in zip(values, RAMP, strict=True)
    )
    stops = ":".join(f"{i / steps:g};{_hex_rgba(c)}" for i, c in enumerate(RAMP[1:-1], start=1))
    return (
        _header(' hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0"')
        + f"""  <pipe>
    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1" nodataColor="" classificationMin="{threshold:.6g}" classificationMax="1">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="2" clip="1" minimumValue="{threshold:.6g}" maximumValue="1" labelPrecision="2">
          <colorramp type="gradient" name="[source]">
            <Option type="Map">
              <Option type="QString" name="color1" value="{_hex_rgba(RAMP[0])}"/>
              <Option type="QString" name="color2" value="{_hex_rgba(RAMP[-1])}"/>
              <Option type="QString" name="discrete" value="0"/>
              <Option type="QString" name="rampType" value="gradient"/>
              <Option type="QString" name="stops" value="{stops}"/>
            </Option>
          </colorramp>
{items}
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
    )


def style_path(raster_path: str | Path) -> Path:
    """``region_roads.tif`` -> ``region_roads.qml``, the name QGIS looks for."""
    return Path(raster_path).with_suffix(".qml")


def write_probability_style(
    raster_path: str | Path, threshold: float, overwrite: bool = False
) -> Path:
    """Write :func:`probability_qml` beside ``raster_path`` (atomically); returns its path."""
    return write_text_atomic(style_path(raster_path), probability_qml(threshold), overwrite)


# ----------------------------------------------------------------------------------- vectors
def _symbol(kind: str, layer_class: str, name: str, options: dict[str, str]) -> str:
    """One QGIS symbol of one symbol layer, its properties as QGIS's ``Option`` map."""
    props = "\n".join(
        f'            <Option type="QString" name="{k}" value="{v}"/>' for k, v in options.items()
    )
    return f"""      <symbol type="{kind}" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="{layer_class}" enabled="1" locked="0" pass="0">
          <Option type="Map">
{props}
          </Option>
        </layer>
      </symbol>"""


def _line_symbol(name: str, colour: str, width_mm: float) -> str:
    options = {
        "capstyle": "round",
        "joinstyle": "round",
        "line_color": _hex_rgba(colour),
        "line_style": "solid",
        "line_width": f"{width_mm:g}",
        "line_width_unit": "MM",
    }
    return _symbol("line", "SimpleLine", name, options)


def _marker_symbol(name: str, colour: str, size_mm: float) -> str:
    options = {
        "color": _hex_rgba(colour),
        "name": "circle",
        "outline_color": "35,35,35,255",
        "outline_width": "0.2",
        "outline_width_unit": "MM",
        "size": f"{size_mm:g}",
        "size_unit": "MM",
    }
    return _symbol("marker", "SimpleMarker", name, options)


def _vector_qml(renderer: str, geometry: str) -> str:
    layer_geometry = {"line": "1", "point": "0"}[geometry]
    return (
        _header(' hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0"')
        + f"{renderer}\n  <blendMode>0</blendMode>\n  <featureBlendMode>0</featureBlendMode>\n"
        f"  <layerGeometryType>{layer_geometry}</layerGeometryType>\n</qgis>\n"
    )


@dataclass(frozen=True)
class Range:
    """One class of a graduated style: ``lower < value <= upper`` (the first includes lower)."""

    lower: float
    upper: float
    label: str
    colour: str
    size: float


def _graduated_qml(field: str, ranges: list[Range], geometry: str) -> str:
    symbol = _line_symbol if geometry == "line" else _marker_symbol
    range_xml = "\n".join(
        f'      <range lower="{r.lower:g}" upper="{r.upper:g}" symbol="{i}" '
        f'label={quoteattr(r.label)} render="true"/>'
        for i, r in enumerate(ranges)
    )
    symbols = "\n".join(symbol(str(i), r.colour, r.size) for i, r in enumerate(ranges))
    renderer = f"""  <renderer-v2 type="graduatedSymbol" attr={quoteattr(field)} graduatedMethod="GraduatedColor" symbollevels="0" enableorderby="0" forceraster="0">
    <ranges>
{range_xml}
    </ranges>
    <symbols>
{symbols}
    </symbols>
    <mode name="manual"/>
  </renderer-v2>"""
    return _vector_qml(renderer, geometry)


def roads_qml(width_mm: float = 0.6) -> str:
    """Centrelines as solid red lines."""
    renderer = f"""  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
    <symbols>
{_line_symbol("0", ROAD_COLOUR, width_mm)}
    </symbols>
  </renderer-v2>"""
    return _vector_qml(renderer, "line")


def edges_ranges(threshold: float = 0.5) -> list[Range]:
    """Edge classes by mean probability: up to the threshold, then four equal steps to 1."""
    cuts = [threshold + (1.0 - threshold) * i / 4 for i in range(5)]
    ranges = [Range(0.0, threshold, f"< {threshold:.2f}", RAMP[0], 0.3)]
    for i in range(4):
        lo, hi = cuts[i], cuts[i + 1]
        ranges.append(Range(lo, hi, f"{lo:.2f} - {hi:.2f}", RAMP[i + 1], 0.5 + 0.25 * i))
    return ranges


def edges_qml(field: str = "mean_prob", threshold: float = 0.5) -> str:
    """Network edges graduated by mean probability (lighter and thinner = less sure)."""
    return _graduated_qml(field, edges_ranges(threshold), "line")


def _classes_to_ranges(classes: tuple[tuple[float, str, str, float], ...]) -> list[Range]:
    """Graduated classes given by their upper bounds, each starting where the one before ends."""
    lower = 0.0
    ranges = []
    for upper, label, colour, size in classes:
        ranges.append(Range(lower, float(upper), label, colour, size))
        lower = float(upper)
    return ranges


def nodes_ranges() -> list[Range]:
    """Node classes by degree: dead ends (1), through nodes (2), junctions (3+)."""
    return _classes_to_ranges(NODE_CLASSES)


def nodes_qml(field: str = "degree") -> str:
    """Network nodes by degree: dead ends orange, through nodes small, junctions large."""
    return _graduated_qml(field, nodes_ranges(), "point")


def apls_point_ranges() -> list[Range]:
    """Control point classes by the mean path-length difference d of their pairs."""
    return _classes_to_ranges(APLS_POINT_CLASSES)


# ----------------------------------------------------------------------------------- SLD
def _sld_rule(title: str, symbolizer: str, field: str | None, lower: float, upper: float) -> str:
    condition = ""
    if field is not None:
        condition = f"""
        <ogc:Filter xmlns:ogc="http://www.opengis.net/ogc">
          <ogc:And>
            <ogc:PropertyIsGreaterThanOrEqualTo><ogc:PropertyName>{field}</ogc:PropertyName><ogc:Literal>{lower:g}</ogc:Literal></ogc:PropertyIsGreaterThanOrEqualTo>
            <ogc:PropertyIsLessThanOrEqualTo><ogc:PropertyName>{field}</ogc:PropertyName><ogc:Literal>{upper:g}</ogc:Literal></ogc:PropertyIsLessThanOrEqualTo>
          </ogc:And>
        </ogc:Filter>"""
    return f"""      <se:Rule>
        <se:Name>{title}</se:Name>{condition}
        {symbolizer}
      </se:Rule>"""


def _sld_line(colour: str, width_mm: float) -> str:
    width_px = width_mm * 96 / 25.4
    return (
        '<se:LineSymbolizer><se:Stroke><se:SvgParameter name="stroke">'
        f'{colour}</se:SvgParameter><se:SvgParameter name="stroke-width">{width_px:.2f}'
        "</se:SvgParameter></se:Stroke></se:LineSymbolizer>"
    )


def _sld_point(colour: str, size_mm: float) -> str:
    size_px = size_mm * 96 / 25.4
    return (
        "<se:PointSymbolizer><se:Graphic><se:Mark><se:WellKnownName>circle</se:WellKnownName>"
        f'<se:Fill><se:SvgParameter name="fill">{colour}</se:SvgParameter></se:Fill></se:Mark>'
        f"<se:Size>{size_px:.2f}</se:Size></se:Graphic></se:PointSymbolizer>"
    )


def layer_sld(layer: str, rules: list[str]) -> str:
    """An SLD 1.1 document with one feature type style made of ``rules``."""
    body = "\n".join(rules)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:se="http://www.opengis.net/se" xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1.0" xsi:schemaLocation="http://www.opengis.net/sld http://schemas.opengis.net/sld/1.1.0/StyledLayerDescriptor.xsd">
  <NamedLayer>
    <se:Name>{layer}</se:Name>
    <UserStyle>
      <se:Name>{layer}</se:Name>
      <se:FeatureTypeStyle>
{body}
      </se:FeatureTypeStyle>
    </UserStyle>
  </NamedLayer>
</StyledLayerDescriptor>
"""


def _graduated_sld(layer: str, field: str, ranges: list[Range], geometry: str) -> str:
    symbolizer = _sld_line if geometry == "line" else _sld_point
    rules = [
        _sld_rule(r.label, symbolizer(r.colour, r.size), field, r.lower, r.upper) for r in ranges
    ]
    return layer_sld(layer, rules)


# ----------------------------------------------------------------------------- GeoPackage
def _geometry_column(con: sqlite3.Connection, layer: str) -> str:
    row = con.execute(
        "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
    ).fetchone()
    if row is None:
        raise LookupError(f"no vector layer {layer!r} in this GeoPackage")
    return row[0]


def _ensure_layer_styles(con: sqlite3.Connection, stamp: str | None = None) -> None:
    """Create ``layer_styles`` and register it as QGIS 3.22 (through OGR) does: an
    ``attributes`` row in gpkg_contents (no gpkg_extensions entry), GDAL's feature count and
    its triggers, so GDAL lists it as a layer and the GeoPackage stays valid."""
    exists = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'layer_styles'"
    ).fetchone()
    if exists:
        return
    con.execute(LAYER_STYLES_DDL)
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
        "srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', '', "
        "coalesce(?, strftime('%Y-%m-%dT%H:%M:%fZ','now')), 0)",
        (stamp,),
    )
    has_counts = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
    ).fetchone()
    if has_counts:  # GDAL's row count, kept by the triggers GDAL itself creates
        con.execute(
            "INSERT OR REPLACE INTO gpkg_ogr_contents (table_name, feature_count) "
            "VALUES ('layer_styles', 0)"
        )
        for event, sign in (("insert", "+"), ("delete", "-")):
            con.execute(
                f'CREATE TRIGGER "trigger_{event}_feature_count_layer_styles" AFTER '
                f'{event.upper()} ON "layer_styles" BEGIN UPDATE gpkg_ogr_contents SET '
                f"feature_count = feature_count {sign} 1 WHERE lower(table_name) = "
                "lower('layer_styles'); END"
            )


def add_layer_style(
    gpkg: str | Path,
    layer: str,
    qml: str,
    sld: str = "",
    *,
    name: str = STYLE_NAME,
    description: str = "",
    stamp: str | None = None,
) -> None:
    """Store ``qml`` as the default style of ``layer`` in the GeoPackage's ``layer_styles``.

    A style of the same name for the layer is replaced, and it becomes the only default.
    ``stamp`` (an ISO 8601 time) dates it instead of now, for a file written byte for byte
    the same each time. Raises LookupError when the GeoPackage has no such vector layer.
    """
    with contextlib.closing(sqlite3.connect(gpkg)) as con, con:
        column = _geometry_column(con, layer)
        _ensure_layer_styles(con, stamp)
        con.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
        con.execute(
            "DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (layer, name)
        )
        con.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
            "owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL, "
            "coalesce(?, strftime('%Y-%m-%dT%H:%M:%fZ','now')))",
            (layer, column, name, qml, sld, description, stamp),
        )


def add_roads_style(gpkg: str | Path, layer: str = "roads") -> None:
    """Default style of the centreline layer written by ``vectorize_raster``."""
    sld = layer_sld(layer, [_sld_rule("road", _sld_line(ROAD_COLOUR, 0.6), None, 0, 0)])
    add_layer_style(gpkg, layer, roads_qml(), sld, description="road centrelines (roadseg)")


def add_network_styles(
    gpkg: str | Path,
    *,
    threshold: float = 0.5,
    edges: str = "edges",
    nodes: str = "nodes",
    prob_field: str = "mean_prob",
    degree_field: str = "degree",
) -> None:
    """Default styles of a road network's layers: ``edges`` graduated by ``prob_field`` (the
    classes above ``threshold`` darker and wider), ``nodes`` by ``degree_field``."""
    add_layer_style(
        gpkg,
        edges,
        edges_qml(prob_field, threshold),
        _graduated_sld(edges, prob_field, edges_ranges(threshold), "line"),
        description=f"road network edges by {prob_field} (roadseg)",
    )
    add_layer_style(
        gpkg,
        nodes,
        nodes_qml(degree_field),
        _graduated_sld(nodes, degree_field, nodes_ranges(), "point"),
        description=f"road network nodes by {degree_field} (roadseg)",
    )


def add_apls_point_styles(
    gpkg: str | Path, layers: tuple[str, ...], field: str = "mean_d", stamp: str | None = None
) -> None:
    """Default styles of APLS control point layers: green where paths from the point are kept,
    red where it is missing from the other network or its paths are cut off."""
    for layer in layers:
        add_layer_style(
            gpkg,
            layer,
            _graduated_qml(field, apls_point_ranges(), "point"),
            _graduated_sld(layer, field, apls_point_ranges(), "point"),
            description=f"APLS control points by {field} (roadseg)",
            stamp=stamp,
        )
