"""`pipeline export`: a model to ONNX with Deepness metadata, equal to torch on the same windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline import raster
from pipeline.cli import main
from pipeline.export import INPUT_NAME, OPSET, export_onnx
from pipeline.inference import forward_probs
from pipeline.model import load_model
from pipeline.normalise import standardise
from pipeline.windows import WindowGrid
from tests.helpers import make_model, smooth_image, write_raster


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = make_model(tmp_path_factory.mktemp("model") / "unet", seed=3)
    config = json.loads((folder / "model.json").read_text())
    config.update(gsd_m=0.5, threshold=0.42)
    (folder / "model.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def onnx_path(model_dir, tmp_path_factory) -> Path:
    return export_onnx(model_dir, tmp_path_factory.mktemp("onnx") / "roads.onnx")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    img = smooth_image(160, 224).astype(np.uint8)
    img[:, :20, :30] = 0  # a nodata corner
    return write_raster(tmp_path_factory.mktemp("img") / "img.tif", img, nodata=0)


def metadata(path: Path) -> dict:
    proto = onnx.load(str(path))
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def test_onnx_carries_the_metadata_deepness_reads(onnx_path, model_dir) -> None:
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == OPSET
    meta = metadata(onnx_path)
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "road"}
    assert meta["resolution"] == 50.0  # cm per pixel, from gsd_m 0.5
    assert meta["tiles_size"] == meta["tile_size"] == 512
    assert meta["tiles_overlap"] == 12  # 64 px of 512, in percent
    assert meta["seg_thresh"] == 0.42
    # Deepness divides by 255, then standardises: the same numbers as predict's normalisation
    x = np.array([0.0, 17.0, 130.0, 255.0], np.float32)
    config = json.loads((model_dir / "model.json").read_text())
    for band, (m, s) in enumerate(zip(config["mean"], config["std"], strict=True)):
        deepness = (x / 255 - meta["standardization_mean"][band]) / meta["standardization_std"][
            band
        ]
        assert np.allclose(deepness, (x - m) / s, atol=1e-5)
    # batch, height and width are dynamic: one symbol for both sides, as Deepness wants
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 4, "size", "size"]


def test_onnxruntime_equals_torch_on_the_same_windows(onnx_path, model_dir, image) -> None:
    """Real windows of a raster, normalised as predict does (nodata zeroed), including the
    cropped windows of the last row and column (not square)."""
    config = json.loads((model_dir / "model.json").read_text())
    mean, std = (np.asarray(config[k], np.float32) for k in ("mean", "std"))
    grid = WindowGrid(160, 224, 64, 16)
    rows, cols = grid.shape
    windows = []
    with raster.open_reader(image) as reader:
        for i, j in [(0, 0), (1, 2), (0, cols - 1), (rows - 1, cols - 1)]:
            rect = grid.rect(i, j)
            data, valid = raster.read_window(
                reader, rect.col_off, rect.row_off, rect.width, rect.height
            )
            windows.append(standardise(data, mean, std, valid))
    assert any(w.shape[1] != w.shape[2] for w in windows)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model, _ = load_model(model_dir, torch.device("cpu"))
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for w in windows:
        by_shape.setdefault(w.shape, []).append(w)
    for batch in by_shape.values():
        x = np.stack(batch)
        got = session.run(None, {INPUT_NAME: x})[0][:, 0]
        want = forward_probs(model, torch.from_numpy(x), torch.device("cpu"))
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_export_command_from_a_registered_model(model_dir, tmp_path, capsys, monkeypatch) -> None:
    """In a folder without params.yaml: the default store (sqlite:///mlflow.db) and defaults."""
    from pipeline import registry

    monkeypatch.chdir(tmp_path)
    store = "sqlite:///mlflow.db"
    with registry.tracked_run("export-test", "train", tracking_default=store):
        uri = registry.log_pyfunc_model(model_dir, np.zeros((1, 4, 64, 64), np.float32))
        version = registry.register_version(uri, "road-unet", {})
    registry.set_alias("road-unet", "champion", version)
    out = tmp_path / "champion.onnx"
    argv = ["export", "models:/road-unet@champion", "-o", str(out), "--tile-size", "256"]
    argv += ["--overlap", "32", "-q"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    meta = metadata(out)
    assert meta["source_model"] == "models:/road-unet@champion"
    assert (meta["tiles_size"], meta["tiles_overlap"]) == (256, 12)
    # an existing file is kept unless --overwrite
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--tile-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
