"""The console script: every stage has a useful --help; bad input ends with a clear error, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

BIN = Path(sys.executable).parent
STAGES = ["synth", "tile", "pretrain", "train", "evaluate", "register", "predict", "models"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_subcommand_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        main([stage, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: pipeline {stage}" in out
    assert "--params" in out
    assert len(out.splitlines()) > 5


def test_console_script_is_installed():
    proc = subprocess.run(
        [str(BIN / "pipeline"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for stage in STAGES:
        assert stage in proc.stdout


def test_predict_help_lists_the_options_users_need(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    for opt in [
        "--model",
        "--scheduler",
        "--workers",
        "--device",
        "--batch-size",
        "--overlap",
        "--tta",
        "--vectors",
        "--overwrite",
        "-o",
    ]:
        assert opt in out


def test_invalid_params_file_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("synth: {scenes: []}\ndata: {scenes: []}\n")
    assert main(["tile", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "data.scenes" in err


def test_predict_missing_raster_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: predict's defaults apply
    missing = tmp_path / "nowhere.tif"
    assert main(["predict", str(missing), "--model", str(tmp_path)]) == 2
    assert "nowhere.tif" in capsys.readouterr().err


def test_a_params_file_that_is_given_must_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "parms.yaml"
    assert main(["predict", "x.tif", "--model", str(tmp_path), "--params", str(typo)]) == 2
    assert f"{typo}: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--workers", "--batch-size", "--window", "--windows-per-task"])
def test_predict_refuses_non_positive_counts(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "x.tif", flag, "0"])
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_predict_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tests.helpers import make_model, smooth_image, write_raster

    model = make_model(tmp_path / "model")
    image = write_raster(tmp_path / "in.tif", smooth_image(64, 64).astype("uint8"))
    code = main(["predict", str(image), "--model", str(model), "--device", "cuda", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--device cuda asked for, but torch sees no CUDA device" in err
    assert not (tmp_path / "in_roads.tif").exists()


def test_predict_precision_flag_reaches_the_output(tmp_path, capsys, monkeypatch):
    import rasterio

    from tests.helpers import make_model, smooth_image, write_raster

    monkeypatch.chdir(tmp_path)
    model = make_model(tmp_path / "model")
    image = write_raster(tmp_path / "in.tif", smooth_image(64, 64).astype("uint8"))
    assert (
        main(
            [
                "predict",
                str(image),
                "--model",
                str(model),
                "--precision",
                "bf16",
                "--workers",
                "1",
                "-q",
            ]
        )
        == 0
    )
    with rasterio.open(tmp_path / "in_roads.tif") as ds:
        assert ds.tags()["precision"] == "bf16"
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_a_failed_evaluate_keeps_the_previous_release(tmp_path, capsys, monkeypatch):
    import yaml

    from tests.helpers import make_model

    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1]
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["data"]["scenes"] = [
        {
            "name": "gone",
            "image": str(tmp_path / "gone.tif"),
            "labels": str(tmp_path / "gone.labels.tif"),
            "split": "test",
        }
    ]
    p["train"]["out_dir"] = str(make_model(tmp_path / "models/unet"))
    p["register"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    release = tmp_path / "models/release"
    release.mkdir(parents=True)
    (release / "marker").write_text("the release metrics/eval.json describes")

    assert main(["evaluate", "-q"]) == 2
    assert "gone.tif" in capsys.readouterr().err
    assert (release / "marker").read_text() == "the release metrics/eval.json describes"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["release", "unet"]


def test_predict_several_images_share_one_cluster_and_report_a_bad_one(
    tmp_path, capsys, monkeypatch, local_clusters_started
):
    """A folder of tiles in one call: one cluster (workers import torch and load the model once),
    each output beside its input and equal to a single-image predict; a bad image is named and
    skipped, the others are still written, and the exit code says something failed."""
    import numpy as np
    import rasterio

    from tests.helpers import make_model, smooth_image, write_raster

    monkeypatch.chdir(tmp_path)
    model = make_model(tmp_path / "model")
    a = write_raster(tmp_path / "a.tif", smooth_image(96, 128).astype("uint8"))
    b = write_raster(tmp_path / "b.tif", smooth_image(128, 96).astype("uint8")[:, ::-1].copy())
    bad = write_raster(tmp_path / "three_bands.tif", smooth_image(64, 64, bands=3).astype("uint8"))
    opts = ["--model", str(model), "--window", "64", "--overlap", "16", "--workers", "1", "-q"]
    assert main(["predict", str(a), str(bad), str(b), *opts]) == 2
    assert len(local_clusters_started) == 1  # one cluster for the three images
    captured = capsys.readouterr()
    assert "three_bands.tif: has 3 band(s)" in captured.err
    assert f"1 of 3 images failed (errors above): {bad}" in captured.err
    assert "wrote" in captured.out and not (tmp_path / "three_bands_roads.tif").exists()
    (tmp_path / "single").mkdir()
    assert main(["predict", str(b), "-o", str(tmp_path / "single" / "b.tif"), *opts]) == 0
    for path in (tmp_path / "a_roads.tif", tmp_path / "b_roads.tif"):
        with rasterio.open(path) as ds:
            assert ds.tags()["model"] == str(model)
    with (
        rasterio.open(tmp_path / "b_roads.tif") as batch,
        rasterio.open(tmp_path / "single" / "b.tif") as single,
    ):
        assert np.array_equal(batch.read(1), single.read(1))


def _on_shared_cluster(model: Path, scheduler: str) -> list[str]:
    """Predict options for 64 px test images on the session's cluster."""
    return [
        "--model",
        str(model),
        "--window",
        "64",
        "--overlap",
        "16",
        "--scheduler",
        scheduler,
        "-q",
    ]


def test_predict_several_images_write_into_a_folder_and_refuse_clashes(
    tmp_path, capsys, monkeypatch, scheduler
):
    from tests.helpers import make_model, smooth_image, write_raster

    monkeypatch.chdir(tmp_path)
    model = make_model(tmp_path / "model")
    (tmp_path / "x").mkdir()
    (tmp_path / "out").mkdir()
    a = write_raster(tmp_path / "a.tif", smooth_image(64, 64).astype("uint8"))
    same_name = write_raster(tmp_path / "x" / "a.tif", smooth_image(64, 64).astype("uint8"))
    b = write_raster(tmp_path / "b.tif", smooth_image(64, 64).astype("uint8"))
    opts = _on_shared_cluster(model, scheduler)
    # a file name for -o with several images, or two images writing one output: refused before any work
    assert main(["predict", str(a), str(b), "-o", str(tmp_path / "one.tif"), *opts]) == 2
    assert "must be a folder" in capsys.readouterr().err
    assert main(["predict", str(a), str(same_name), "-o", str(tmp_path / "out"), *opts]) == 2
    assert "would both write" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "a_roads.tif").exists()
    assert main(["predict", str(a), str(b), "-o", str(tmp_path / "out"), *opts]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_roads.qml", "a_roads.tif", "b_roads.qml", "b_roads.tif"]  # + QGIS styles
    # a name ending in / is a folder, made once the outputs are checked (not when refused)
    clash = ["predict", str(a), str(same_name), "-o", f"{tmp_path}/refused/", *opts]
    assert main(clash) == 2 and not (tmp_path / "refused").exists()
    capsys.readouterr()
    assert main(["predict", str(a), str(b), "-o", f"{tmp_path}/new/probs/", *opts]) == 0
    assert sorted(p.name for p in (tmp_path / "new/probs").glob("*.tif")) == [
        "a_roads.tif",
        "b_roads.tif",
    ]


def test_predict_skip_existing_resumes_a_run_over_many_images(
    tmp_path, capsys, monkeypatch, scheduler
):
    from tests.helpers import make_model, smooth_image, write_raster

    monkeypatch.chdir(tmp_path)
    model = make_model(tmp_path / "model")
    images = [
        str(write_raster(tmp_path / f"t{k}.tif", smooth_image(64, 64).astype("uint8")))
        for k in range(3)
    ]
    (tmp_path / "out").mkdir()
    opts = ["-o", str(tmp_path / "out"), *_on_shared_cluster(model, scheduler)]
    assert main(["predict", *images[:2], *opts]) == 0  # a run stopped after two of three
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    capsys.readouterr()
    assert main(["predict", *images, *opts, "--skip-existing"]) == 0
    out = capsys.readouterr().out
    assert (
        "skipped" in out
        and "t0_roads.tif exists" in out
        and f"wrote {tmp_path / 'out' / 't2_roads.tif'}" in out
    )
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert sorted(p for p in after if p.endswith(".tif")) == [
        "t0_roads.tif",
        "t1_roads.tif",
        "t2_roads.tif",
    ]
    assert all(after[name] == mtime for name, mtime in before.items())  # left alone
    assert main(["predict", *images, *opts, "--skip-existing", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_predict_leaves_out_inputs_that_are_outputs_of_other_inputs(
    tmp_path, capsys, monkeypatch, scheduler
):
    """`pipeline predict tiles/*.tif --skip-existing` a second time: the glob now also matches the
    first run's `*_roads.tif` beside the inputs; they are not predicted as if they were imagery."""
    from tests.helpers import make_model, smooth_image, write_raster

    monkeypatch.chdir(tmp_path)
    model = make_model(tmp_path / "model")
    images = [
        str(write_raster(tmp_path / f"t{k}.tif", smooth_image(64, 64).astype("uint8")))
        for k in range(2)
    ]
    opts = _on_shared_cluster(model, scheduler)
    assert main(["predict", images[0], *opts]) == 0
    capsys.readouterr()
    glob = sorted(str(p) for p in tmp_path.glob("*.tif"))  # t0.tif t0_roads.tif t1.tif
    assert main(["predict", *glob, *opts, "--skip-existing"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {tmp_path / 't0_roads.tif'}: it is the output of another image given" in out
    assert f"skipped {tmp_path / 't0.tif'}" in out and f"wrote {tmp_path / 't1_roads.tif'}" in out
    assert not (tmp_path / "t0_roads_roads.tif").exists()


def test_warnings_print_as_one_line_and_quiet_silences_progress_messages(monkeypatch):
    """What a user reads: `warning: <message>`, not the Python source line that warned."""
    import logging
    import subprocess
    import sys

    from pipeline.cli import configure_logging

    code = (
        "import warnings; from pipeline.cli import configure_logging; "
        "configure_logging(verbose=False, quiet=True); "
        "warnings.warn('in.tif: raster has no CRS', stacklevel=1)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr == "warning: in.tif: raster has no CRS\n"

    for name in ("pipeline", "backbones"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    monkeypatch.setattr("warnings.formatwarning", __import__("warnings").formatwarning)
    configure_logging(verbose=False, quiet=True)
    assert not logging.getLogger("pipeline.tiling").isEnabledFor(logging.INFO)
    assert logging.getLogger("pipeline.tiling").isEnabledFor(logging.WARNING)
    configure_logging(verbose=False, quiet=False)
    assert logging.getLogger("pipeline.tiling").isEnabledFor(logging.INFO)


PREDICT_PARAMS = """\
synth: {scenes: []}
data: {scenes: [{name: a, image: a.tif, roads: a.gpkg}]}
register: {model_name: my-roads, tracking_uri: "sqlite:///elsewhere.db"}
predict: {window: 256, overlap: 32, batch_size: 3, windows_per_task: 6, precision: fp32,
          resample: false, vector_min_spur_m: 5.0}
network: {block_size: 512, skeleton_tile: 256}
"""


def _predict_options(argv: list[str]):
    from pipeline.cli import predict_options

    return predict_options(build_parser().parse_args(["predict", "x.tif", *argv]))


def test_predict_options_are_params_yaml_with_the_flags_given_over_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PREDICT_PARAMS)
    from_file = _predict_options([])
    assert (from_file.window, from_file.overlap, from_file.batch_size) == (256, 32, 3)
    assert from_file.windows_per_task == 6 and from_file.precision == "fp32"
    assert not from_file.resample and from_file.vector_min_spur_m == 5.0
    assert from_file.model == "models:/my-roads@champion"
    assert from_file.tracking_default == "sqlite:///elsewhere.db"
    assert from_file.network_params.block_size == 512
    assert not from_file.tta and from_file.progress and not from_file.overwrite

    flags = ["--window", "128", "--overlap", "0", "--batch-size", "1", "--precision", "bf16"]
    flags += ["--model", "folder", "--tta", "--dtype", "float32", "--bands", "3,2,1", "-q"]
    given = _predict_options(flags)
    assert (given.window, given.overlap, given.batch_size, given.precision) == (128, 0, 1, "bf16")
    assert given.model == "folder" and given.tta and given.dtype == "float32"
    assert given.bands == [3, 2, 1] and not given.progress
    assert given.windows_per_task == 6  # not given: params.yaml's


def test_predict_tta_comes_from_params_yaml_and_either_flag_overrides_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PREDICT_PARAMS.replace("fp32,", "fp32, tta: true,"))
    assert _predict_options([]).tta
    assert not _predict_options(["--no-tta"]).tta
    (tmp_path / "params.yaml").write_text(PREDICT_PARAMS)
    assert not _predict_options([]).tta and _predict_options(["--tta"]).tta


def test_predict_options_without_a_params_file_are_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    options = _predict_options(["--no-resample"])
    assert options.model == "models:/road-unet@champion" and options.window == 512
    assert options.overlap == 64 and options.batch_size is None and not options.resample
    assert options.tracking_default == "sqlite:///mlflow.db"


def test_a_predict_flag_that_params_yaml_would_refuse_is_a_one_line_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "x.tif"), "--window", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid predict options: window: ") and err.count("\n") == 1


def test_label_check_says_where_an_offset_goes():
    """A scene's offset goes on its entry; a tile's on its tile set (tiles have no entry of
    their own); a label raster cannot take one."""
    from types import SimpleNamespace

    from pipeline.cli import _offset_hint

    shifted = dict(scene="sn_img1", shift_m=2.5, shift_east_m=1.5, shift_north_m=-2.0)
    tile = _offset_hint(SimpleNamespace(**shifted, labels="vectors"), "sn")
    assert "label_offset_m: [1.5, -2] on tile set 'sn' in data.scenes" in tile
    scene = _offset_hint(SimpleNamespace(**shifted, labels="vectors"), None)
    assert "label_offset_m: [1.5, -2] on this scene in data.scenes" in scene
    raster = _offset_hint(SimpleNamespace(**shifted, labels="raster"), "mass")
    assert "moves road vectors only" in raster


def test_sighup_stops_like_sigterm_unless_nohup_ignores_it() -> None:
    """SIGHUP (the ssh session gone) runs the same cleanup as SIGTERM; under nohup, which
    ignores SIGHUP before the command starts, the command keeps running as it always did."""
    import os
    import signal
    import time

    from pipeline.cli import Terminated, sigterm_as_interrupt

    previous = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with pytest.raises(Terminated) as stopped, sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(1)
        assert stopped.value.args == (signal.SIGHUP,)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
