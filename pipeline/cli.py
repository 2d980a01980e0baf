"""`pipeline <stage>`: parse arguments, load Params, call one stage function. Nothing else."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pipeline.config import (
    PRECISIONS,
    ConfigError,
    Params,
    PredictParams,
    RegisterParams,
    load_params,
)
from pipeline.parallel import DeviceError

EVALUATED_MODEL_DIR = Path("models/release")
DEFAULT_PARAMS = Path("params.yaml")


def _params_path(args: argparse.Namespace) -> Path:
    return Path(args.params) if args.params else DEFAULT_PARAMS


def _params(args: argparse.Namespace) -> Params:
    return load_params(_params_path(args))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def cmd_synth(args: argparse.Namespace) -> None:
    from pipeline.synth import run_synth

    files = run_synth(_params(args).synth)
    for f in files:
        print(f"wrote {f.image}")


def cmd_tile(args: argparse.Namespace) -> None:
    from pipeline.tiling import run_tile

    p = _params(args)
    stats = run_tile(p.data, p.tile, workers=args.workers, progress=not args.quiet)
    print(f"chips: {stats['counts']}  ->  {p.tile.out_dir}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from pipeline.pretrain import pretrain_backbone

    p = _params(args)
    archs = [args.arch] if args.arch else p.pretrain.archs
    for arch in archs:
        result = pretrain_backbone(arch, p.pretrain, p.tile.out_dir, p.register)
        print(
            f"{arch}: val accuracy {result.get('val_accuracy', float('nan')):.3f} -> {p.pretrain.weights_path(arch)}"
        )


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline.train import run_train

    p = _params(args)
    metrics = run_train(
        p.train, p.tile, p.pretrain, p.register, resume=args.resume, params_file=_params_path(args)
    )
    print(json.dumps(metrics, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    import shutil

    from pipeline.evaluate import run_evaluate

    p = _params(args)
    # Evaluate writes its test metrics into a copy: train's output stays as DVC stored it. The
    # copy is evaluated beside the old release and swapped in only on success, so a failed
    # evaluate never leaves a release that metrics/eval.json does not describe.
    out = EVALUATED_MODEL_DIR
    staging = out.with_name(f".{out.name}.part")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(p.train.out_dir, staging)
    try:
        metrics = run_evaluate(p.evaluate, p.data, p.tile, staging, p.register)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))


def cmd_register(args: argparse.Namespace) -> None:
    from pipeline.register import run_register

    p = _params(args)
    receipt = run_register(p, model_dir=EVALUATED_MODEL_DIR, eval_path=p.evaluate.metrics_path)
    print(
        f"registered {receipt['model_name']} v{receipt['version']} as @{receipt['alias']} (test IoU {receipt['test_iou']:.4f})"
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline.predict_batch import batch_targets, predict_batch

    # predict works without a params.yaml (a user's own folder): then the defaults apply; a
    # --params file that is given must exist
    p = _params(args) if args.params or DEFAULT_PARAMS.exists() else None
    d = p.predict if p else PredictParams()
    reg = p.register if p else RegisterParams()
    predict_batch(
        batch_targets([Path(i) for i in args.image], args.output, args.vectors),
        scheduler=args.scheduler,
        workers=d.workers if args.workers is None else args.workers,
        device=args.device or d.device,
        skip_existing=args.skip_existing,
        overwrite=args.overwrite,
        report_error=lambda line: print(line, file=sys.stderr),
        model=args.model or d.model or f"models:/{reg.model_name}@champion",
        window=d.window if args.window is None else args.window,
        overlap=d.overlap if args.overlap is None else args.overlap,
        batch_size=d.batch_size if args.batch_size is None else args.batch_size,
        windows_per_task=d.windows_per_task
        if args.windows_per_task is None
        else args.windows_per_task,
        precision=args.precision or d.precision,
        tta=args.tta,
        vector_min_spur_m=d.vector_min_spur_m,
        vector_simplify_m=d.vector_simplify_m,
        dtype=args.dtype,
        tracking_default=reg.tracking_uri,
        progress=not args.quiet,
    )


def cmd_models(args: argparse.Namespace) -> None:
    from pipeline import registry

    p = _params(args)
    if args.action == "promote":
        from pipeline.register import promote

        promote(p, args.version)
        print(f"{p.register.model_name} v{args.version} is now @champion")
        return
    registry.configure(p.register.tracking_uri)
    print(f"{'version':>7}  {'aliases':<22} {'test_iou':>8}  {'encoder':<12} commit")
    for v in registry.list_versions(p.register.model_name):
        t = v["tags"]
        print(
            f"{v['version']:>7}  {','.join(v['aliases']):<22} {t.get('test_iou', '')[:8]:>8}  "
            f"{t.get('encoder', ''):<12} {t.get('git_commit', '')[:10]}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="roadseg: road segmentation from satellite and aerial rasters. "
        "Stages read their section of params.yaml; `dvc repro` runs them in order.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str, description: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description)
        sp.add_argument("--params", default=None, help="parameters file (default: params.yaml)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        sp.set_defaults(func=fn)
        return sp

    add(
        "synth",
        cmd_synth,
        "generate synthetic scenes",
        "Write synthetic 4-band GeoTIFF scenes with road centrelines (GeoPackage, EPSG:4326) and "
        "land cover to synth.out_dir. Deterministic for each scene's seed.",
    )
    sp = add(
        "tile",
        cmd_tile,
        "cut scenes into chips with a spatial split",
        "Cut the scenes in data.scenes into image/mask chips, burn road masks from the vectors, "
        "assign train/val/test by blocks of area, write the chip index and band statistics.",
    )
    sp.add_argument(
        "--workers", type=_positive_int, default=None, help="Dask workers (default: tile.workers)"
    )
    sp = add(
        "pretrain",
        cmd_pretrain,
        "pretrain a zoo backbone as a patch classifier on the chips (pretrain.task)",
        "Train a classifier from the zoo (lenet5, alexnet, vgg*, googlenet, resnet*) on patches of "
        "the chips: land cover, classes from the road masks, or rotation (pretrain.task); writes "
        "models/backbones/<arch>.safetensors + .json.",
    )
    sp.add_argument("arch", nargs="?", help="backbone (default: every arch in pretrain.archs)")
    sp = add(
        "train",
        cmd_train,
        "train the road U-Net",
        "Train smp.Unet with the zoo encoder train.encoder on the chips; keeps the best model by "
        "val IoU in train.out_dir, with the threshold that is F1-best on the val chips; tracked "
        "in MLflow.",
    )
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    add(
        "evaluate",
        cmd_evaluate,
        "evaluate on the held-out test scenes",
        "Predict every test scene whole (same code as predict), compute IoU/F1/relaxed metrics at "
        "the model's threshold (and, as an optimistic reference, at the test F1-best one), write "
        "metrics/eval.json, plots/ and reports/.",
    )
    add(
        "register",
        cmd_register,
        "register the model in MLflow",
        "Register a new version of the model; alias 'champion' moves only if the test IoU is at "
        "least the champion's, otherwise 'challenger'.",
    )
    sp = add(
        "predict",
        cmd_predict,
        "predict roads on a raster of any size",
        "Dask-parallel, windowed prediction over any GDAL raster; writes a Cloud Optimised "
        "GeoTIFF of road probability with the input's CRS, transform and nodata.",
    )
    sp.add_argument(
        "image",
        nargs="+",
        help="input raster(s) (GeoTIFF, COG, VRT, ...); several share one cluster and one model load",
    )
    sp.add_argument(
        "-o",
        "--output",
        help="output GeoTIFF (default: <image>_roads.tif beside it); with several images, a folder",
    )
    sp.add_argument(
        "--model",
        help="models:/NAME@ALIAS, runs:/… or a model folder (default: predict.model, else models:/<register.model_name>@champion)",
    )
    sp.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:PORT)")
    sp.add_argument(
        "--workers",
        type=_positive_int,
        help="local workers (default: one per GPU, else per 4 cores)",
    )
    sp.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="torch device (default: auto)"
    )
    sp.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        help="autocast precision (default: predict.precision; auto: bf16 on CUDA, fp32 on CPU; "
        "bf16 on a CPU with AMX is ~3.7x faster, but pixels then depend on the thread count by a few 1/254 steps)",
    )
    sp.add_argument(
        "--batch-size",
        type=_positive_int,
        help="windows per forward pass (default: 2 on CPU, fitted to GPU memory)",
    )
    sp.add_argument(
        "--windows-per-task",
        type=_positive_int,
        help="windows per Dask task (default: predict.windows_per_task)",
    )
    sp.add_argument("--window", type=_positive_int, help="window side in pixels (multiple of 32)")
    sp.add_argument("--overlap", type=_non_negative_int, help="overlap between windows in pixels")
    sp.add_argument("--tta", action="store_true", help="average the eight dihedral transforms")
    sp.add_argument(
        "--vectors",
        help="also write road centrelines to this GeoPackage; with several images, a folder",
    )
    sp.add_argument(
        "--dtype", choices=["uint8", "float32"], default="uint8", help="output sample type"
    )
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sp.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out images whose outputs all exist (resume an interrupted run over many images)",
    )
    sp = add(
        "models",
        cmd_models,
        "list registered versions, or promote one",
        "List the versions of the registered model with aliases and metrics, or move "
        "'champion' to a version by hand.",
    )
    sp.add_argument("action", nargs="?", choices=["list", "promote"], default="list")
    sp.add_argument("version", nargs="?", help="version to promote")
    return parser


OWN_LOGGERS = ("pipeline", "backbones")


def configure_logging(*, verbose: bool) -> None:
    """Our own progress messages at INFO (DEBUG with -v); other libraries' only from WARNING.

    Without this a `dvc repro` prints dozens of INFO lines from Dask's scheduler and nannies,
    pyogrio and matplotlib around every stage. Dask configures its ``distributed`` logger
    itself when it is imported, in this process and in every worker process it spawns, so its
    level is set through Dask's config in the environment, which the workers inherit (a value
    the user exported wins).
    """
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose)
    if getattr(args, "quiet", False):
        # -q promises no progress bars: MLflow draws its own when it copies model artifacts
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if getattr(args, "action", None) == "promote" and not args.version:
        parser.error("models promote needs a VERSION")
    try:
        args.func(args)
    except (
        ConfigError,
        FileNotFoundError,
        FileExistsError,
        LookupError,
        ValueError,
        DeviceError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
