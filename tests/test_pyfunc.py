"""The MLflow pyfunc model (``pipeline/pyfunc.py``): what a user of
``mlflow.pyfunc.load_model(...).predict(array)`` gets. Loading through a real MLflow store is
covered by test_register.py; here the same class is loaded from a real model folder."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.predict import PredictOptions, predict_raster
from pipeline.pyfunc import RoadUNetPyfunc
from tests.helpers import make_model, smooth_image, write_raster


def _loaded(model_dir: Path) -> RoadUNetPyfunc:
    model = RoadUNetPyfunc()
    model.load_context(types.SimpleNamespace(artifacts={"model_dir": str(model_dir)}))
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "unet")


@pytest.fixture(scope="module")
def pyfunc(model_dir) -> RoadUNetPyfunc:
    return _loaded(model_dir)


def test_any_height_and_width_gives_one_probability_per_pixel(pyfunc) -> None:
    rng = np.random.default_rng(0)
    for shape in [(2, 4, 64, 64), (1, 4, 50, 70), (1, 4, 20, 20)]:
        y = pyfunc.predict(None, (rng.random(shape) * 255).astype(np.float32))
        assert y.shape == (shape[0], 1, *shape[2:]) and y.dtype == np.float32
        assert 0 <= y.min() <= y.max() <= 1
    one = (rng.random((4, 40, 33)) * 255).astype(np.float32)
    assert pyfunc.predict(None, one).shape == (1, 1, 40, 33)
    with pytest.raises(ValueError, match="3 bands, the model expects 4"):
        pyfunc.predict(None, one[:3])


def test_pyfunc_predicts_what_pipeline_predict_writes(
    pyfunc, model_dir, scheduler, tmp_path
) -> None:
    """One 64 px window: the same normalisation and forward pass as ``pipeline predict``."""
    image = smooth_image(64, 64).astype(np.uint8)
    path = write_raster(tmp_path / "in.tif", image)
    options = PredictOptions(
        model=model_dir,
        window=64,
        overlap=16,
        dtype="float32",
        scheduler=scheduler,
        progress=False,
    )
    out = predict_raster(path, tmp_path / "out.tif", options).output
    with rasterio.open(out) as ds:
        written = ds.read(1)
    got = pyfunc.predict(None, image.astype(np.float32)[None])[0, 0]
    assert np.abs(got - written).max() < 1e-5


def test_a_percentile_model_stretches_each_input_by_its_own_band_range(tmp_path) -> None:
    percentile = make_model(
        tmp_path / "unet", mean=[0.5] * 4, std=[0.3] * 4, normalisation="percentile"
    )
    pyfunc = _loaded(percentile)
    x = smooth_image(64, 64).astype(np.float32)[None]
    y = pyfunc.predict(None, x)
    assert y.shape == (1, 1, 64, 64) and np.isfinite(y).all()
    # brighter, higher-contrast imagery of the same scene: the same road probabilities
    assert np.abs(pyfunc.predict(None, 3 * x + 200) - y).max() < 1e-4
