"""The register stage against a real MLflow registry: versions, tags, champion/challenger, promote,
loading by alias in a fresh process; once with the SQLite store, once with a real `mlflow server`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import registry
from pipeline.config import load_params
from pipeline.model import ModelConfig, build_unet, save_model
from pipeline.model_config import read_config, resolve_model
from pipeline.register import _not_comparable, promote, run_register

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["register"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    p["register"]["receipt_path"] = str(tmp_path / "models/registered.json")
    p["train"]["out_dir"] = str(tmp_path / "models/unet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp_path / "params.yaml")
    config = ModelConfig(
        encoder="resnet18",
        bands=["red", "green", "blue", "nir"],
        mean=[90.0] * 4,
        std=[30.0] * 4,
        chip_size=64,
        threshold=0.4,
        data_fingerprint="f" * 64,
        git_commit="abc123",
    )
    release = tmp_path / "models/release"
    save_model(build_unet(config), config, release)
    return params, release


def _register_with_iou(
    params, release: Path, iou: float, views: int | None = None, scenes: dict | None = None
) -> dict:
    with registry.tracked_run(
        params.register.experiment, "train", tracking_default=params.register.tracking_uri
    ) as run_id:
        pass
    params.train.out_dir.mkdir(parents=True, exist_ok=True)
    (params.train.out_dir / "run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    eval_path = Path("metrics/eval.json")
    eval_path.parent.mkdir(exist_ok=True)
    per_scene = scenes or {"held": {"valid_pixels": 4096, "road_pixels": 300}}
    scores = {"iou": iou, "f1": iou + 0.1, "per_scene": per_scene}
    if views is not None:  # eval.json written before 2026-12-07 has no views: 1
        scores["views"] = views
    eval_path.write_text(json.dumps(scores))
    return run_register(params, model_dir=release, eval_path=eval_path)


def _check_registry_flow(params, release: Path, env: dict) -> None:
    iou = 0.5342096927462782  # more digits than the tag keeps: a tie must still be a tie
    first = _register_with_iou(params, release, iou)
    assert (first["version"], first["alias"]) == ("1", "champion")
    worse = _register_with_iou(params, release, 0.40)
    assert (worse["version"], worse["alias"]) == ("2", "challenger")
    assert registry.alias_version("road-unet", "champion") == "1"
    tie = _register_with_iou(params, release, iou)
    assert tie["alias"] == "champion", "a version at least as good as the champion takes the alias"

    versions = registry.list_versions("road-unet")
    assert [v["version"] for v in versions] == ["3", "2", "1"]
    assert versions[0]["aliases"] == ["champion"] and versions[1]["aliases"] == ["challenger"]
    tags = versions[2]["tags"]
    assert tags["encoder"] == "resnet18" and tags["git_commit"] == "abc123"
    assert tags["test_iou"] == "0.534210" and tags["data_fingerprint"] == "f" * 64

    promote(params, "2")
    assert registry.alias_version("road-unet", "champion") == "2"
    assert registry.alias_version("road-unet", "challenger") is None  # the challenger won
    assert registry.list_versions("road-unet")[1]["aliases"] == ["champion"]
    with pytest.raises(LookupError, match="no version 9"):
        promote(params, "9")

    folder = resolve_model(
        "models:/road-unet@champion", tracking_default=params.register.tracking_uri
    )
    assert json.loads((folder / "model.json").read_text())["threshold"] == 0.4
    # downloaded once per version into the model cache, reused, and an alias move is seen at once
    cache = registry.model_cache_dir()
    assert cache in folder.parents and "road-unet-v2-" in str(folder)
    assert (
        resolve_model("models:/road-unet/2", tracking_default=params.register.tracking_uri)
        == folder
    )
    promote(params, "3")
    newer = resolve_model(
        "models:/road-unet@champion", tracking_default=params.register.tracking_uri
    )
    assert newer != folder and "road-unet-v3-" in str(newer)
    assert sorted(p.name.split("-")[2] for p in cache.iterdir()) == [
        "v2",
        "v3",
    ]  # no partial downloads
    promote(params, "2")

    code = (
        "import mlflow, numpy as np\n"
        "m = mlflow.pyfunc.load_model('models:/road-unet@champion')\n"
        "y = m.predict(np.full((1, 4, 64, 64), 90, 'float32'))\n"
        "assert y.shape == (1, 1, 64, 64) and 0 <= y.min() <= y.max() <= 1\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = registry.tracking_uri(params.register.tracking_uri)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_registry_with_sqlite_store(project):
    params, release = project
    _check_registry_flow(params, release, dict(os.environ))
    card = registry.list_versions("road-unet")[0]
    assert card["run_id"]


def test_scores_of_another_evaluation_or_not_evaluates_are_refused(project):
    """An evaluate that stopped after writing eval.json (its MLflow run failed) leaves the
    previous release beside the new scores: registering them together would give the old
    weights the new model's test IoU. Refused, as is an eval.json that is not evaluate's."""
    from pipeline.register import RegisterError

    params, release = project
    config = read_config(release).model_copy(update={"metrics": {"test_iou": 0.41}})
    save_model(build_unet(config), config, release)  # the release evaluated at 0.41
    with pytest.raises(
        RegisterError, match=r"test IoU 0.6, but the model in .*release was evaluated at 0.41"
    ):
        _register_with_iou(params, release, 0.6)
    assert _register_with_iou(params, release, 0.41)["version"] == "1"  # its own scores
    eval_path = Path("metrics/eval.json")
    for text, said in (("{not json", "not JSON"), ('{"f1": 0.5}', "no test IoU")):
        eval_path.write_text(text)
        with pytest.raises(RegisterError, match=f"eval.json: {said}"):
            run_register(params, model_dir=release, eval_path=eval_path)


def test_scores_of_eight_views_and_of_one_are_not_compared(project, caplog):
    """A version scored with evaluate.tta (the eight-view mean, higher for the same model)
    does not take the alias from a champion scored on one view, nor the reverse; once the
    champion is moved by hand, versions scored like it are compared as before."""
    params, release = project
    plain = _register_with_iou(params, release, 0.50)  # an eval.json without views: one view
    assert plain["alias"] == "champion" and plain["views"] == 1
    tta = _register_with_iou(params, release, 0.60, views=8)
    assert (tta["alias"], tta["previous_champion_iou"]) == ("challenger", 0.5)
    assert "not comparable" in caplog.text and "pipeline models promote 2" in caplog.text
    tags = registry.list_versions("road-unet")[0]["tags"]
    assert (tags["views"], tags["threshold_tta"]) == ("8", "-")

    promote(params, "2")
    better = _register_with_iou(params, release, 0.61, views=8)
    assert better["alias"] == "champion"
    worse_plain = _register_with_iou(params, release, 0.99, views=1)
    assert worse_plain["alias"] == "challenger", "one view is not compared with eight"
    assert registry.alias_version("road-unet", "champion") == "3"


def test_scores_on_other_test_data_are_not_compared(project, caplog):
    """Another split or relabelled test roads make another test set: a higher IoU there does
    not take the alias; the same test data scored again is compared as before."""
    params, release = project
    first = _register_with_iou(params, release, 0.50)
    assert first["alias"] == "champion"
    other = {"held": {"valid_pixels": 4096, "road_pixels": 310}}  # the same tile relabelled
    easier = _register_with_iou(params, release, 0.70, scenes=other)
    assert (easier["alias"], easier["previous_champion_iou"]) == ("challenger", 0.5)
    assert "other test data" in caplog.text and "pipeline models promote 2" in caplog.text
    assert easier["test_set"] != first["test_set"]
    tags = registry.list_versions("road-unet")
    assert [v["tags"]["test_set"] for v in tags] == [easier["test_set"], first["test_set"]]
    better = _register_with_iou(params, release, 0.55)
    assert better["alias"] == "champion", "the same test data is compared"
    # a champion registered before versions were tagged with their test set is compared
    assert _not_comparable({"views": "1", "test_iou": "0.5"}, 1, first["test_set"]) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_registry_with_a_real_mlflow_server(project, tmp_path, monkeypatch):
    params, release = project
    port = _free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        _check_registry_flow(params, release, dict(os.environ))
        assert not (tmp_path / "mlflow.db").exists(), "MLFLOW_TRACKING_URI must win over params"
        assert any((tmp_path / "server-artifacts").rglob("model.safetensors"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_model_card_describes_this_model_not_the_demo(tmp_path):
    from pipeline.register import model_card

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["register"]["model_name"] = "city-roads"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    config = ModelConfig(
        encoder="vgg16_bn",
        bands=["red", "green", "blue"],
        mean=[0.0] * 3,
        std=[1.0] * 3,
        chip_size=256,
        dtype="uint16",
        gsd_m=0.3,
        threshold=0.42,
    )
    card = model_card(
        load_params(tmp_path / "params.yaml"), config, {"iou": 0.61, "f1": 0.75}, "v7"
    )
    assert card.startswith("# city-roads v7")
    assert "3-band (red, green, blue) uint16 imagery" in card and "0.3 m" in card
    assert "R, G, B, NIR" not in card
    assert "| iou | 0.6100 |" in card and "0.420" in card
    assert "Recall by road class" not in card  # no classes evaluated, no table
    assert "colour jitter 0.1" in card and "band mean and standard deviation" in card
    assert "(whole scenes, stitched like predict)" in card
    p["train"].update(normalisation="percentile", colour_jitter=0.4, scale_jitter=0.25)
    p["evaluate"]["tta"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    travelling = model_card(
        load_params(tmp_path / "params.yaml"),
        config.model_copy(update={"normalisation": "percentile", "threshold_tta": 0.38}),
        {"iou": 0.61},
    )
    assert "validation chips, chosen by train): 0.420; with `predict --tta` 0.380" in travelling
    assert "predict --tta" not in card
    assert "colour jitter 0.4, zoom up to 1.25x" in travelling
    assert "2-98 % band percentiles" in travelling and "stitched like predict --tta" in travelling
    p["train"].update(normalisation="dataset", colour_jitter=0.1, scale_jitter=0.0)
    p["evaluate"]["tta"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))

    metrics = {
        "iou": 0.61,
        "recall_by_class": {"motorway": 0.99, "track": 0.375},
        "road_pixels_by_class": {"motorway": 1000, "track": 80},
    }
    card = model_card(load_params(tmp_path / "params.yaml"), config, metrics, "v8")
    assert "Recall by road class (`road_class`)" in card
    assert "| track | 80 | 0.375 |" in card and "| motorway | 1000 | 0.990 |" in card
    assert "## Other sources\nNot measured: add a scene or tile set" in card

    metrics = {
        "iou": 0.61,
        "relaxed_break_even": 0.84,
        "recall": 0.7,
        "iou_at_test_best": 0.62,
        "transfer": {
            "ottawa": {
                "iou": 0.24,
                "relaxed_break_even": 0.73,
                "recall": 0.3,
                "iou_at_source_best": 0.31,
                "scenes": 1,
                "pixel_size_m": 0.21,
                "apls": 0.125,
            },
            "ottawa_11": {  # square-degree pixels at 45 N, as RoadNet ships Ottawa-11
                "iou": 0.36,
                "relaxed_break_even": 0.658,
                "recall": 0.376,
                "iou_at_source_best": 0.444,
                "scenes": 1,
                "pixel_size_m": 0.25,
                "pixel_width_m": 0.21,
                "pixel_height_m": 0.298,
                "apls": 0.126,
            },
        },
    }
    card = model_card(load_params(tmp_path / "params.yaml"), config, metrics, "v9", test_scenes=2)
    # no network scored on the test scenes; one on the transfer source
    assert (
        "| test scenes (this data) | 2 | 0.3 | 0.610 | 0.840 | 0.700 | 0.620 | not scored |" in card
    )
    assert "| ottawa | 1 | 0.21 | 0.240 | 0.730 | 0.300 | 0.310 | 0.125 |" in card
    assert "| ottawa_11 | 1 | 0.21 x 0.3 | 0.360 | 0.658 | 0.376 | 0.444 | 0.126 |" in card
    assert "| iou | 0.6100 |" in card  # the headline table keeps the test scenes only
    config = config.model_copy(update={"init_from": "models:/city-roads@champion"})
    assert "fine-tuned from models:/city-roads@champion" in model_card(
        load_params(tmp_path / "params.yaml"), config, metrics
    )


def test_a_missing_sqlite_store_is_named_not_created(tmp_path, monkeypatch):
    """predict run outside the project folder: a clear error, and no empty mlflow.db left there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(LookupError, match=rf"no MLflow store at {tmp_path}/mlflow\.db.*--model"):
        registry.download_model_dir("models:/road-unet@champion", "sqlite:///mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_later_default_store_is_used_unless_the_user_set_one(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; configure() takes that back, so a
    notebook that predicts with one store and then another gets the second, while a variable
    the user set still wins."""
    import mlflow

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = f"sqlite:///{tmp_path}/first.db", f"sqlite:///{tmp_path}/second.db"
    assert registry.configure(first) == first
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert registry.configure(second) == second
    assert mlflow.get_tracking_uri() == second and mlflow.get_registry_uri() == second
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)
    assert registry.configure(second) == first and os.environ["MLFLOW_TRACKING_URI"] == first
    assert mlflow.get_tracking_uri() == first


def test_the_versions_run_shows_the_model_card_and_the_evaluation(project):
    """What the MLflow UI shows of a new version: the model card as the description of the
    version, of its source model and of its source run (the training run), and in that run under
    evaluation/ the metrics, each test scene's error
    map and quicklook from reports/, and a precision-recall figure drawn from plots/pr.csv."""
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np

    params, release = project
    Path("reports").mkdir()
    for name in ("held_error_map.png", "held_quicklook.png"):
        plt.imsave(Path("reports") / name, np.eye(8))
    Path("plots").mkdir()
    Path("plots/pr.csv").write_text(
        "threshold,precision,recall,f1,iou,relaxed_precision,relaxed_recall\n"
        "0.1,0.3,0.9,0.45,0.29,0.4,0.95\n0.5,0.6,0.6,0.6,0.43,0.7,0.7\n0.9,0.9,0.2,0.33,0.2,0.95,0.3\n"
    )
    receipt = _register_with_iou(params, release, 0.5)

    client = mlflow.tracking.MlflowClient(registry.tracking_uri(params.register.tracking_uri))
    run = client.get_run(receipt["run_id"])
    card = run.data.tags["mlflow.note.content"]
    assert card.startswith("# road-unet") and "iou" in card
    version = client.get_model_version("road-unet", receipt["version"])
    assert version.description == card
    source_model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert source_model.tags["mlflow.note.content"] == card
    logged = {a.path for a in client.list_artifacts(receipt["run_id"], "evaluation")}
    assert logged == {
        "evaluation/eval.json",
        "evaluation/held_error_map.png",
        "evaluation/held_quicklook.png",
        "evaluation/pr_curve.png",
    }
    figure = Path(client.download_artifacts(receipt["run_id"], "evaluation/pr_curve.png"))
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_test_set_with_an_unscored_scene_keeps_its_id():
    """A scene without a valid pixel was a (name, 0, 0) row of per_scene before 2026-12-08
    and is named in unscored_scenes since: the test set's id, which register compares with
    the champion's, stays the same."""
    from pipeline.register import test_set_id

    scored = {"a": {"valid_pixels": 10, "road_pixels": 3, "iou": 0.5}}
    before = {"per_scene": {**scored, "b": {"valid_pixels": 0, "road_pixels": 0, "iou": 1.0}}}
    since = {"per_scene": scored, "unscored_scenes": ["b"]}
    assert test_set_id(since) == test_set_id(before) != test_set_id({"per_scene": scored})
