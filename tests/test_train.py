"""The train stage: a real run on real chips, MLflow tracking, and exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from pipeline.config import PretrainParams, TrainParams, load_params
from pipeline.datasets import Normalisation, SegmentationChips, dihedral, read_stats
from pipeline.model import load_model
from tests.conftest import scene_entries

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_params(tmp_path: Path, scenes_dir: Path, chips_dir: Path, **train) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["scenes"] = scene_entries(scenes_dir)
    p["tile"].update(out_dir=str(chips_dir), chip_size=64, stride=64)
    p["pretrain"].update(out_dir=str(tmp_path / "backbones"))
    p["train"].update(
        dict(
            out_dir=str(tmp_path / "models/unet"),
            epochs=3,
            batch_size=4,
            max_batches_per_epoch=3,
            warmup_epochs=0.5,
            encoder_weights="none",
        ),
        **train,
    )
    p["register"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def test_dataset_applies_one_dihedral_transform_to_image_mask_and_valid(chips_dir):
    stats = read_stats(chips_dir)
    norm = Normalisation.from_lists(stats["mean"], stats["std"])
    plain = SegmentationChips(chips_dir, "train", norm)
    aug = SegmentationChips(chips_dir, "train", norm, augment=True, seed=1, jitter=0.0)
    for i in range(min(6, len(plain))):
        x0, y0, v0 = plain[i]
        x1, y1, v1 = aug[i]
        matches = [
            k
            for k in range(8)
            if np.array_equal(dihedral(y0.numpy(), k), y1.numpy())
            and np.array_equal(dihedral(v0.numpy(), k), v1.numpy())
            and np.allclose(dihedral(x0.numpy(), k), x1.numpy(), atol=1e-5)
        ]
        assert matches, f"chip {i}: augmented chip is no dihedral transform of the original"
    # nodata pixels are zero after normalisation and flagged invalid
    x, y, v = next(plain[i] for i in range(len(plain)) if plain[i][2].min() == 0)
    assert torch.all(x[:, v[0] == 0] == 0)


def _pattern(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A road square, a nodata corner, and an image whose band 0 is bright on the road and whose
    band 1 holds each pixel's column index (so the image's own geometry can be checked)."""
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    y = np.zeros((size, size), np.float32)
    y[24:40, 16:32] = 1
    v = (rows + cols >= 30).astype(np.float32)
    x = np.stack([4 * y, cols]) * v[None]
    return x.astype(np.float32), y, v


def test_rescale_keeps_image_mask_and_nodata_aligned():
    from scipy import ndimage

    from pipeline.datasets import rescale

    x, y, v = _pattern()
    c = (64 - 1) / 2
    for s in (1.5, 0.8):
        xs, ys, vs = rescale(x, y, v, s)
        assert xs.shape == x.shape and ys.shape == y.shape and vs.shape == v.shape
        assert set(np.unique(ys)) <= {0.0, 1.0} and set(np.unique(vs)) <= {0.0, 1.0}
        # the road square is zoomed about the centre: 16 px -> 16 * s
        r, q = np.nonzero(ys)
        assert q.max() - q.min() + 1 == pytest.approx(16 * s, abs=1)
        assert r.min() == pytest.approx(c + (24 - c) * s, abs=1)
        # the image's road sits on the mask's road: where the mask (nearest) says road, the
        # nearest source pixel is road and carries >= 1/4 of the bilinear weight, so band 0 >= 1;
        # where it says background, band 0 <= 3. A one-pixel shift breaks this.
        road, ok = ys > 0.5, vs > 0.5
        assert np.all(xs[0][road & ok] >= 1 - 1e-4) and np.all(xs[0][~road & ok] <= 3 + 1e-4)
        assert np.all(xs[0][ndimage.binary_erosion(road)] == pytest.approx(4))
        # the image's own geometry: an interior pixel shows the column it came from
        inside = ndimage.binary_erosion(vs > 0.5, iterations=2)
        cols = np.broadcast_to(np.arange(64, dtype=np.float32), (64, 64))
        assert np.allclose(xs[1][inside], (c + (cols - c) / s)[inside], atol=1e-3)
        # nodata is zero in the image, and the zoomed nodata corner is still there
        assert np.all(xs[:, vs == 0] == 0)
        assert vs[0, 0] == 0 and vs[32, 32] == 1
    # zooming out pulls in pixels from outside the chip: they are nodata, not background
    xs, ys, vs = rescale(x, y, v, 0.8)
    assert np.all(vs[:, -3:] == 0) and np.all(vs[-3:, :] == 0) and np.all(ys[-3:, :] == 0)


def test_colour_jitter_setting_reaches_the_train_chips_only(chips_dir):
    """`train.colour_jitter` sets how far each band's brightness moves: 0 leaves the dihedral
    copy exactly, a larger value moves bands further than the default 0.1 can; validation
    chips are never jittered."""
    from pipeline.config import TileParams
    from pipeline.train import chip_datasets

    stats = read_stats(chips_dir)
    norm = Normalisation.from_lists(stats["mean"], stats["std"])
    tile = TileParams(out_dir=chips_dir, chip_size=64, stride=64)
    plain = SegmentationChips(chips_dir, "train", norm)

    def largest_shift(colour_jitter: float) -> float:
        train_ds, val_ds = chip_datasets(TrainParams(colour_jitter=colour_jitter), tile, norm)
        assert not val_ds.augment
        shifts = []
        for i in range(min(8, len(plain))):
            x0, x1, v1 = plain[i][0].numpy(), train_ds[i][0].numpy(), train_ds[i][2].numpy()
            ok = v1[0] > 0
            moved = [np.abs(x1 - dihedral(x0, k))[:, ok].mean(axis=1).max() for k in range(8)]
            shifts.append(min(moved))
        return float(max(shifts))

    assert largest_shift(0.0) < 1e-5
    assert largest_shift(0.6) > 0.2 > largest_shift(0.1) * 0.9


def test_dataset_scale_jitter_is_applied_to_image_mask_and_valid_alike(chips_dir):
    from pipeline.datasets import rescale

    stats = read_stats(chips_dir)
    norm = Normalisation.from_lists(stats["mean"], stats["std"])
    plain = SegmentationChips(chips_dir, "train", norm)
    aug = SegmentationChips(
        chips_dir, "train", norm, augment=True, seed=1, jitter=0.0, scale_jitter=0.3
    )
    zoomed = 0
    for i in range(min(6, len(plain))):
        x0, y0, v0 = (t.numpy() for t in plain[i])
        rng = np.random.default_rng([1, 0, i])
        k = int(rng.integers(8))
        s = aug.draw_scale(rng)
        assert 1 / 1.3 <= s <= 1.3
        xe, ye, ve = rescale(dihedral(x0, k), dihedral(y0[0], k), dihedral(v0[0], k), s)
        x1, y1, v1 = (t.numpy() for t in aug[i])
        assert np.array_equal(y1[0], ye) and np.array_equal(v1[0], ve)
        assert np.allclose(x1, xe, atol=1e-5)
        assert np.all(x1[:, v1[0] == 0] == 0)
        zoomed += not np.array_equal(y1[0], dihedral(y0[0], k))
    assert zoomed, "scale jitter changed no chip"


def test_dihedral_group_has_eight_distinct_elements():
    a = np.arange(9).reshape(3, 3)
    assert len({dihedral(a, k).tobytes() for k in range(8)}) == 8


@pytest.mark.parametrize("loss", ["bce", "bce_dice", "bce_lovasz"])
def test_nodata_pixels_never_count_in_the_loss(loss):
    from pipeline.config import TrainParams
    from pipeline.train import masked_loss

    params = TrainParams(loss=loss)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, generator=g)
    target = (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    valid = torch.ones(2, 1, 16, 16)
    valid[:, :, :5] = 0
    base = masked_loss(logits, target, valid, params)
    other_logits, other_target = logits.clone(), target.clone()
    other_logits[:, :, :5] = 25.0 * torch.randn(2, 1, 5, 16, generator=g)
    other_target[:, :, :5] = 1.0 - other_target[:, :, :5]
    assert masked_loss(other_logits, other_target, valid, params).item() == pytest.approx(
        base.item(), rel=1e-6
    )
    # ...while the same change at valid pixels does move it
    moved_logits = logits.clone()
    moved_logits[:, :, 5:10] = 25.0 * torch.randn(2, 1, 5, 16, generator=g)
    assert abs(masked_loss(moved_logits, target, valid, params).item() - base.item()) > 1e-3


def test_lovasz_term_is_the_hand_computed_jaccard_hinge():
    """One road and one background pixel, both at logit 0: each hinge error is 1 and the Lovasz
    extension of the Jaccard loss weighs them to 1 (Berman 2018, Alg. 1); confident correct
    logits (margin >= 1) cost nothing; the nodata pixel never counts."""
    from pipeline.config import TrainParams
    from pipeline.train import masked_loss

    target = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    valid = torch.tensor([1.0, 1.0, 0.0]).reshape(1, 1, 1, 3)
    bce, lovasz = TrainParams(loss="bce"), TrainParams(loss="bce_lovasz")
    undecided = torch.tensor([0.0, 0.0, -9.0]).reshape(1, 1, 1, 3)
    extra = masked_loss(undecided, target, valid, lovasz) - masked_loss(
        undecided, target, valid, bce
    )
    assert extra.item() == pytest.approx(1.0)
    confident = torch.tensor([2.0, -2.0, -9.0]).reshape(1, 1, 1, 3)
    extra = masked_loss(confident, target, valid, lovasz) - masked_loss(
        confident, target, valid, bce
    )
    assert extra.item() == pytest.approx(0.0, abs=1e-7)


def test_train_writes_model_metrics_and_mlflow_run(tmp_path, scenes_dir, chips_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params_file = write_params(tmp_path, scenes_dir, chips_dir, epochs=2)
    p = load_params(params_file)
    from pipeline.train import run_train

    metrics = run_train(p.train, p.tile, p.pretrain, p.register, params_file=params_file)
    model, config = load_model(p.train.out_dir)
    assert config.bands == ["red", "green", "blue", "nir"] and config.encoder == "resnet18"
    assert config.mean == read_stats(chips_dir)["mean"]
    assert len(config.data_fingerprint) == 64
    out = model(torch.zeros(1, 4, 64, 64))
    assert out.shape == (1, 1, 64, 64)
    saved = json.loads(Path("metrics/train.json").read_text())
    assert saved == metrics and 0 <= saved["val_iou"] <= 1
    lines = Path("plots/train.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,train_loss")

    import mlflow

    mlflow.set_tracking_uri(p.register.tracking_uri)
    run_id = json.loads((p.train.out_dir / "run.json").read_text())["mlflow_run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.params["train.encoder"] == "resnet18"
    history = mlflow.MlflowClient().get_metric_history(run_id, "val_iou")
    assert len(history) == 2


def test_road_sampling_draws_chips_with_more_road_more_often(chips_dir):
    from pipeline.train import road_sampling_weights

    stats = read_stats(chips_dir)
    ds = SegmentationChips(
        chips_dir, "train", Normalisation.from_lists(stats["mean"], stats["std"])
    )
    fractions = ds.road_fractions()
    for i in (0, len(ds) - 1):  # against the chip itself
        _, y, v = ds[i]
        assert fractions[i] == pytest.approx(float((y * v).sum() / v.sum()))
    assert road_sampling_weights(ds, 0.0) is None
    weights = road_sampling_weights(ds, 2.0).numpy()
    assert weights.min() == pytest.approx(1.0 + 2.0 * fractions.min() / fractions.mean())
    assert np.argmax(weights) == np.argmax(fractions) and weights.mean() == pytest.approx(3.0)


def test_a_narrow_decoder_with_road_sampling_trains_and_is_saved_as_such(
    tmp_path, scenes_dir, chips_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    params_file = write_params(
        tmp_path,
        scenes_dir,
        chips_dir,
        epochs=1,
        decoder_channels=[32, 16, 16, 8, 8],
        road_sampling=3.0,
    )
    p = load_params(params_file)
    from pipeline.train import run_train

    metrics = run_train(p.train, p.tile, p.pretrain, p.register)
    model, config = load_model(p.train.out_dir)
    assert config.decoder_channels == [32, 16, 16, 8, 8]
    assert [b.conv2[0].out_channels for b in model.decoder.blocks] == [32, 16, 16, 8, 8]
    assert 0 <= metrics["val_iou"] <= 1


def test_weight_average_is_a_warmed_up_ema_of_weights_and_batchnorm_statistics():
    from pipeline.train import weight_average

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    assert weight_average(model, None) is None
    ema = weight_average(model, 0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}  # the first update copies
    ema.update_parameters(model)
    for t in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(4, 2, 8, 8))  # moves BatchNorm's running statistics and its batch count
        d = min(0.5, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() else d * expected[k] + (1 - d) * v
        ema.update_parameters(model)
    averaged = ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(averaged[k], v, atol=1e-6), k
    assert int(averaged["1.num_batches_tracked"]) == 3
    assert not torch.allclose(averaged["0.weight"], model.state_dict()["0.weight"])


def test_train_with_ema_saves_and_validates_the_averaged_weights(
    tmp_path, scenes_dir, chips_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    p = load_params(
        write_params(tmp_path, scenes_dir, chips_dir, epochs=1, ema_decay=0.9, precision="fp32")
    )
    from pipeline.train import load_checkpoint, run_train

    run_train(p.train, p.tile, p.pretrain, p.register)
    saved = load_file(str(p.train.out_dir / "model.safetensors"))
    ckpt = load_checkpoint(p.train.checkpoint_path)
    assert int(ckpt["ema"]["n_averaged"]) == 3  # one update per optimiser step
    for k, v in saved.items():
        assert torch.equal(v, ckpt["ema"][f"module.{k}"]), k
    differs = [
        k
        for k, v in saved.items()
        if v.is_floating_point() and not torch.equal(v, ckpt["model"][k])
    ]
    assert differs, "the saved model should be the average, not the last weights"
    model, config = load_model(p.train.out_dir)
    assert config.threshold == pytest.approx(
        _f1_best_threshold_on_val(model, chips_dir, p.train.batch_size), abs=1e-9
    )


def _f1_best_threshold_on_val(model, chips_dir: Path, batch_size: int) -> float:
    """The F1-best threshold of ``model`` on the val chips, valid pixels only, by plain numpy."""
    stats = read_stats(chips_dir)
    val = SegmentationChips(chips_dir, "val", Normalisation.from_lists(stats["mean"], stats["std"]))
    probs, truths, valids = [], [], []
    with torch.no_grad():
        for x, y, v in torch.utils.data.DataLoader(val, batch_size=batch_size):
            probs.append(torch.sigmoid(model(x)).numpy().ravel())
            truths.append(y.numpy().ravel() > 0.5)
            valids.append(v.numpy().ravel() > 0.5)
    valid = np.concatenate(valids)
    assert not valid.all(), "the val chips should include nodata for this check to mean something"
    prob, truth = np.concatenate(probs)[valid], np.concatenate(truths)[valid]
    thresholds = np.arange(101) / 100
    f1 = []
    for t in thresholds:
        pred = prob >= t
        tp = np.sum(pred & truth)
        denom = 2 * tp + np.sum(pred & ~truth) + np.sum(~pred & truth)
        f1.append(2 * tp / denom if denom else 1.0)
    return float(thresholds[int(np.argmax(f1))])


def test_threshold_is_f1_best_on_validation_chips(tmp_path, scenes_dir, chips_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # float32: the check below scores the saved model in float32, and bf16's rounding can move
    # the F1-best threshold by one step
    p = load_params(write_params(tmp_path, scenes_dir, chips_dir, epochs=2, precision="fp32"))
    from pipeline.train import run_train

    metrics = run_train(p.train, p.tile, p.pretrain, p.register)
    model, config = load_model(p.train.out_dir)
    expected = _f1_best_threshold_on_val(model, chips_dir, p.train.batch_size)
    assert config.threshold == pytest.approx(expected, abs=1e-9)
    assert metrics["threshold"] == config.threshold
    assert 0.0 <= metrics["val_iou_at_threshold"] <= 1.0
    assert metrics["val_f1_at_threshold"] >= metrics["val_f1"] - 1e-12  # F1-best beats 0.5 on val


def test_validation_chips_without_road_are_a_clear_error(
    tmp_path, scenes_dir, chips_dir, monkeypatch
):
    """With no road pixel in val, F1 is 0 at every threshold: the model would be saved with
    threshold 0.0 ("all is road") from its first epoch. Train refuses before any step."""
    import shutil

    from pipeline.chip_format import read_chip_index
    from pipeline.train import run_train

    roadless = tmp_path / "chips"
    shutil.copytree(chips_dir, roadless)
    val = read_chip_index(roadless, geometry=False).query("split == 'val'")
    assert len(val), "the fixture's chips should have a val split"
    for scene, rows in val.groupby("scene"):
        path = roadless / f"{scene}.masks.npy"
        masks = np.load(path)
        picked = rows["array_index"].astype(int).to_numpy()
        masks[picked] = np.where(masks[picked] == 1, 0, masks[picked])
        np.save(path, masks)
    monkeypatch.chdir(tmp_path)
    p = load_params(write_params(tmp_path, scenes_dir, roadless))
    with pytest.raises(ValueError, match=r"index.gpkg: the \d+ val chips hold no road pixel"):
        run_train(p.train, p.tile, p.pretrain, p.register)
    assert not p.train.out_dir.exists(), "nothing is saved"


def test_repo_weights_load_into_the_encoder(tmp_path, scenes_dir, chips_dir, monkeypatch):
    from backbones import build_backbone

    monkeypatch.chdir(tmp_path)
    params_file = write_params(
        tmp_path,
        scenes_dir,
        chips_dir,
        epochs=1,
        max_batches_per_epoch=1,
        encoder_weights="repo",
        lr=1e-12,
    )
    p = load_params(params_file)
    backbone = build_backbone("resnet18", num_classes=4, in_channels=4)
    p.pretrain.out_dir.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in backbone.state_dict().items()},
        str(p.pretrain.weights_path("resnet18")),
    )
    from pipeline.train import run_train

    run_train(p.train, p.tile, p.pretrain, p.register)
    model, _ = load_model(p.train.out_dir)
    pretrained = load_file(str(p.pretrain.weights_path("resnet18")))
    # with a vanishing learning rate the encoder still holds the pretrained weights
    enc = model.encoder.state_dict()
    conv1 = next(k for k in enc if k.endswith("conv1.weight"))
    assert torch.allclose(enc[conv1], pretrained[conv1], atol=1e-6)


def test_missing_pretrained_weights_is_a_clear_error(tmp_path, scenes_dir, chips_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = load_params(write_params(tmp_path, scenes_dir, chips_dir, encoder_weights="repo"))
    from pipeline.train import run_train

    with pytest.raises(
        FileNotFoundError, match="resnet18.safetensors: no pretrained resnet18"
    ) as e:
        run_train(p.train, p.tile, p.pretrain, p.register)
    # resnet18 is in pretrain.archs already: the fix is to run the stage, not to list it again
    assert "`dvc repro pretrain`" in str(e.value) and "add resnet18" not in str(e.value)


def test_missing_pretrained_weights_of_an_unlisted_encoder(tmp_path):
    from pipeline.train import init_encoder

    train = TrainParams(encoder="resnet34", encoder_weights="repo")
    pretrain = PretrainParams(archs=["resnet18"], out_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="add resnet34 to pretrain.archs, then run"):
        init_encoder(None, train, pretrain)


@pytest.mark.slow
def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tmp_path, scenes_dir, chips_dir):
    """With EMA, the hardest case: the last weights and their average must both resume (the
    checkpoint's `model` part is what a run without EMA resumes from)."""
    ema_decay = 0.9
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    results = {}
    for name in ("straight", "killed"):
        work = tmp_path / name
        work.mkdir()
        params_file = write_params(work, scenes_dir, chips_dir, epochs=4, ema_decay=ema_decay)
        cmd = [str(BIN / "pipeline"), "train", "-q", "--params", str(params_file)]
        if name == "straight":
            subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True, timeout=600)
        else:
            ckpt = work / "models/checkpoints/unet_last.pt"
            proc = subprocess.Popen(
                cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.time() + 300
            while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert not (work / "models/unet/model.safetensors").exists()
            subprocess.run(
                cmd + ["--resume"], cwd=work, env=env, check=True, capture_output=True, timeout=600
            )
        from pipeline.train import load_checkpoint

        results[name] = (
            load_file(str(work / "models/unet/model.safetensors")),
            json.loads((work / "metrics/train.json").read_text()),
            load_checkpoint(work / "models/checkpoints/unet_last.pt"),
        )
    (w_a, m_a, c_a), (w_b, m_b, c_b) = results["straight"], results["killed"]
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        assert torch.equal(w_a[k], w_b[k]), k
    for key in ("val_iou", "val_f1", "best_epoch", "epochs"):
        assert m_a[key] == m_b[key], key
    for part in ("model", "ema"):  # the last weights, and their average
        assert c_a[part].keys() == c_b[part].keys()
        for k in c_a[part]:
            assert torch.equal(c_a[part][k], c_b[part][k]), f"{part}.{k}"


def test_resume_refuses_a_checkpoint_of_other_params(tmp_path, scenes_dir, chips_dir, monkeypatch):
    from pipeline.train import run_train

    monkeypatch.chdir(tmp_path)
    p = load_params(
        write_params(tmp_path, scenes_dir, chips_dir, epochs=2, max_batches_per_epoch=1)
    )
    assert run_train(p.train, p.tile, p.pretrain, p.register, stop_after_epoch=0) == {
        "stopped_after_epoch": 0
    }
    assert p.train.checkpoint_path.exists()

    changed = p.train.model_copy(update={"lr": p.train.lr * 10})
    with pytest.raises(
        ValueError, match=r"unet_last.pt: cannot resume a different run \(train.lr: "
    ):
        run_train(changed, p.tile, p.pretrain, p.register, resume=True)
    assert not (p.train.out_dir / "model.safetensors").exists()  # nothing was published

    metrics = run_train(
        p.train, p.tile, p.pretrain, p.register, resume=True
    )  # the same run resumes
    assert metrics["epochs"] == 2 and (p.train.out_dir / "model.safetensors").exists()


def test_fine_tune_starts_from_the_given_model_and_keeps_its_normalisation(
    tmp_path, scenes_dir, chips_dir, monkeypatch
):
    from pipeline.train import run_train

    monkeypatch.chdir(tmp_path)
    p = load_params(
        write_params(tmp_path, scenes_dir, chips_dir, epochs=1, max_batches_per_epoch=2)
    )
    run_train(p.train, p.tile, p.pretrain, p.register)
    source_dir = tmp_path / "source"
    p.train.out_dir.rename(source_dir)
    # the source model normalises otherwise than these chips' statistics would
    cfg = json.loads((source_dir / "model.json").read_text())
    cfg["mean"] = [m + 3.0 for m in cfg["mean"]]
    (source_dir / "model.json").write_text(json.dumps(cfg))

    tuned = p.train.model_copy(
        update={"init_from": str(source_dir), "lr": 1e-12, "max_batches_per_epoch": 1}
    )
    run_train(tuned, p.tile, p.pretrain, p.register)
    model, config = load_model(p.train.out_dir)
    assert config.init_from == str(source_dir)
    assert config.mean == cfg["mean"] and config.mean != read_stats(chips_dir)["mean"]
    source = load_file(str(source_dir / "model.safetensors"))
    weights = model.state_dict()
    convs = [k for k in source if k.endswith("conv1.weight") or k.startswith("segmentation_head")]
    assert len(convs) >= 3
    for key in convs:  # with a vanishing learning rate the network still holds the source's weights
        assert torch.allclose(weights[key], source[key], atol=1e-6), key

    # a fresh network (random encoder, same seed) is far from them: the check above means something
    scratch = p.train.model_copy(
        update={"lr": 1e-12, "max_batches_per_epoch": 1, "seed": 7, "out_dir": tmp_path / "scratch"}
    )
    run_train(scratch, p.tile, p.pretrain, p.register)
    fresh, _ = load_model(tmp_path / "scratch")
    assert not torch.allclose(fresh.state_dict()[convs[0]], source[convs[0]], atol=1e-3)


def test_fine_tune_from_an_incompatible_model_is_a_clear_error(
    tmp_path, scenes_dir, chips_dir, monkeypatch
):
    from pipeline.train import run_train

    monkeypatch.chdir(tmp_path)
    p = load_params(
        write_params(tmp_path, scenes_dir, chips_dir, epochs=1, max_batches_per_epoch=1)
    )
    run_train(p.train, p.tile, p.pretrain, p.register)
    other = p.train.model_copy(
        update={
            "init_from": str(p.train.out_dir),
            "encoder": "resnet34",
            "out_dir": tmp_path / "tuned",
        }
    )
    with pytest.raises(
        ValueError,
        match=r"unet: cannot fine-tune from this model \(encoder 'resnet18' there, "
        r"train.encoder 'resnet34' here\)",
    ):
        run_train(other, p.tile, p.pretrain, p.register)
    with pytest.raises(FileNotFoundError, match="nowhere: no model folder here"):
        run_train(
            other.model_copy(update={"init_from": str(tmp_path / "nowhere")}),
            p.tile,
            p.pretrain,
            p.register,
        )


def test_resume_refuses_when_the_fine_tuning_source_changed(tmp_path):
    from pipeline.config import TrainParams
    from pipeline.train import check_resumable, run_identity

    params = TrainParams(init_from="models:/road-unet@champion")
    saved = {"identity": json.dumps(run_identity(params, "chips", "digest-then"))}
    check_resumable(tmp_path / "ckpt.pt", saved, run_identity(params, "chips", "digest-then"))
    with pytest.raises(
        ValueError, match=r"the weights of train.init_from 'models:/road-unet@champion' changed"
    ):
        check_resumable(tmp_path / "ckpt.pt", saved, run_identity(params, "chips", "digest-now"))
