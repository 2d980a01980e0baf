"""predict_raster end to end on tiny real GeoTIFFs, a real U-Net and real Dask clusters.

The session's 2-worker LocalCluster (conftest's ``scheduler``) runs most of them; the tests
that are about worker counts or a cluster's own start and stop start their own clusters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from pipeline import inference, parallel
from pipeline.config import PredictOptions
from pipeline.predict import default_output_path, predict_raster
from pipeline.raster import RasterError
from pipeline.windows import WindowGrid
from tests.helpers import CRS, MEAN, STD, TRANSFORM, make_model, read, smooth_image, write_raster


# ----------------------------------------------------------------------------------- helpers
def valid_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.dataset_mask() > 0


def seam_ratio(p: np.ndarray, positions: list[int], axis: int) -> float:
    """Largest jump across the given pixel boundaries, relative to the jumps around them.

    ``positions`` are indices k of boundaries between pixel k-1 and k along ``axis``.
    """
    profile = p.astype(np.float64).mean(axis=1 - axis)  # pixel noise averages out, a seam not
    d = np.abs(np.diff(profile))
    worst = 0.0
    for k in positions:
        j = k - 1  # d[j] = |p[k] - p[k-1]|
        around = np.r_[d[max(0, j - 6) : j - 1], d[j + 2 : j + 7]]
        worst = max(worst, d[j] / np.median(around))
    return worst


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "unet")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320 x 448 uint8, nodata 0 over a wedge and a fully empty strip on the left."""
    img = smooth_image(320, 448).astype(np.uint8)
    yy, xx = np.mgrid[0:320, 0:448]
    img[:, (xx < 90) | (yy > 2 * xx + 150)] = 0
    return write_raster(
        tmp_path_factory.mktemp("scene") / "scene.tif",
        img,
        nodata=0,
        tiled=True,
        blockxsize=64,
        blockysize=64,
        compress="deflate",
    )


# --------------------------------------------------------------------------------- the tests
def test_output_is_a_cog_on_the_input_grid_with_exact_nodata(
    scene, model_dir, scheduler, tmp_path
) -> None:
    out = tmp_path / "scene_roads.tif"
    res = predict_raster(
        scene,
        out,
        PredictOptions(
            model=model_dir,
            window=64,
            overlap=16,
            scheduler=scheduler,
            block_size=256,
            progress=False,
        ),
    )
    assert res.output == out and out.exists() and res.vectors is None
    values, prof = read(out)
    with rasterio.open(scene) as src:
        assert (prof["crs"], prof["transform"], prof["width"], prof["height"]) == (
            src.crs,
            src.transform,
            src.width,
            src.height,
        )
    assert prof["dtype"] == "uint8" and prof["nodata"] == 255
    invalid = ~valid_mask(scene)
    assert ((values == 255) == invalid).all()  # nodata exactly where the input is
    assert values[~invalid].max() <= 254
    assert prof["scales"] == pytest.approx((1 / 254,))
    assert prof["descriptions"] == ("road_probability",)
    assert prof["tags"]["model"] == str(model_dir) and prof["tags"]["threshold"] == "0.5"
    assert prof["tags"]["scale"] == "1/254"
    assert prof["compress"] == "deflate" and prof["tiled"]
    assert prof["overviews"]  # a COG with overviews
    is_valid, errors, _warnings = cog_validate(str(out))
    assert is_valid and not errors
    # windows lying wholly in the empty strip were skipped, the others ran
    grid = WindowGrid(320, 448, 64, 16)
    rects = [grid.rect(i, j) for i, j in grid.indices()]
    empty = sum(1 for r in rects if invalid[r.row_off : r.row_end, r.col_off : r.col_end].all())
    assert empty > 0 and res.windows_skipped == empty
    assert res.windows_run + res.windows_skipped == len(rects)
    assert res.mpix_per_s > 0
    t = res.timings  # where the time went, for the benchmark's breakdown
    assert {
        "cluster_start",
        "model_load",
        "windows",
        "cog_finalize",
        "cluster_stop",
        "read",
        "model",
        "blend",
    } <= set(t)
    assert t["model"] > 0 and all(v >= 0 for v in t.values())
    assert t["cluster_start"] + t["windows"] + t["cog_finalize"] <= res.seconds
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp files gone


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_float32_output_matches_uint8_and_honours_nodata(
    scene, model_dir, scheduler, tmp_path
) -> None:
    u8 = predict_raster(
        scene,
        tmp_path / "u8.tif",
        PredictOptions(model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False),
    ).output
    f32 = predict_raster(
        scene,
        tmp_path / "f32.tif",
        PredictOptions(
            model=model_dir,
            window=64,
            overlap=16,
            scheduler=scheduler,
            dtype="float32",
            progress=False,
        ),
    ).output
    q, _ = read(u8)
    p, prof = read(f32)
    assert prof["dtype"] == "float32" and np.isnan(prof["nodata"])
    invalid = ~valid_mask(scene)
    assert (np.isnan(p) == invalid).all()
    assert np.nanmin(p) >= 0 and np.nanmax(p) <= 1
    assert np.abs(np.rint(p[~invalid] * 254) - q[~invalid]).max() <= 1
    assert np.nanstd(p) > 1e-3  # a real, varying prediction


def test_precision_is_recorded_and_checked(scene, model_dir, scheduler, tmp_path) -> None:
    kw = dict(model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False)
    options = {p: PredictOptions(**kw, dtype="float32", precision=p) for p in ("fp32", "bf16")}
    fp32 = predict_raster(scene, tmp_path / "fp32.tif", options["fp32"]).output
    bf16 = predict_raster(scene, tmp_path / "bf16.tif", options["bf16"]).output
    p32, prof = read(fp32)
    p16, prof16 = read(bf16)
    assert prof["tags"]["precision"] == "fp32" and prof16["tags"]["precision"] == "bf16"
    valid = ~np.isnan(p32)
    assert (np.isnan(p16) == ~valid).all()
    assert np.abs(p16[valid] - p32[valid]).max() < 0.1  # the same model, at lower precision
    with pytest.raises(ValueError, match="precision"):
        predict_raster(
            scene,
            tmp_path / "x.tif",
            PredictOptions(model=model_dir, precision="fp8", progress=False),
        )
    assert not (tmp_path / "x.tif").exists()


def test_pixels_do_not_depend_on_workers_block_size_or_task_size(model_dir, tmp_path) -> None:
    img = write_raster(tmp_path / "img.tif", smooth_image(256, 320).astype(np.uint8))
    kw = dict(model=model_dir, window=64, overlap=16, device="cpu", progress=False)
    one = PredictOptions(**kw, workers=1, block_size=256, windows_per_task=1)
    three = PredictOptions(**kw, workers=3, block_size=512, windows_per_task=5, batch_size=3)
    a = predict_raster(img, tmp_path / "a.tif", one)
    b = predict_raster(img, tmp_path / "b.tif", three)
    va, _ = read(a.output)
    vb, _ = read(b.output)
    diff = np.abs(va.astype(int) - vb.astype(int))
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.99


def test_no_seams_at_window_or_block_edges(model_dir, scheduler, tmp_path) -> None:
    yy, xx = np.mgrid[0:320, 0:320]
    ramp = np.broadcast_to(200 + 0.05 * xx + 0.05 * yy, (4, 320, 320))  # no edges of its own
    img = write_raster(tmp_path / "ramp.tif", ramp.astype(np.uint8))
    kw = dict(
        model=model_dir,
        window=64,
        scheduler=scheduler,
        block_size=256,
        dtype="float32",
        progress=False,
    )
    # control: without overlap the window edges show (so the measure can see a seam) ...
    p0, _ = read(predict_raster(img, tmp_path / "hard.tif", PredictOptions(overlap=0, **kw)).output)
    edges0 = [o for o, _ in WindowGrid(320, 320, 64, 0).row_spans][1:]
    assert seam_ratio(p0, edges0, axis=1) > 3.0
    # ... with blending, no boundary (window starts and ends, the block edge at 256) stands out
    p1, _ = read(
        predict_raster(img, tmp_path / "soft.tif", PredictOptions(overlap=32, **kw)).output
    )
    spans = WindowGrid(320, 320, 64, 32).row_spans
    boundaries = sorted({o for o, _ in spans[1:]} | {o + n for o, n in spans[:-1]} | {256})
    for axis in (0, 1):
        assert seam_ratio(p1, boundaries, axis=axis) < 1.6


def test_own_local_cluster_is_gone_when_predict_returns(scene, model_dir, tmp_path) -> None:
    """The LocalCluster stops on a thread while the COG is finalised; predict still returns
    only once it has stopped, and the output is complete."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    out = tmp_path / "own.tif"
    res = predict_raster(
        scene,
        out,
        PredictOptions(model=model_dir, window=64, overlap=16, workers=1, progress=False),
    )
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert left == []
    assert res.timings["cluster_stop"] >= 0 and res.timings["cog_finalize"] > 0
    with rasterio.open(out) as src:
        assert src.overviews(1) and src.read(1).shape == (320, 448)


def test_existing_output_is_not_overwritten(scene, model_dir, tmp_path) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        predict_raster(scene, out, PredictOptions(model=model_dir, window=64, progress=False))
    assert out.read_bytes() == b"keep me"
    vec = tmp_path / "roads.gpkg"
    vec.write_bytes(b"keep me too")
    with pytest.raises(FileExistsError, match="roads.gpkg"):
        predict_raster(
            scene,
            tmp_path / "new.tif",
            PredictOptions(model=model_dir, window=64, progress=False),
            vectors=vec,
        )
    assert not (tmp_path / "new.tif").exists()


def test_failed_run_leaves_no_output_and_keeps_the_old_one(model_dir, scheduler, tmp_path) -> None:
    """A read error in a late window (a corrupted tile) fails the run mid-way."""
    img = write_raster(
        tmp_path / "broken.tif",
        smooth_image(256, 256).astype(np.uint8),
        tiled=True,
        blockxsize=64,
        blockysize=64,
        compress="deflate",
    )
    with rasterio.open(img) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_3_3", "TIFF", bidx=1))
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00garbage" * (size // 8))
    out = tmp_path / "out.tif"
    with pytest.raises(RasterError, match=r"broken\.tif: cannot read"):
        predict_raster(
            img,
            out,
            PredictOptions(
                model=model_dir,
                window=64,
                overlap=16,
                scheduler=scheduler,
                block_size=256,
                windows_per_task=1,
                progress=False,
            ),
        )
    assert not out.exists()
    out.write_bytes(b"previous result")
    with pytest.raises(RasterError, match=r"broken\.tif: cannot read"):
        predict_raster(
            img,
            out,
            PredictOptions(
                model=model_dir,
                window=64,
                overlap=16,
                scheduler=scheduler,
                overwrite=True,
                progress=False,
            ),
        )
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tif", "out.tif"]


def test_killed_run_leaves_no_output(model_dir, scheduler, tmp_path) -> None:
    """SIGKILL the predicting process mid-run: nothing may appear under the output name."""
    img = write_raster(tmp_path / "big.tif", smooth_image(512, 512).astype(np.uint8))
    out = tmp_path / "out.tif"
    code = (
        "from pipeline.config import PredictOptions; from pipeline.predict import predict_raster; "
        f"predict_raster({str(img)!r}, {str(out)!r}, PredictOptions(model={str(model_dir)!r}, "
        f"window=64, overlap=16, scheduler={scheduler!r}, progress=False))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".out.tif.") for p in tmp_path.iterdir()):  # staging began
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.05)
        time.sleep(0.5)  # some blocks are being written now
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()


def test_band_count_mismatch_is_a_clear_error(model_dir, tmp_path, monkeypatch) -> None:
    def no_cluster(*args):
        raise AssertionError("a model folder's errors must come before any cluster starts")

    monkeypatch.setattr(parallel, "cluster_client", no_cluster)
    img = write_raster(tmp_path / "rgb.tif", smooth_image(64, 64, bands=3).astype(np.uint8))
    with pytest.raises(RasterError, match=r"rgb\.tif.*3 band.*expects 4"):
        predict_raster(
            img, tmp_path / "o.tif", PredictOptions(model=model_dir, window=64, progress=False)
        )
    assert not (tmp_path / "o.tif").exists()


def test_registry_model_is_resolved_beside_the_cluster_start(
    model_dir, scheduler, tmp_path
) -> None:
    """``models:/`` URIs are resolved on a thread while the cluster starts: what it finds (the
    version, in the tags), and what goes wrong (no store, wrong bands), still reach the caller."""
    from pipeline import registry

    store = f"sqlite:///{tmp_path}/mlflow.db"
    with registry.tracked_run("predict-test", "train", tracking_default=store):
        uri = registry.log_pyfunc_model(model_dir, np.zeros((1, 4, 64, 64), np.float32))
        version = registry.register_version(uri, "road-unet", {})
    registry.set_alias("road-unet", "champion", version)
    img = write_raster(tmp_path / "in.tif", smooth_image(96, 96).astype(np.uint8))
    out = predict_raster(
        img,
        tmp_path / "o.tif",
        PredictOptions(
            window=64, overlap=16, scheduler=scheduler, tracking_default=store, progress=False
        ),
    ).output
    by_folder = predict_raster(
        img,
        tmp_path / "f.tif",
        PredictOptions(model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False),
    ).output
    values, profile = read(out)
    assert profile["tags"]["model_uri"] == "models:/road-unet@champion"
    assert profile["tags"]["model_version"] == version == "1"
    assert np.array_equal(values, read(by_folder)[0])

    with pytest.raises(LookupError, match="no MLflow store"):
        predict_raster(
            img,
            tmp_path / "none.tif",
            PredictOptions(
                window=64,
                overlap=16,
                scheduler=scheduler,
                tracking_default=f"sqlite:///{tmp_path}/missing/mlflow.db",
                progress=False,
            ),
        )
    rgb = write_raster(tmp_path / "rgb.tif", smooth_image(64, 64, bands=3).astype(np.uint8))
    with pytest.raises(RasterError, match="expects 4"):
        predict_raster(
            rgb,
            tmp_path / "rgb_o.tif",
            PredictOptions(
                window=64, overlap=16, scheduler=scheduler, tracking_default=store, progress=False
            ),
        )
    assert not (tmp_path / "none.tif").exists() and not (tmp_path / "rgb_o.tif").exists()


def test_normalisation_uses_the_models_stats_for_any_input_dtype(
    model_dir, scheduler, tmp_path
) -> None:
    """uint8 data with (mean, std) and float32 data a*x+b with (a*mean+b, a*std) see the same
    normalised input, so they must predict the same; uint16 likewise."""
    base = smooth_image(96, 96).astype(np.uint8)
    ref = predict_raster(
        write_raster(tmp_path / "u8.tif", base),
        tmp_path / "ref.tif",
        PredictOptions(model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False),
    ).output
    scaled_model = make_model(
        tmp_path / "scaled", mean=[m * 10 + 5 for m in MEAN], std=[s * 10 for s in STD]
    )
    f32 = write_raster(tmp_path / "f32.tif", base.astype(np.float32) * 10 + 5)
    u16 = write_raster(tmp_path / "u16.tif", base.astype(np.uint16) * 10 + 5)
    r, _ = read(ref)
    for img in (f32, u16):
        out = predict_raster(
            img,
            tmp_path / f"{img.stem}_o.tif",
            PredictOptions(
                model=scaled_model, window=64, overlap=16, scheduler=scheduler, progress=False
            ),
        ).output
        v, _ = read(out)
        assert np.abs(v.astype(int) - r.astype(int)).max() <= 1
    # and a model with other stats does see a different input
    other = make_model(tmp_path / "other", mean=[0.0] * 4, std=[1.0] * 4)
    v, _ = read(
        predict_raster(
            f32,
            tmp_path / "other.tif",
            PredictOptions(model=other, window=64, overlap=16, scheduler=scheduler, progress=False),
        ).output
    )
    assert np.abs(v.astype(int) - r.astype(int)).max() > 1


def test_masked_pixels_are_hidden_from_the_model(model_dir, scheduler, tmp_path) -> None:
    """A per-dataset mask: what lies under it must not change any valid pixel's prediction."""
    base = smooth_image(128, 128).astype(np.uint8)
    mask = np.ones((128, 128), bool)
    mask[40:70, 30:90] = False
    other = base.copy()
    other[:, ~mask] = 255 - other[:, ~mask]  # different garbage under the mask
    outs = []
    for name, data in (("a", base), ("b", other)):
        img = write_raster(tmp_path / f"{name}.tif", data, mask=mask)
        outs.append(
            read(
                predict_raster(
                    img,
                    tmp_path / f"{name}_o.tif",
                    PredictOptions(
                        model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False
                    ),
                ).output
            )[0]
        )
    assert ((outs[0] == 255) == ~mask).all()
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).max() <= 1


def test_raster_without_crs_warns_and_output_has_none(model_dir, scheduler, tmp_path) -> None:
    img = write_raster(tmp_path / "nocrs.tif", smooth_image(64, 96).astype(np.uint8), crs=None)
    with pytest.warns(UserWarning, match="no CRS"):
        out = predict_raster(
            img,
            tmp_path / "o.tif",
            PredictOptions(
                model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False
            ),
        ).output
    _, prof = read(out)
    assert prof["crs"] is None and prof["transform"] == TRANSFORM


def test_imagery_unlike_the_training_imagery_warns(model_dir, scheduler, tmp_path) -> None:
    import json
    import shutil
    import warnings

    trained = shutil.copytree(model_dir, tmp_path / "model")
    cfg = json.loads((trained / "model.json").read_text())
    (trained / "model.json").write_text(json.dumps({**cfg, "dtype": "uint8", "gsd_m": 0.5}))
    like = write_raster(
        tmp_path / "like.tif", smooth_image(64, 64).astype(np.uint8)
    )  # uint8, 0.5 m
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_raster(
            like,
            tmp_path / "o1.tif",
            PredictOptions(
                model=trained, window=64, overlap=16, scheduler=scheduler, progress=False
            ),
        )
    assert not [w for w in caught if "trained" in str(w.message)]  # the imagery the model knows
    deep = write_raster(tmp_path / "deep.tif", (smooth_image(64, 64) * 200).astype(np.uint16))
    with pytest.warns(
        UserWarning, match=r"deep.tif: sample type uint16, but the model .* trained on uint8"
    ):
        predict_raster(
            deep,
            tmp_path / "o2.tif",
            PredictOptions(
                model=trained, window=64, overlap=16, scheduler=scheduler, progress=False
            ),
        )
    coarse = write_raster(
        tmp_path / "coarse.tif",
        smooth_image(64, 64).astype(np.uint8),
        transform=Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 5400000.0),
    )
    with pytest.warns(
        UserWarning, match=r"coarse.tif: pixels are 2.00 m, but the model .* trained at 0.50 m"
    ) as caught:
        predict_raster(
            coarse,
            tmp_path / "o3.tif",
            PredictOptions(
                model=trained,
                window=64,
                overlap=16,
                scheduler=scheduler,
                progress=False,
                resample=False,
            ),
        )
    assert "gdalwarp -tr 0.5 0.5" in str(caught[-1].message)


def test_raster_smaller_than_a_window(model_dir, scheduler, tmp_path) -> None:
    data = smooth_image(40, 50).astype(np.uint8)
    data[:, :5, :5] = 0
    img = write_raster(tmp_path / "tiny.tif", data, nodata=0)
    res = predict_raster(
        img,
        tmp_path / "o.tif",
        PredictOptions(
            model=model_dir, window=128, overlap=16, scheduler=scheduler, progress=False
        ),
    )
    v, prof = read(res.output)
    assert (prof["height"], prof["width"]) == (40, 50) and res.windows_run == 1
    assert (v[:5, :5] == 255).all() and (v[5:, 5:] < 255).all()


def test_a_rewritten_input_is_read_afresh_and_workers_keep_nothing_open(
    model_dir, scheduler, tmp_path
) -> None:
    """Workers keep the raster open between the tasks of a run (GDAL's cache decodes shared
    tiles once); a long-lived cluster must close it after the run and never serve the next run
    from it, e.g. after the user corrected the raster in place."""
    from distributed import Client

    from pipeline import inference

    img = tmp_path / "region.tif"
    kw = dict(
        model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False, overwrite=True
    )
    data = smooth_image(160, 192).astype(np.uint8)
    write_raster(img, data, tiled=True, blockxsize=64, blockysize=64)
    first, _ = read(predict_raster(img, tmp_path / "first.tif", PredictOptions(**kw)).output)
    with Client(scheduler) as client:
        assert set(client.run(inference.open_reader_count).values()) == {0}
    write_raster(
        img, data[:, ::-1, :].copy(), tiled=True, blockxsize=64, blockysize=64
    )  # same name
    write_raster(
        tmp_path / "fresh.tif", data[:, ::-1, :].copy(), tiled=True, blockxsize=64, blockysize=64
    )
    again, _ = read(predict_raster(img, tmp_path / "again.tif", PredictOptions(**kw)).output)
    fresh, _ = read(
        predict_raster(
            tmp_path / "fresh.tif", tmp_path / "fresh_o.tif", PredictOptions(**kw)
        ).output
    )
    assert np.abs(again.astype(int) - fresh.astype(int)).max() <= 1
    assert (
        np.abs(again.astype(int) - first.astype(int)).max() > 10
    )  # the flip changed the prediction


def test_a_model_written_again_in_its_folder_is_loaded_afresh(scheduler, tmp_path) -> None:
    """Workers keep their model between runs; on a long-lived cluster (--scheduler) a model
    retrained into the same folder must be loaded again, not served from that cache, and a
    worker keeps only its latest models, not every model it ever ran."""
    from distributed import Client

    img = write_raster(tmp_path / "in.tif", smooth_image(96, 96).astype(np.uint8))
    folder = tmp_path / "unet"
    kw = dict(window=64, overlap=16, dtype="float32", progress=False)

    def predicted(name: str, **where) -> np.ndarray:
        out = predict_raster(img, tmp_path / name, PredictOptions(model=folder, **kw, **where))
        return read(out.output)[0]

    make_model(folder, seed=0)
    first = predicted("first.tif", scheduler=scheduler)
    make_model(folder, seed=1)  # retrained in place
    again = predicted("again.tif", scheduler=scheduler)
    fresh = predicted("fresh.tif", workers=1)  # a cluster of its own loads the new weights
    np.testing.assert_array_equal(again, fresh)
    assert np.abs(again - first).max() > 0.01

    for k in range(3):  # three more models in turn
        other = make_model(tmp_path / f"other{k}", seed=k)
        options = PredictOptions(model=other, scheduler=scheduler, **kw)
        predict_raster(img, tmp_path / f"o{k}.tif", options)
    with Client(scheduler) as client:
        held = client.run(parallel.cached_keys, "model")
    assert held and all(len(models) <= inference.MODELS_KEPT for models in held.values())


def test_a_worker_refuses_a_model_other_than_the_runs(tmp_path) -> None:
    """A worker loads the model of the version its run was planned with; a folder written
    again since (another version) is refused, so one output never mixes two models."""
    from pipeline.model_config import ModelError, read_config
    from pipeline.predict_task import model_version

    folder = make_model(tmp_path / "unet", seed=0)
    planned = model_version(read_config(folder))
    model, _, _ = inference.worker_model(str(folder), "cpu", planned)
    assert inference.worker_model(str(folder), "cpu")[0] is model  # the folder's version now
    make_model(folder, seed=1)
    with pytest.raises(ModelError, match="written again while this predict ran"):
        inference.worker_model(str(folder), "cpu", "0" * 16)
    assert inference.worker_model(str(folder), "cpu", planned)[0] is model  # cached, as planned


def test_vrt_input_predicts_like_its_source(scene, model_dir, scheduler, tmp_path) -> None:
    with rasterio.open(scene) as ds:
        w, h = ds.width, ds.height
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{scene}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        "</SimpleSource></VRTRasterBand>"
        for b in range(1, 5)
    )
    gt = ", ".join(str(v) for v in TRANSFORM.to_gdal())
    vrt = tmp_path / "scene.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{CRS}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )
    kw = dict(model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False)
    a, _ = read(predict_raster(vrt, tmp_path / "vrt_o.tif", PredictOptions(**kw)).output)
    b, prof = read(predict_raster(scene, tmp_path / "tif_o.tif", PredictOptions(**kw)).output)
    assert prof["crs"] == rasterio.crs.CRS.from_string(CRS)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_tta_makes_prediction_flip_equivariant(model_dir, scheduler, tmp_path) -> None:
    base = np.random.default_rng(1).integers(1, 255, (4, 64, 64)).astype(np.uint8)
    flipped = base[:, :, ::-1].copy()
    outs = {}
    for tta in (False, True):
        for name, data in (("base", base), ("flip", flipped)):
            img = write_raster(tmp_path / f"{name}.tif", data)
            out = predict_raster(
                img,
                tmp_path / f"{name}_{tta}.tif",
                PredictOptions(
                    model=model_dir,
                    window=64,
                    overlap=0,
                    scheduler=scheduler,
                    tta=tta,
                    dtype="float32",
                    overwrite=True,
                    progress=False,
                ),
            ).output
            outs[name, tta] = read(out)[0]
    err_plain = np.abs(outs["flip", False][:, ::-1] - outs["base", False]).max()
    err_tta = np.abs(outs["flip", True][:, ::-1] - outs["base", True]).max()
    assert err_tta < 1e-4 < err_plain


def test_vectors_are_written_as_linestrings(scene, model_dir, scheduler, tmp_path) -> None:
    import geopandas as gpd

    vec = tmp_path / "roads.gpkg"
    res = predict_raster(
        scene,
        tmp_path / "o.tif",
        PredictOptions(model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False),
        vectors=vec,
    )
    assert res.vectors == vec
    roads = gpd.read_file(vec, layer="roads")
    assert len(roads) > 0 and set(roads.geom_type) == {"LineString"}
    assert "length_m" in roads and (roads["length_m"] > 0).all()
    assert roads.crs.to_epsg() == 32632
    # both outputs open styled in QGIS: a .qml beside the COG, a default style in the GeoPackage
    assert 'type="singlebandpseudocolor"' in (tmp_path / "o.qml").read_text()
    assert "layer_styles" in dict(pyogrio.list_layers(vec))


def test_a_set_stopped_part_way_leaves_none_of_its_outputs(
    scene, model_dir, scheduler, tmp_path, monkeypatch
) -> None:
    """Ctrl-C while the network is built, after the COG and the centrelines were written:
    neither is left without the rest (a COG alone made a second run refuse it without
    --overwrite, and an overwritten COG sat beside the older run's network); run again, the
    whole set is written."""
    from pipeline import network

    outputs = [tmp_path / n for n in ("o.tif", "o.qml", "roads.gpkg", "net.gpkg")]

    def run(**kw):
        options = PredictOptions(
            model=model_dir, window=64, overlap=16, scheduler=scheduler, progress=False, **kw
        )
        return predict_raster(scene, outputs[0], options, vectors=outputs[2], network=outputs[3])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real = network.network_raster
    monkeypatch.setattr(network, "network_raster", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert [p for p in outputs if p.exists()] == [] and list(tmp_path.glob(".*")) == []
    monkeypatch.setattr(network, "network_raster", real)
    run()
    assert all(p.exists() for p in outputs)
    monkeypatch.setattr(network, "network_raster", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(overwrite=True)  # the older set goes with the new one: never a mixed pair
    assert [p for p in outputs if p.exists()] == []

    def taken_meanwhile(prob, out, *args, **kwargs):  # another program wrote it during the run
        Path(out).write_bytes(b"someone else's network")
        raise FileExistsError(f"{out}: appeared while this run wrote it")

    monkeypatch.setattr(network, "network_raster", taken_meanwhile)
    with pytest.raises(FileExistsError):
        run()
    assert [p for p in outputs if p.exists()] == [outputs[3]]  # theirs is kept, ours removed
    assert outputs[3].read_bytes() == b"someone else's network"


def test_default_output_path() -> None:
    assert default_output_path(Path("/data/region.tif")) == Path("/data/region_roads.tif")


@pytest.mark.skipif(
    parallel._cuda_count() > 0, reason="with a GPU the client imports torch to count GPUs"
)
def test_the_predict_client_never_imports_torch(scene, model_dir, tmp_path) -> None:
    """Only the workers load torch: `pipeline predict` starts fast and its process stays small."""
    out = tmp_path / "out.tif"
    code = (
        "import sys; from pipeline.config import PredictOptions; "
        "from pipeline.predict import predict_raster; "
        f"predict_raster({str(scene)!r}, {str(out)!r}, PredictOptions(model={str(model_dir)!r}, "
        "window=64, overlap=16, workers=1, progress=False)); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert out.exists()  # and the prediction was made


def test_window_not_a_multiple_of_32_is_refused_before_any_work(scene, model_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        predict_raster(
            scene, tmp_path / "out.tif", PredictOptions(model=model_dir, window=100, progress=False)
        )
    assert not list(tmp_path.iterdir())
