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
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.control import GroundControlPoint

from pipeline import parallel
from pipeline.cli import main
from pipeline.model import ModelConfig, build_unet, save_model
from pipeline.model_config import CONFIG_FILE, WEIGHTS_FILE
from tests.helpers import BANDS, MEAN, STD, make_model, smooth_image, write_raster

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


def test_a_model_from_a_newer_roadseg_says_to_upgrade(image, model, tmp_path, capsys):
    cfg = json.loads((model / CONFIG_FILE).read_text())
    cfg["colour_space"] = "lab"  # a field some later version may add
    (model / CONFIG_FILE).write_text(json.dumps(cfg))
    assert main(predict_args(image, tmp_path / "out.tif", model, None)) == 2
    err = capsys.readouterr().err
    assert f"{model / CONFIG_FILE}: not a valid model config (colour_space:" in err
    assert "saved by a newer one? upgrade" in err and not (tmp_path / "out.tif").exists()


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


# ----------------------------------------------------------------- left behind, overwritten
def wait_for_staging(proc: subprocess.Popen, folder: Path, name: str, timeout: float = 90) -> None:
    """Until the predicting process has begun writing ``name`` (its temporaries exist)."""
    deadline = time.monotonic() + timeout
    while not [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and ".part" in p.name]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)


def _ctrl_c_as_in_a_terminal() -> None:
    """A shell ignores SIGINT in the commands it starts in the background (``cmd &``), and
    Python then never raises KeyboardInterrupt: the CLI gets SIGINT as from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        PIPELINE + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [
        (signal.SIGTERM, 143, "stopped by SIGTERM"),
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGHUP, 129, "stopped by SIGHUP"),  # the ssh session that ran it dropped
    ],
)
def test_signal_mid_predict_cleans_up(model, scheduler, tmp_path, sig, code, said):
    # ~1,900 windows: still running when the signal comes, also on a quiet machine (a 512^2
    # raster could finish in the 0.3 s between its first temporary file and the signal)
    img = write_raster(tmp_path / "big.tif", smooth_image(2048, 2048).astype(np.uint8))
    out = tmp_path / "out.tif"
    proc = start_cli(predict_args(img, out, model, scheduler))
    try:
        wait_for_staging(proc, tmp_path, out.name)
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: predict {said}; its temporary files")
    assert not out.exists() and leftovers(tmp_path) == []


def test_stale_temporaries_of_the_output_are_removed(image, model, scheduler, tmp_path):
    out = tmp_path / "out.tif"
    stale = [tmp_path / ".out.tif.0badf00d.part.tif", tmp_path / ".out.tif.lock"]  # SIGKILLed run
    others = [tmp_path / ".out.tif.v2.tif.0badf00d.part.tif"]  # another output's, maybe live
    for p in stale + others:
        p.write_bytes(b"left by a killed run")
    assert main(predict_args(image, out, model, scheduler)) == 0
    assert out.exists() and leftovers(tmp_path) == [p.name for p in others]


def test_a_second_predict_of_an_output_being_written_is_refused(
    image, model, scheduler, tmp_path, capsys
):
    from pipeline.atomic import exclusive_output

    out = tmp_path / "out.tif"
    with exclusive_output(out):  # what a predict writing out.tif holds
        assert main(predict_args(image, out, model, scheduler, "--overwrite")) == 2
    assert f"{out}: another process is writing it now" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


def test_an_output_that_appears_while_writing_is_not_replaced(tmp_path):
    """The existence check and the final rename cannot race: the rename is a hard link."""
    from pipeline.atomic import atomic_path

    out = tmp_path / "out.tif"
    with pytest.raises(FileExistsError, match="appeared while this run wrote it"):
        with atomic_path(out, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            out.write_bytes(b"theirs")  # another process finished first
    assert out.read_bytes() == b"theirs" and leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_predicts_of_one_output_at_once_one_wins(image, model, scheduler, tmp_path):
    out = tmp_path / "out.tif"
    procs = [start_cli(predict_args(image, out, model, scheduler)) for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for code, e in results if code == 2)
    assert "another process is writing it" in err or "exists" in err or "appeared" in err
    assert out.exists() and leftovers(tmp_path) == []


def test_output_equal_to_input_is_refused(image, model, tmp_path, capsys):
    before = image.read_bytes()
    assert main(predict_args(image, image, model, None)) == 2
    assert f"{image}: is the input image itself" in capsys.readouterr().err
    assert image.read_bytes() == before and leftovers(tmp_path) == []


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder with the repository's params.yaml and no MLflow store yet."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(__file__).parents[1] / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_models_where_no_store_exists_creates_none(project, capsys):
    assert main(["models"]) == 2
    assert f"no MLflow store at {project / 'mlflow.db'}" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists()
    assert main(["models", "promote", "1"]) == 2
    assert not (project / "mlflow.db").exists()


def register_champion(model: Path, store: str) -> None:
    from pipeline import registry

    with registry.tracked_run("faults", "train", tracking_default=store):
        uri = registry.log_pyfunc_model(model, np.zeros((1, 4, 64, 64), np.float32))
        version = registry.register_version(uri, "road-unet", {})
    registry.set_alias("road-unet", "champion", version)


def modes(folder: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", p.stat().st_mode & 0o777) for p in folder.rglob("*")}


@pytest.mark.slow
def test_registry_downloads_and_outputs_are_readable_by_others(
    image, model, scheduler, project, capsys
):
    old = os.umask(0o022)
    try:
        register_champion(model, f"sqlite:///{project}/mlflow.db")
        out = project / "out.tif"
        args = predict_args(image, out, model, scheduler)
        args[args.index("--model") + 1] = "models:/road-unet@champion"
        assert main(args) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
    cache = Path(os.environ["ROADSEG_CACHE_DIR"])
    assert modes(cache) == {("dir", 0o755), ("file", 0o644)}

    # a cached MLmodel whose model_dir leaves the download is refused, relative or absolute
    mlmodel = next(cache.rglob("MLmodel"))
    original = mlmodel.read_text()
    for bad in ("../../elsewhere", str(model)):
        mlmodel.write_text(original.replace("path: artifacts/", f"path: {bad}#"))
        assert main(args + ["--overwrite"]) == 2
        assert "points outside the downloaded model" in capsys.readouterr().err


# ----------------------------------------------------------------- slow or silent failures
def test_tracking_server_down_fails_within_seconds(image, scheduler, project, monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    out = project / "out.tif"
    t0 = time.monotonic()
    assert main(["predict", str(image), "-o", str(out), "-q", "--scheduler", scheduler]) == 2
    assert time.monotonic() - t0 < 20
    assert f"{url}: the MLflow tracking server is unreachable" in capsys.readouterr().err
    assert main(["models"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert not out.exists() and leftovers(project) == []


def test_scheduler_at_a_closed_port_is_a_clean_error(image, model, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    assert main(predict_args(image, tmp_path / "out.tif", model, address)) == 2
    assert time.monotonic() - t0 < 25
    assert f"{address}: no Dask scheduler answers there" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_every_worker_gone_gives_up_after_the_stated_time(model, tmp_path):
    from distributed import LocalCluster

    # large enough (~1,900 windows) that the run is still going when its worker is closed,
    # also on a quiet machine where a 1024^2 raster was done first
    img = write_raster(tmp_path / "big.tif", smooth_image(2048, 2048).astype(np.uint8))
    out = tmp_path / "out.tif"
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        proc = start_cli(
            predict_args(img, out, model, cluster.scheduler_address),
            ROADSEG_NO_WORKERS_TIMEOUT_S="3",
        )
        try:
            wait_for_staging(proc, tmp_path, out.name)
            # closed at once, not retired: a graceful retirement waits for the queued tasks
            for nanny in list(cluster.workers.values()):
                cluster.sync(nanny.close, timeout=10)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 2, err
    assert "waiting up to 3 s for one to return" in err
    assert "has been gone for 3 s; gave up" in err and "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------- file systems that are read-only or full
def _unshare() -> list[str] | None:
    """The command that runs a shell in a private mount namespace, or None where not allowed."""
    if shutil.which("unshare") is None:
        return None
    cmd = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    ok = subprocess.run(cmd + ["true"], capture_output=True).returncode == 0
    return cmd if ok else None


UNSHARE = _unshare()
needs_private_mounts = pytest.mark.skipif(
    UNSHARE is None, reason="needs unshare (a private mount namespace) to mount a small tmpfs"
)


def predict_on_tmpfs(folder: Path, options: str, args: list[str]) -> tuple[int, str, list[str]]:
    """Run the CLI with a tmpfs (mount ``options``) mounted on ``folder`` for it alone;
    returns (exit code, stderr, what the run left in ``folder``)."""
    folder.mkdir()
    script = (
        'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; dir="$2"; shift 2; "$@"; rc=$?; '
        'echo "LEFT:$(ls -A "$dir" | tr "\\n" " ")"; exit $rc'
    )
    proc = subprocess.run(
        UNSHARE + ["sh", "-c", script, "sh", options, str(folder), *PIPELINE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.returncode != 99, proc.stderr
    left = proc.stdout.rsplit("LEFT:", 1)[1].split()
    return proc.returncode, proc.stderr, left


@needs_private_mounts
def test_a_read_only_output_folder_is_refused_before_any_work(image, model, tmp_path):
    out = tmp_path / "ro" / "out.tif"
    t0 = time.monotonic()
    code, err, left = predict_on_tmpfs(out.parent, "ro", predict_args(image, out, model, None))
    assert code == 2, err
    assert f"{out.parent}: cannot write here (Read-only file system)" in err
    assert "distributed" not in err  # no cluster was started
    assert time.monotonic() - t0 < 60 and left == []


@needs_private_mounts
def test_a_full_disk_is_refused_before_any_work(model, tmp_path):
    img = write_raster(tmp_path / "in.tif", smooth_image(1024, 1024).astype(np.uint8))
    out = tmp_path / "small" / "out.tif"
    code, err, left = predict_on_tmpfs(out.parent, "size=64k", predict_args(img, out, model, None))
    assert code == 2, err
    assert f"{out.parent}: 0 MiB free, but writing out.tif needs at least 0 MiB" in err
    assert left == []


@pytest.mark.slow
@needs_private_mounts
def test_disk_full_while_writing_is_one_line_and_leaves_nothing(model, scheduler, tmp_path):
    noise = np.random.default_rng(0).integers(1, 255, (4, 512, 512), dtype=np.uint8)
    img = write_raster(tmp_path / "noise.tif", noise)
    out = tmp_path / "small" / "out.tif"
    args = predict_args(img, out, model, scheduler, "--dtype", "float32")
    code, err, left = predict_on_tmpfs(out.parent, "size=400k", args)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(f"error: {out}: the disk is full")
    assert "Traceback" not in err and left == []


@needs_private_mounts
def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path):
    """torch.save on a full disk raises a bare RuntimeError from its zip writer; training
    must say which file and why in one line, and the checkpoint of the epoch before must
    still load (a resume starts from it)."""
    folder = tmp_path / "small"
    folder.mkdir()
    code = (
        "import os, sys, torch\n"
        "from pathlib import Path\n"
        "from pipeline.checkpoints import CheckpointError, load_checkpoint, save_checkpoint\n"
        "p = Path(sys.argv[1]) / 'last.pt'\n"
        "save_checkpoint(p, model={'w': torch.ones(1000)}, epoch=1)\n"
        "try:\n"
        "    save_checkpoint(p, model={'w': torch.ones(2_000_000)}, epoch=2)\n"
        "except CheckpointError as e:\n"
        "    print('ERROR:' + str(e))\n"
        "print('EPOCH:', load_checkpoint(p)['epoch'])\n"
        "print('LEFT:', ' '.join(sorted(os.listdir(sys.argv[1]))))\n"
    )
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" || exit 99; shift; exec "$@"'
    proc = subprocess.run(
        UNSHARE + ["sh", "-c", script, "sh", str(folder), sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"ERROR:{folder}/last.pt: the disk is full" in out, out
    assert "the previous checkpoint is kept" in out and "--resume" in out
    assert "EPOCH: 1" in out and "LEFT: last.pt\n" in out


# ------------------------------------------------------------------------ the tile stage
@pytest.mark.parametrize("field", ["labels", "centrelines"])
def test_label_grid_error_says_what_differs(project, capsys, field):
    from affine import Affine

    from pipeline.raster import write_geotiff
    from tests.conftest import make_scene

    scene = make_scene(project, "x", seed=5)
    labels = project / "coarse.tif"  # same size and CRS; 2 m pixels, origin 10 m east
    grid = Affine(2, 0, 500010, 0, -2, 5400000)
    write_geotiff(labels, np.ones((256, 256), np.uint8), crs="EPSG:32632", transform=grid)
    entry = {"name": "x", "image": scene["image"], "labels": str(labels)}
    if field == "centrelines":  # labels on the grid, the centrelines (evaluate's truth) not
        entry.update(labels=scene["labels"], centrelines=str(labels))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["scenes"] = [entry]
    params["tile"]["out_dir"] = str(project / "chips")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["tile", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{labels}: label raster is on another grid than {scene['image']}" in err
    assert "pixel size 2 x 2 vs 1 x 1; origin (500010, 5400000) vs (500000, 5400000)" in err
    assert "EPSG" not in err  # the CRS is the same: not worth a word
    assert not (project / "chips").exists()


def test_an_unreadable_road_file_is_one_line_before_any_work(project, capsys):
    from tests.conftest import make_scene

    scene = make_scene(project, "x", seed=5)
    roads = project / "roads.geojson"
    roads.write_text("{ not json")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["scenes"] = [{"name": "x", "image": scene["image"], "roads": str(roads)}]
    params["tile"].update(out_dir=str(project / "chips"), workers=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["tile", "-q"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {roads}: not a vector file OGR can read")
    assert not (project / "chips").exists()


@pytest.mark.slow
def test_scheduler_lost_mid_run_is_one_line(model, tmp_path):
    bin_dir = Path(sys.executable).parent
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    sched = subprocess.Popen(
        [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":")[-1],
         "--no-dashboard"], **quiet,
    )  # fmt: skip
    worker = subprocess.Popen(
        [bin_dir / "dask", "worker", address, "--nthreads", "1", "--no-dashboard"], **quiet
    )
    img = write_raster(tmp_path / "big.tif", smooth_image(1024, 1024).astype(np.uint8))
    out = tmp_path / "out.tif"
    try:
        proc = start_cli(predict_args(img, out, model, address))
        wait_for_staging(proc, tmp_path, out.name)
        sched.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        for p in (sched, worker, proc):
            p.kill()
            p.wait()
    assert proc.returncode == 2, err
    # distributed itself may log its failed reconnect (with a traceback of its own), but no
    # error escapes through roadseg's code
    assert "pipeline/cli.py" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "scheduler" in last, err
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- guard rails
def test_the_plan_and_an_estimate_are_printed_before_a_long_run(model, scheduler, tmp_path):
    img = write_raster(tmp_path / "in.tif", smooth_image(320, 448).astype(np.uint8))
    out = tmp_path / "out.tif"
    args = [a for a in predict_args(img, out, model, scheduler) if a != "-q"]
    proc = run_cli(args + ["--windows-per-task", "2"])
    assert proc.returncode == 0, proc.stderr
    assert "predict in.tif: 320 x 448 px, 63 windows of 64 px in " in proc.stdout
    assert " tasks on 2 worker thread(s)" in proc.stdout
    assert "first task: 2 windows in " in proc.stdout and "for all 63 windows" in proc.stdout
    assert "63/63" in proc.stderr  # the bar counts windows and ends at the plan's number


# ------------------------------------------ cases that held before the catalogue: kept so
def test_an_existing_output_is_kept_unless_overwrite(image, model, scheduler, tmp_path, capsys):
    out = tmp_path / "out.tif"
    out.write_bytes(b"a colleague's result")
    assert main(predict_args(image, out, model, scheduler)) == 2
    assert f"{out}: exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"a colleague's result" and leftovers(tmp_path) == []
    assert main(predict_args(image, out, model, scheduler, "--overwrite")) == 0
    with rasterio.open(out) as ds:
        assert ds.driver == "GTiff" and ds.shape == (96, 128)
    assert leftovers(tmp_path) == []


def test_outputs_named_for_another_format_are_refused_before_any_work(
    image, model, tmp_path, capsys
):
    """A GeoTIFF written under .png, a GeoPackage under .shp: refused, with the suffix to use."""
    cases = {
        (tmp_path / "out.png",): "out.png: this output is written as .tif or .tiff",
        (
            tmp_path / "o.tif",
            "--vectors",
            str(tmp_path / "roads.shp"),
        ): "roads.shp: this output is written as .gpkg",
        (
            tmp_path / "o.tif",
            "--network",
            str(tmp_path / "net.geojson"),
        ): "net.geojson: this output is written as .gpkg",
    }
    for (out, *extra), said in cases.items():
        assert main(predict_args(image, out, model, None, *extra)) == 2
        assert said in capsys.readouterr().err
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", model.name]  # nothing new


def test_a_raster_of_another_band_count_is_refused(model, tmp_path, capsys):
    rgb = write_raster(tmp_path / "rgb.tif", smooth_image(64, 64, bands=3).astype(np.uint8))
    assert main(predict_args(rgb, tmp_path / "out.tif", model, None)) == 2
    assert f"{rgb}: has 3 band(s), but the model {model} expects 4" in capsys.readouterr().err
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.tif").exists()


def test_a_missing_raster_is_named(model, tmp_path, capsys):
    missing = tmp_path / "nowhere.tif"
    assert main(predict_args(missing, tmp_path / "out.tif", model, None)) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err
    assert leftovers(tmp_path) == []
