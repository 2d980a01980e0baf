"""QGIS styles of predict's outputs: the XML itself, the GeoPackage's layer_styles rows, and,
where PyQGIS is installed (Debian's python3-qgis), QGIS loading the outputs headless."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from shapely.geometry import LineString, Point

from pipeline.stitching import NODATA_UINT8, UINT8_SCALE
from pipeline.styles import (
    add_network_styles,
    probability_qml,
    style_path,
    write_probability_style,
)
from pipeline.vectorize import vectorize_raster

THRESHOLD = 0.37
QGIS_PYTHON = "/usr/bin/python3"  # PyQGIS is built for the system Python, not for our venv
# raw uint8 values of the test raster's first row: 0, below, at, above threshold, certain, nodata
ROW = [0, 80, round(THRESHOLD * 254), 200, 254, NODATA_UINT8]


def probability_cog(path: Path) -> Path:
    """A uint8 probability raster as predict writes it (p = value / 254, 255 nodata) with a
    thick road along row 32 and the test values in row 0."""
    data = np.zeros((64, 64), np.uint8)
    data[29:36, 4:60] = 254
    data[0, : len(ROW)] = ROW
    profile = dict(
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint8",
        crs="EPSG:32632",
        transform=Affine(1.0, 0, 500000.0, 0, -1.0, 5400000.0),
        nodata=NODATA_UINT8,
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
        ds.scales = (UINT8_SCALE,)
    return path


def layer_styles(gpkg: Path) -> dict[str, tuple]:
    with sqlite3.connect(gpkg) as con:
        rows = con.execute(
            "SELECT f_table_name, f_geometry_column, styleName, styleQML, styleSLD, useAsDefault "
            "FROM layer_styles"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def network_gpkg(path: Path) -> Path:
    edges = [LineString([(0, 0), (10, 10)]), LineString([(10, 10), (20, 0)])]
    gpd.GeoDataFrame({"mean_prob": [0.3, 0.9]}, geometry=edges, crs=32632).to_file(
        path, layer="edges", driver="GPKG"
    )
    nodes = [Point(0, 0), Point(10, 10), Point(20, 0)]
    gpd.GeoDataFrame({"degree": [1, 3, 1]}, geometry=nodes, crs=32632).to_file(
        path, layer="nodes", driver="GPKG"
    )
    return path


# ------------------------------------------------------------------------------------ XML
def test_probability_qml_hides_below_threshold_and_nodata() -> None:
    root = ET.fromstring(probability_qml(THRESHOLD).split("\n", 1)[1])  # after the DOCTYPE
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "1"
    assert renderer.get("nodataColor") == ""  # nodata drawn transparent
    shader = renderer.find("rastershader/colorrampshader")
    # values outside [threshold, 1] are not drawn at all: transparent below the threshold
    assert shader.get("clip") == "1"
    assert float(shader.get("minimumValue")) == pytest.approx(THRESHOLD)
    assert float(shader.get("maximumValue")) == 1.0
    items = shader.findall("item")
    values = [float(i.get("value")) for i in items]
    assert values[0] == pytest.approx(THRESHOLD) and values[-1] == 1.0
    assert values == sorted(values) and all(i.get("alpha") == "255" for i in items)
    assert len({i.get("color") for i in items}) == len(items)  # a ramp, not one colour


def test_threshold_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        probability_qml(1.0)


def test_style_is_written_beside_the_raster_and_not_overwritten(tmp_path) -> None:
    tif = probability_cog(tmp_path / "r_roads.tif")
    qml = write_probability_style(tif, THRESHOLD)
    assert qml == style_path(tif) == tmp_path / "r_roads.qml"
    ET.fromstring(qml.read_text().split("\n", 1)[1])
    with pytest.raises(FileExistsError, match="r_roads.qml"):
        write_probability_style(tif, 0.5)
    write_probability_style(tif, 0.5, overwrite=True)
    assert 'minimumValue="0.5"' in qml.read_text()


# ------------------------------------------------------------------------------ GeoPackage
def test_centrelines_carry_their_default_style(tmp_path) -> None:
    tif = probability_cog(tmp_path / "r_roads.tif")
    gpkg = vectorize_raster(tif, tmp_path / "r_roads.gpkg", threshold=THRESHOLD)
    styles = layer_styles(gpkg)
    column, name, qml, sld, default = styles["roads"]
    assert (column, name, default) == ("geom", "roadseg", 1)
    renderer = ET.fromstring(qml.split("\n", 1)[1]).find("renderer-v2")
    assert renderer.get("type") == "singleSymbol"
    ET.fromstring(sld.encode())  # valid SLD as well
    # the GeoPackage stays valid for GDAL: the roads layer, and layer_styles as a table
    layers = dict(pyogrio.list_layers(gpkg))
    assert layers["roads"] == "LineString" and "layer_styles" in layers
    assert len(gpd.read_file(gpkg, layer="roads")) > 0
    assert len(pyogrio.read_dataframe(gpkg, layer="layer_styles")) == 1
    with sqlite3.connect(gpkg) as con:
        kind = con.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
    assert kind == ("attributes",)


def test_network_styles_grade_edges_by_probability_and_nodes_by_degree(tmp_path) -> None:
    gpkg = network_gpkg(tmp_path / "net.gpkg")
    add_network_styles(gpkg, threshold=THRESHOLD)
    add_network_styles(gpkg, threshold=THRESHOLD)  # again: replaced, not duplicated
    styles = layer_styles(gpkg)
    assert set(styles) == {"edges", "nodes"}
    assert len(pyogrio.read_dataframe(gpkg, layer="layer_styles")) == 2
    edges = ET.fromstring(styles["edges"][2].split("\n", 1)[1]).find("renderer-v2")
    assert edges.get("type") == "graduatedSymbol" and edges.get("attr") == "mean_prob"
    lowers = [float(r.get("lower")) for r in edges.find("ranges")]
    assert THRESHOLD in lowers  # a class starts at the model's threshold
    nodes = ET.fromstring(styles["nodes"][2].split("\n", 1)[1]).find("renderer-v2")
    assert nodes.get("attr") == "degree" and len(nodes.find("ranges")) == 3


def test_a_missing_layer_is_named(tmp_path) -> None:
    gpkg = network_gpkg(tmp_path / "net.gpkg")
    with pytest.raises(LookupError, match="'links'"):
        add_network_styles(gpkg, edges="links")


# ---------------------------------------------------------------------------- real QGIS
def _has_pyqgis() -> bool:
    if not Path(QGIS_PYTHON).exists():
        return False
    done = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True)
    return done.returncode == 0


QGIS_SCRIPT = r"""
import json, sys
from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
tif, gpkg, net = sys.argv[1:4]
raster = QgsRasterLayer(tif, "prob")
renderer = raster.renderer()
shader = renderer.shader().rasterShaderFunction()
block = raster.dataProvider().block(1, raster.extent(), 64, 64)
image = renderer.block(1, raster.extent(), 64, 64).image()
out = {
    "raster": {
        "valid": raster.isValid(),
        "renderer": renderer.type(),
        "minimum": shader.minimumValue(),
        "values": [block.value(0, c) for c in range(6)],
        "alpha": [image.pixelColor(c, 0).alpha() for c in range(6)],
    }
}
for uri, name in ((gpkg, "roads"), (net, "edges"), (net, "nodes")):
    layer = QgsVectorLayer(f"{uri}|layername={name}", name, "ogr")
    r = layer.renderer()
    out[name] = {
        "valid": layer.isValid(),
        "renderer": r.type(),
        "attr": r.classAttribute() if hasattr(r, "classAttribute") else "",
        "lowers": [x.lowerValue() for x in r.ranges()] if hasattr(r, "ranges") else [],
        "colour": r.symbol().color().name() if hasattr(r, "symbol") else "",
    }
print("RESULT " + json.dumps(out))
app.exitQgis()
"""


@pytest.mark.skipif(not _has_pyqgis(), reason=f"PyQGIS not importable by {QGIS_PYTHON}")
def test_qgis_opens_the_outputs_styled(tmp_path) -> None:
    tif = probability_cog(tmp_path / "r_roads.tif")
    write_probability_style(tif, THRESHOLD)
    gpkg = vectorize_raster(tif, tmp_path / "r_roads.gpkg", threshold=THRESHOLD)
    net = network_gpkg(tmp_path / "net.gpkg")
    add_network_styles(net, threshold=THRESHOLD)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path))
    done = subprocess.run(
        [QGIS_PYTHON, "-c", QGIS_SCRIPT, str(tif), str(gpkg), str(net)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    line = [s for s in done.stdout.splitlines() if s.startswith("RESULT ")]
    assert line, done.stdout + done.stderr
    got = json.loads(line[0][len("RESULT ") :])
    raster = got["raster"]
    assert raster["valid"] and raster["renderer"] == "singlebandpseudocolor"
    # QGIS applies the band scale: the renderer sees probabilities, nodata stays nodata
    assert raster["values"][:5] == pytest.approx([v / 254 for v in ROW[:5]], abs=1e-6)
    assert raster["minimum"] == pytest.approx(THRESHOLD)
    # drawn: 0 and below threshold transparent, at/above opaque, nodata transparent
    assert raster["alpha"] == [0, 0, 255, 255, 255, 0]
    assert got["roads"]["valid"] and got["roads"]["renderer"] == "singleSymbol"
    assert got["roads"]["colour"] == "#e31a1c"
    assert got["edges"]["renderer"] == "graduatedSymbol" and got["edges"]["attr"] == "mean_prob"
    assert THRESHOLD in got["edges"]["lowers"]
    assert got["nodes"]["renderer"] == "graduatedSymbol" and got["nodes"]["attr"] == "degree"
