"""The fault catalogue: bad input and faults against the real CLI, one test per row of
docs/faults.md. Each asserts the exit code, the message and what is left on disk.

Rasters are tiny real GeoTIFFs, models tiny real U-Nets, clusters real Dask clusters (one
2-worker LocalCluster shared by the module, given as ``--scheduler``), the registry a real
MLflow SQLite store. Tests that need a full or read-only file system mount a small tmpfs in a
private mount namespace (``unshare``) and are skipped where that is not allowed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.control import GroundControlPoint

from pipeline import parallel
from pipeline.cli import main
from pipeline.model import ModelConfig, build_unet, save_model
from pipeline.model_config import CONFIG_FILE, WEIGHTS_FILE
from tests.test_predict import BANDS, MEAN, STD, make_model, smooth_image, write_raster

PIPELINE = [sys.executable, "-m", "pipeline.cli"]


# ----------------------------------------------------------------------------------- helpers
def leftovers(folder: Path) -> list[str]:
    """Hidden files (temporaries, locks) in ``folder``: a clean run leaves none."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def predict_args(image: Path, out: Path, model: Path, scheduler: str | None, *extra: str) -> list:
    args = ["predict", str(image), "-o", str(out), "--model", str(model), "-q"]
    args += ["--window", "64", "--overlap", "16"]
    return args + (["--scheduler", scheduler] if scheduler else []) + list(extra)


def run_cli(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        PIPELINE + args, capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


def drop_checksum(model: Path) -> None:
    """Make ``model`` look like one saved before weights checksums existed."""
    cfg = json.loads((model / CONFIG_FILE).read_text())
    cfg.pop("weights_sha256")
    (model / CONFIG_FILE).write_text(json.dumps(cfg))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def scheduler() -> str:
    with parallel.local_cluster(2, "cpu") as client:
        yield client.scheduler.address


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "unet")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "in.tif", smooth_image(96, 128).astype(np.uint8), nodata=0)


# ------------------------------------------------------------- wrong output, silently
def test_corrupt_weights_fail_their_checksum(image, model, scheduler, tmp_path, capsys):
    weights = model / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one data byte; the header is intact
    weights.write_bytes(bytes(data))
    out = tmp_path / "out.tif"
    assert main(predict_args(image, out, model, scheduler)) == 2
    err = capsys.readouterr().err
    assert f"{weights}: checksum differs" in err and "download the model again" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_model_saved_without_a_checksum_still_loads(image, model, scheduler, tmp_path):
    drop_checksum(model)
    out = tmp_path / "out.tif"
    assert main(predict_args(image, out, model, scheduler)) == 0
    assert out.exists() and leftovers(tmp_path) == []


def test_non_finite_probabilities_stop_the_run(image, scheduler, tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", bands=BANDS, mean=MEAN, std=STD, chip_size=64)
    net = build_unet(cfg)
    with torch.no_grad():
        net.segmentation_head[0].bias.fill_(float("nan"))  # a diverged training run
    model = save_model(net, cfg, tmp_path / "nan-model")  # its checksum is valid
    out = tmp_path / "out.tif"
    assert main(predict_args(image, out, model, scheduler)) == 2
    err = capsys.readouterr().err
    assert "non-finite probabilities" in err and str(model.resolve()) in err
    assert err.count("\n") == 1  # one line, no traceback
    assert not out.exists() and leftovers(tmp_path) == []


def test_gcp_georeferenced_input_keeps_its_gcps(model, scheduler, tmp_path, recwarn):
    img = tmp_path / "gcp.tif"
    gcps = [
        GroundControlPoint(row, col, 500000.0 + col * 0.5, 5400000.0 - row * 0.5)
        for row, col in [(0, 0), (0, 127), (95, 0), (95, 127)]
    ]
    data = smooth_image(96, 128).astype(np.uint8)
    with rasterio.open(
        img, "w", driver="GTiff", width=128, height=96, count=4, dtype="uint8",
        gcps=gcps, crs="EPSG:32632", photometric="MINISBLACK",
    ) as ds:  # fmt: skip
        ds.write(data)
    out = tmp_path / "out.tif"
    assert main(predict_args(img, out, model, scheduler)) == 0
    with rasterio.open(out) as ds:
        out_gcps, out_crs = ds.gcps
    assert out_crs == "EPSG:32632"
    assert [(g.row, g.col, g.x, g.y) for g in out_gcps] == [(g.row, g.col, g.x, g.y) for g in gcps]
    assert not [w for w in recwarn if "no CRS" in str(w.message)]


def test_raster_without_any_georeferencing_still_warns_no_crs(model, scheduler, tmp_path):
    img = write_raster(tmp_path / "plain.tif", smooth_image(64, 64).astype(np.uint8), crs=None)
    with pytest.warns(UserWarning, match="no CRS"):
        assert main(predict_args(img, tmp_path / "o.tif", model, scheduler)) == 0


# -------------------------------------------------- raw tracebacks -> one sentence, exit 2
def test_truncated_weights_are_named(image, model, scheduler, tmp_path, capsys):
    drop_checksum(model)  # the header check alone must catch it
    weights = model / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:5000])
    out = tmp_path / "out.tif"
    assert main(predict_args(image, out, model, scheduler)) == 2
    err = capsys.readouterr().err
    assert f"{weights}: not a readable safetensors file" in err and err.count("\n") == 1
    assert not out.exists()


def test_weights_with_a_bad_header_are_named(image, model, scheduler, tmp_path, capsys):
    drop_checksum(model)
    weights = model / WEIGHTS_FILE
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\0" * 64)
    assert main(predict_args(image, tmp_path / "out.tif", model, scheduler)) == 2
    assert f"{weights}: not a readable safetensors file" in capsys.readouterr().err


def test_weights_of_another_band_count_are_refused(image, tmp_path, scheduler, capsys):
    three = ModelConfig(
        encoder="resnet18", bands=BANDS[:3], mean=MEAN[:3], std=STD[:3], chip_size=64
    )
    model = save_model(build_unet(three), three, tmp_path / "m")
    four = ModelConfig(encoder="resnet18", bands=BANDS, mean=MEAN, std=STD, chip_size=64)
    (model / CONFIG_FILE).write_text(four.model_dump_json())  # model.json of another model
    out = tmp_path / "out.tif"
    assert main(predict_args(image, out, model, scheduler)) == 2
    err = capsys.readouterr().err
    assert f"{model / WEIGHTS_FILE}: weights do not fit" in err and "4 bands" in err
    assert err.count("\n") == 1 and not out.exists()


def test_model_json_that_is_not_json_is_named(image, model, tmp_path, capsys):
    (model / CONFIG_FILE).write_text("{ this is not json")
    assert main(predict_args(image, tmp_path / "out.tif", model, None)) == 2
    err = capsys.readouterr().err
    assert f"{model / CONFIG_FILE}: not JSON" in err


def test_mean_std_lengths_must_match_the_bands(image, model, tmp_path, capsys):
    cfg = json.loads((model / CONFIG_FILE).read_text())
    cfg["mean"] = cfg["mean"][:3]
    (model / CONFIG_FILE).write_text(json.dumps(cfg))
    assert main(predict_args(image, tmp_path / "out.tif", model, None)) == 2
    err = capsys.readouterr().err
    assert f"{model / CONFIG_FILE}: not a valid model config" in err
    assert "mean has 3 value(s) but bands lists 4" in err
    with pytest.raises(ValueError, match="std must be positive"):
        ModelConfig(encoder="resnet18", bands=["a"], mean=[0.0], std=[0.0], chip_size=64)
