"""STAC in and out, and rasters over HTTP: `pipeline predict` reads a STAC Item's image asset
from a local HTTP server with range requests, window by window, and writes a STAC Item of its
prediction."""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pyproj
import pystac
import pytest
import rasterio
from affine import Affine

from pipeline import raster, sources
from pipeline.cli import main
from pipeline.predict import default_output_path
from tests.helpers import BANDS, CRS, make_model

ORIGIN = (500000.0, 5400000.0)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP range requests (``bytes=a-b``), as object stores serve them;
    records (path, range header, bytes sent) of every GET."""

    log: list[tuple[str, str | None, int]]

    def log_message(self, *args) -> None:  # quiet
        pass

    def send_error(self, code, message=None, explain=None) -> None:
        self.send_response(code, message)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        wanted = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
        start, end = (int(m[1]), min(int(m[2] or size - 1), size - 1)) if m else (0, size - 1)
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        self.send_response(206 if m else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data)))
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self.wfile.write(data)
        self.log.append((self.path, wanted, len(data)))


@pytest.fixture
def server(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving ``tmp_path / "www"``; yields (url, log)."""
    root = tmp_path / "www"
    root.mkdir()
    log: list[tuple[str, str | None, int]] = []
    handler = type("Handler", (RangeHandler,), {"log": log})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", log, root
    finally:
        httpd.shutdown()
        httpd.server_close()


def write_cog(path: Path, height: int = 256, width: int = 384) -> Path:
    """Noise in 1..255 (incompressible, so the file is as big as its pixels), 128 px tiles,
    overviews at 1/2 and 1/4 (a third of the file, which predict never needs)."""
    data = np.random.default_rng(0).integers(1, 255, (4, height, width), dtype=np.uint8)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=4,
        dtype="uint8",
        crs=CRS,
        transform=Affine(0.5, 0, ORIGIN[0], 0, -0.5, ORIGIN[1]),
        nodata=0,
        tiled=True,
        blockxsize=128,
        blockysize=128,
        photometric="MINISBLACK",  # 4 bands, none of them alpha
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.descriptions = tuple(BANDS)
        ds.build_overviews([2, 4])
    return path


def input_item(url: str, asset_href: str) -> dict:
    item = pystac.Item(
        id="scene-2026-11-30",
        geometry={"type": "Point", "coordinates": [9.0, 48.7]},
        bbox=[9.0, 48.7, 9.0, 48.7],
        datetime=pystac.utils.str_to_datetime("2026-11-30T10:20:00Z"),
        properties={},
    )
    item.add_asset(
        "thumbnail", pystac.Asset("thumb.png", media_type="image/png", roles=["thumbnail"])
    )
    item.add_asset(
        "visual", pystac.Asset(asset_href, media_type=pystac.MediaType.COG, roles=["data"])
    )
    item.set_self_href(f"{url}/item.json")
    return item.to_dict()


# ------------------------------------------------------------------------------ unit level
def test_gdal_paths_stay_strings_and_urls_become_vsicurl() -> None:
    url = "https://example.org/imagery/north.tif"
    assert sources.gdal_name(url) == f"/vsicurl/{url}"
    assert sources.gdal_name(f"/vsicurl/{url}") == f"/vsicurl/{url}"  # "//" kept
    assert sources.gdal_name("data/a.tif") == Path("data/a.tif")
    assert sources.display_name(f"/vsicurl/{url}") == "north.tif"
    assert default_output_path(f"/vsicurl/{url}") == Path("north_roads.tif")
    assert default_output_path("/data/region.tif") == Path("/data/region_roads.tif")


def test_stac_asset_choice(tmp_path) -> None:
    item = input_item("file://" + str(tmp_path), "scene.tif")
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    src = sources.resolve_input(path)
    assert src.path == Path(tmp_path / "scene.tif") and src.stem == "scene-2026-11-30"
    assert sources.resolve_input(path, "thumbnail").path == Path(tmp_path / "thumb.png")
    with pytest.raises(LookupError, match="no asset 'nir'.*thumbnail, visual"):
        sources.resolve_input(path, "nir")
    del item["assets"]["visual"]
    path.write_text(json.dumps(item))
    with pytest.raises(LookupError, match="--asset"):
        sources.resolve_input(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        sources.resolve_input(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_predict_a_stac_item_over_http_by_windows_and_write_its_item(
    server, tmp_path, monkeypatch, capsys
) -> None:
    url, log, root = server
    cog = write_cog(root / "scene.tif")
    (root / "item.json").write_text(json.dumps(input_item(url, "scene.tif")))
    # GDAL's HTTP reader answers as it would from an object store
    info = raster.raster_info(f"/vsicurl/{url}/scene.tif")
    assert (info.width, info.height, info.count) == (384, 256, 4)
    model = make_model(tmp_path / "unet")
    monkeypatch.chdir(tmp_path)  # no params.yaml: defaults; outputs named by the item id
    log.clear()
    argv = ["predict", f"{url}/item.json", "--model", str(model), "--window", "64"]
    argv += ["--overlap", "16", "--workers", "1", "-q", "--vectors", "roads.gpkg"]
    argv += ["--stac-item", "out/item.json"]
    os.makedirs("out")
    assert main(argv) == 0, capsys.readouterr().err
    prob = tmp_path / "scene-2026-11-30_roads.tif"
    assert prob.exists()

    # windows read by range requests, none of them the whole file, and less than the file in
    # all: the overviews, which predict does not need, were never downloaded
    reads = [(rng, n) for path, rng, n in log if path == "/scene.tif"]
    size = cog.stat().st_size
    assert reads and all(rng is not None for rng, _ in reads)
    assert max(n for _, n in reads) < size / 2
    assert sum(n for _, n in reads) < size

    item = pystac.Item.from_file(str(tmp_path / "out/item.json"))
    assert item.id == "scene-2026-11-30_roads"
    assert item.datetime.isoformat() == "2026-11-30T10:20:00+00:00"  # the imagery's
    assert item.properties["proj:code"] == "EPSG:32632"
    assert item.properties["proj:shape"] == [256, 384]
    to_lonlat = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon0, lat0 = to_lonlat.transform(*ORIGIN)
    assert item.bbox[0] == pytest.approx(lon0, abs=1e-6)
    assert item.bbox[3] == pytest.approx(lat0, abs=1e-6)
    assert item.properties["roadseg:threshold"] == 0.5
    assert (item.properties["roadseg:window"], item.properties["roadseg:overlap"]) == (64, 16)
    assert item.properties["roadseg:model"] == str(model)
    assets = item.assets
    assert Path(assets["probability"].get_absolute_href()) == prob
    assert assets["probability"].extra_fields["raster:bands"][0]["scale"] == pytest.approx(1 / 254)
    assert Path(assets["centrelines"].get_absolute_href()) == tmp_path / "roads.gpkg"
    assert Path(assets["qgis_style"].get_absolute_href()).exists()
    derived = [link.href for link in item.links if link.rel == "derived_from"]
    assert derived == [f"{url}/item.json"]


def test_an_unreachable_remote_raster_is_one_clear_error(
    server, tmp_path, capsys, monkeypatch
) -> None:
    url, _, _ = server
    monkeypatch.chdir(tmp_path)
    code = main(["predict", f"/vsicurl/{url}/absent.tif", "--model", str(tmp_path), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "absent.tif" in err and "Traceback" not in err


def test_a_stac_item_of_a_raster_without_crs_is_refused_before_any_work(tmp_path) -> None:
    from pipeline.config import PredictOptions
    from pipeline.predict import predict_raster
    from tests.helpers import smooth_image, write_raster

    img = write_raster(tmp_path / "nocrs.tif", smooth_image(64, 64).astype(np.uint8), crs=None)
    with pytest.raises(raster.RasterError, match="no CRS, so no STAC Item"):
        predict_raster(
            img, tmp_path / "o.tif", PredictOptions(model=tmp_path), stac_item=tmp_path / "o.json"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nocrs.tif"]
