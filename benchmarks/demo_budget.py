"""Accuracy against CPU time for the demo's recipe and its variants: what each lever of
`make demo`'s training (decoder width, road-weighted sampling, epochs, learning rate,
pretraining budget...) buys per CPU minute.

Each variant is params.yaml with ``-S``-style overrides (``train.epochs=8``,
``train.decoder_channels=[128,64,32,16,16]``). For each, in this checkout (the chips of
``dvc repro tile`` must exist), the script runs the real stages with a params file of its own:
``pipeline pretrain`` when the variant changes ``pretrain.*`` (into its own folder), then
``pipeline train`` and ``pipeline evaluate`` on the held-out scene, with the model, metrics,
release and MLflow store under ``--out/<variant>``. It prints one row per variant (stage wall
and CPU seconds, best validation IoU, held-out IoU at the model's threshold, relaxed
break-even) and the validation curve (IoU at 0.5 against cumulative training seconds), and
writes them to ``--out/summary.json``.

    python benchmarks/demo_budget.py --variant base train.epochs=8 \\
        --variant narrow train.epochs=8 'train.decoder_channels=[128,64,32,16,16]'

Time it alone: two CPU-heavy jobs on 2 cores halve each other's speed (CPU seconds are
reported beside wall seconds for that reason).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def parse_variants(raw: list[list[str]]) -> dict[str, dict[str, object]]:
    """``--variant NAME key=value ...`` -> {NAME: {dotted key: YAML-parsed value}}."""
    variants = {}
    for name, *pairs in raw:
        overrides = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise SystemExit(f"--variant {name}: {pair!r} is not key=value")
            overrides[key] = yaml.safe_load(value)
        variants[name] = overrides
    return variants


def pretrains(overrides: dict[str, object]) -> bool:
    """Whether the variant changes how the backbones are pretrained (``pretrain.out_dir`` alone
    reuses another variant's backbones)."""
    return any(k.startswith("pretrain.") and k != "pretrain.out_dir" for k in overrides)


def variant_params(base: dict, overrides: dict[str, object], out: Path) -> dict:
    """params.yaml with ``overrides`` applied and every output moved under ``out``."""
    params = json.loads(json.dumps(base))
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        params[section][field] = value
    params["train"]["out_dir"] = str(out / "unet")
    if pretrains(overrides) and "pretrain.out_dir" not in overrides:
        params["pretrain"]["out_dir"] = str(out / "backbones")
    params["evaluate"].update(
        metrics_path=str(out / "eval.json"),
        plots_dir=str(out / "plots"),
        reports_dir=str(out / "reports"),
        release_dir=str(out / "release"),
    )
    params["register"]["tracking_uri"] = f"sqlite:///{out}/mlflow.db"
    return params


def timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` in the checkout; (wall s, CPU s of it and its children). Exits on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        done = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run_variant(name: str, overrides: dict, base: dict, out_root: Path) -> dict:
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    params = variant_params(base, overrides, out)
    params_file = out / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    log = out / "log.txt"
    row: dict = {"variant": name, "overrides": overrides}
    if pretrains(overrides):
        for arch in params["pretrain"]["archs"]:
            cmd = [str(BIN / "pipeline"), "pretrain", arch, "-q", "--params", str(params_file)]
            row["pretrain_wall_s"], row["pretrain_cpu_s"] = timed(cmd, log)
    cmd = [str(BIN / "pipeline"), "train", "--params", str(params_file)]
    row["train_wall_s"], row["train_cpu_s"] = timed(cmd, log)
    plot = (ROOT / "plots" / "train.csv").read_text()  # the train stage's DVC plot
    (out / "train.csv").write_text(plot)
    history = list(csv.DictReader(plot.splitlines()))
    elapsed, curve = 0.0, []
    for r in history:
        elapsed += float(r["seconds"])
        curve.append((round(elapsed), round(float(r["val_iou"]), 3)))
    row["curve"] = curve
    row["best_val_iou"] = max(iou for _, iou in curve)
    row["chips_per_s"] = sum(float(r["chips_per_s"]) for r in history) / len(history)
    cmd = [str(BIN / "pipeline"), "evaluate", "-q", "--params", str(params_file)]
    row["evaluate_wall_s"], row["evaluate_cpu_s"] = timed(cmd, log)
    metrics = json.loads((out / "eval.json").read_text())
    row["heldout_iou"] = metrics["iou"]
    row["relaxed_break_even"] = metrics.get("relaxed_break_even")
    row["threshold"] = metrics.get("threshold")
    return row


def print_row(row: dict) -> None:
    pre = (
        f"pretrain {row['pretrain_wall_s']:.0f}/{row['pretrain_cpu_s']:.0f} s, "
        if "pretrain_wall_s" in row
        else ""
    )
    print(
        f"{row['variant']}: {pre}train {row['train_wall_s']:.0f} s wall / {row['train_cpu_s']:.0f} s CPU "
        f"({row['chips_per_s']:.1f} chips/s), best val IoU {row['best_val_iou']:.3f}, "
        f"held-out IoU {row['heldout_iou']:.3f} at {row['threshold']}, "
        f"relaxed break-even {row['relaxed_break_even']:.3f}",
        flush=True,
    )
    print("   val IoU by training seconds: " + ", ".join(f"{s} s {iou}" for s, iou in row["curve"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME K=V")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=Path, default=Path("/tmp/demo_budget"))
    args = ap.parse_args()
    base = yaml.safe_load(args.params.read_text())
    summary = args.out / "summary.json"
    rows = json.loads(summary.read_text()) if summary.exists() else []
    for name, overrides in parse_variants(args.variant).items():
        row = run_variant(name, overrides, base, args.out)
        print_row(row)
        rows = [r for r in rows if r["variant"] != name] + [row]
        summary.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
