"""`pipeline <stage>`: parse arguments, load Params, call one stage function. Nothing else."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.atomic import exclusive_output
from pipeline.config import (
    PRECISIONS,
    ConfigError,
    LabelConvention,
    NetworkParams,
    Params,
    PredictOptions,
    PredictParams,
    RegisterParams,
    TileSetSource,
    load_params,
)
from pipeline.output_checks import GEOPACKAGE, GEOTIFF, check_output
from pipeline.parallel import ClusterError, DeviceError

DEFAULT_PARAMS = Path("params.yaml")


def _params_path(args: argparse.Namespace) -> Path:
    return Path(args.params) if args.params else DEFAULT_PARAMS


def _params(args: argparse.Namespace) -> Params:
    return load_params(_params_path(args))


def _band_spec(text: str) -> list[int] | dict[str, int]:
    from pipeline.raster import parse_band_spec

    try:
        return parse_band_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
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


def cmd_label_check(args: argparse.Namespace) -> None:
    from pipeline import tilesets
    from pipeline.atomic import write_text_atomic
    from pipeline.label_check import check_labels

    p = _params(args)
    probs = Path(args.probabilities) if args.probabilities else None
    data = tilesets.expand(p.data, Path(p.tile.out_dir) / tilesets.PREPARED_DIR)
    results = check_labels(data, p.label_check, probs)
    rows = [r.as_dict() for r in results]
    write_text_atomic(p.label_check.report_path, json.dumps(rows, indent=2) + "\n")
    print(f"{'scene':<20} {'east m':>7} {'north m':>8} {'clarity':>8}  missed")
    for r in results:
        missed = (
            f"{r.omitted_km:.2f} km ({r.omitted_fraction:.0%})" if r.omitted_km is not None else "-"
        )
        flag = "  <- offset" if r.flagged else ("" if r.clear else "  (unclear)")
        print(
            f"{r.scene:<20} {r.shift_east_m:>7.1f} {r.shift_north_m:>8.1f} "
            f"{r.peak_to_median:>8.1f}  {missed}{flag}"
        )
    owners = {  # scene -> the tile set it is a tile of
        name: entry.name
        for entry in p.data.scenes
        if isinstance(entry, TileSetSource)
        for name in tilesets.entry_scene_names(entry)
    }
    for r in results:
        if r.flagged:
            print(_offset_hint(r, owners.get(r.scene)))
    for name in dict.fromkeys(owners.values()):
        print(_tile_set_shift(name, [r for r in results if owners.get(r.scene) == name]))
    print(f"report: {p.label_check.report_path}")


def _tile_set_shift(name: str, results: list[Any]) -> str:
    """One line for a tile set: the median shift of its clear tiles (``label_check``)."""
    from pipeline.label_check import median_shift

    found = median_shift(results)
    if found is None:
        return f"tile set {name!r}: no tile gave a clear answer"
    clear, east, north = found
    line = (
        f"tile set {name!r}: median shift of its {clear} clear tiles (of {len(results)}): "
        f"east {east:g} m, north {north:g} m"
    )
    if results[0].labels == "vectors":
        line += (
            f"; label_offset_m: [{east:g}, {north:g}] on the tile set moves every tile (added "
            "to any offset declared there)"
        )
    return line


def _offset_hint(r: Any, tileset: str | None) -> str:
    """What to do about labels label-check found shifted (a ``LabelCheckResult``)."""
    off = f"{r.scene}: labels sit {r.shift_m:.1f} m off"
    if r.labels == "raster":
        return (
            f"{off} (east {r.shift_east_m:g}, north {r.shift_north_m:g}); label_offset_m moves "
            "road vectors only: shift the label raster's georeferencing, or leave the scene out"
        )
    where = (
        f"on tile set {tileset!r} in data.scenes, if its other tiles are shifted alike (one "
        "offset for the whole set)"
        if tileset
        else "on this scene in data.scenes"
    )
    return (
        f"{off}; set label_offset_m: [{r.shift_east_m:g}, {r.shift_north_m:g}] {where} "
        "(added to any offset declared there)"
    )


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
    from pipeline.distributed import launched_as_main
    from pipeline.train import run_train

    p = _params(args)
    metrics = run_train(
        p.train, p.tile, p.pretrain, p.register, resume=args.resume, params_file=_params_path(args)
    )
    if launched_as_main():  # under torchrun: rank 0 prints the metrics
        print(json.dumps(metrics, indent=2))


def cmd_repro(args: argparse.Namespace) -> None:
    from pipeline.repro import run_repro

    code = run_repro(Path("."), _params_path(args))
    if code:
        sys.exit(code)


def cmd_evaluate(args: argparse.Namespace) -> None:
    import shutil

    from pipeline.evaluate import run_evaluate

    p = _params(args)
    # Evaluate writes its test metrics into a copy: train's output stays as DVC stored it. The
    # copy is evaluated beside the old release and swapped in only on success, so a failed
    # evaluate never leaves a release that metrics/eval.json does not describe.
    out = p.evaluate.release_dir
    staging = out.with_name(f".{out.name}.part")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(p.train.out_dir, staging)
    try:
        metrics = run_evaluate(p.evaluate, p.data, p.tile, staging, p.register, p.network)
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
    receipt = run_register(p, model_dir=p.evaluate.release_dir, eval_path=p.evaluate.metrics_path)
    print(
        f"registered {receipt['model_name']} v{receipt['version']} as @{receipt['alias']} (test IoU {receipt['test_iou']:.4f})"
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline.predict_batch import batch_targets, predict_batch
    from pipeline.sources import resolve_input

    options = predict_options(args)
    images = [resolve_input(i, args.asset) for i in args.image]  # STAC items, /vsicurl/ paths
    predict_batch(
        batch_targets(images, args.output, args.vectors, args.stac_item, args.network),
        options,
        skip_existing=args.skip_existing,
        report_error=lambda line: print(line, file=sys.stderr),
    )


def _optional_params(args: argparse.Namespace) -> Params | None:
    """params.yaml when there is one: predict, export and network work without (a user's own
    folder; then the defaults apply), but a --params file that is given must exist."""
    return _params(args) if args.params or DEFAULT_PARAMS.exists() else None


def predict_options(args: argparse.Namespace) -> PredictOptions:
    """predict's options: params.yaml's predict section with the flags given over it."""
    flags = {
        "model": args.model,
        "scheduler": args.scheduler,
        "workers": args.workers,
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "windows_per_task": args.windows_per_task,
        "window": args.window,
        "overlap": args.overlap,
        "tta": args.tta,
        "bands": args.bands,
        "resample": False if args.no_resample else None,
        "pixel_size_m": args.pixel_size,
        "fill": args.nodata,
        "dtype": args.dtype,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
    }
    return PredictOptions.from_params(_optional_params(args), flags)


def cmd_export(args: argparse.Namespace) -> None:
    from pipeline.export import OPSET, export_onnx

    p = _optional_params(args)
    d = p.predict if p else PredictParams()
    reg = p.register if p else RegisterParams()
    out = export_onnx(
        args.model,
        args.output,
        tile_size=d.window if args.tile_size is None else args.tile_size,
        overlap_px=d.overlap if args.overlap is None else args.overlap,
        overwrite=args.overwrite,
        tracking_default=reg.tracking_uri,
    )
    print(f"wrote {out} (ONNX opset {OPSET}, metadata for the QGIS Deepness plugin)")


def cmd_network(args: argparse.Namespace) -> None:
    from pipeline.network import NetworkError, network_raster
    from pipeline.network_inputs import LABEL_THRESHOLD, network_view
    from pipeline.network_io import EDGES_LAYER, NODES_LAYER

    p = _optional_params(args)
    params = p.network if p else NetworkParams()
    changes = {"repair": False} if args.no_repair else {}
    if args.block_size is not None:
        changes["block_size"] = args.block_size
    params = NetworkParams.model_validate({**params.model_dump(), **changes})
    prob = Path(args.probability)
    out = check_output(
        args.output or prob.with_name(prob.stem + "_network.gpkg"),  # "nets/" kept as given
        suffixes=GEOPACKAGE,
        overwrite=args.overwrite,
        inputs=[prob, args.grid_of],
        own_layers=(EDGES_LAYER, NODES_LAYER),
    )
    colours = _label_colours(args)
    threshold = args.threshold
    if (args.labels or colours) and threshold is None:
        threshold = LABEL_THRESHOLD
    with exclusive_output(out), tempfile.TemporaryDirectory(prefix="roadseg-network-") as tmp:
        view = network_view(
            prob,
            tmp,
            labels=args.labels,
            pixel_size_m=args.pixel_size,
            colours=colours,
            grid_of=args.grid_of,
        )
        try:
            network_raster(view, out, params, threshold=threshold, overwrite=args.overwrite)
        except NetworkError as e:  # named by the user's file, not the passing VRT
            raise NetworkError(str(e).replace(str(view), str(prob))) from None
    print(f"wrote {out}")


def _label_colours(args: argparse.Namespace) -> LabelConvention | None:
    """The colour convention of ``pipeline network --road-colour``: background white unless
    given, anti-aliased edges cut at ``--edge-threshold``."""
    if args.road_colour is None:
        if args.background_colour is not None or args.edge_threshold is not None:
            raise ValueError("--background-colour and --edge-threshold go with --road-colour")
        return None
    if args.labels:
        raise ValueError(
            "--labels reads a grey mask by its largest value, --road-colour names the road's "
            "colour: pass one of them"
        )
    if args.threshold is not None:
        raise ValueError(
            "--threshold cuts probabilities; a --road-colour mask is cut by --edge-threshold"
        )
    road = args.road_colour
    background = args.background_colour or [255] * len(road)
    if len(background) != len(road):
        raise ValueError(
            f"--road-colour {road} and --background-colour {background} need as many values"
        )
    if road == background:
        raise ValueError(f"--road-colour and --background-colour are both {road}")
    edge = 0.5 if args.edge_threshold is None else args.edge_threshold
    return LabelConvention(road=road, background=background, edge_threshold=edge)


def _colour(text: str) -> list[int]:
    """ "255,0,0" -> [255, 0, 0]: one grey value or three for red, green and blue, 0..255."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected a value or R,G,B between 0 and 255, e.g. 255,0,0; got {text!r}"
        )
    return values


def cmd_pansharpen(args: argparse.Namespace) -> None:
    from pipeline.pansharpen import pansharpen

    pan = Path(args.pan)
    out = check_output(
        args.output or pan.with_name(pan.stem + "_pansharpened.tif"),
        suffixes=(*GEOTIFF, ".vrt"),
        formats="a .tif (a COG) or a .vrt",
        overwrite=args.overwrite,
        inputs=[pan, args.mul],
    )
    with exclusive_output(out):  # a killed run's temporaries of it are removed
        pansharpen(
            pan, args.mul, out, bands=args.bands, nodata=args.nodata, overwrite=args.overwrite
        )
    print(f"wrote {out}")


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


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


def cmd_score_network(args: argparse.Namespace) -> None:
    from pipeline.apls_points import LAYERS as APLS_POINT_LAYERS

    inputs = [args.truth, args.proposal, args.within]
    if args.points:
        check_output(
            args.points,
            suffixes=GEOPACKAGE,
            overwrite=args.overwrite,
            inputs=inputs,
            own_layers=APLS_POINT_LAYERS,
        )
    if args.json:
        check_output(args.json, suffixes=(".json",), overwrite=args.overwrite, inputs=inputs)
    with contextlib.ExitStack() as outputs:
        for out in (args.points, args.json):
            if out:
                outputs.enter_context(exclusive_output(out))
        _score_networks(args)


def _score_networks(args: argparse.Namespace) -> None:
    """``pipeline score-network`` once its outputs are checked and held."""
    from pipeline.apls_points import write_control_points
    from pipeline.atomic import write_text_atomic
    from pipeline.config import GraphMetricsParams
    from pipeline.graph_metrics import format_scores, score_network_files

    params = GraphMetricsParams(
        apls_max_sources=args.max_sources, topo_max_seeds=args.max_sources, seed=args.seed
    )
    scores = score_network_files(
        args.truth,
        args.proposal,
        params,
        truth_layer=args.truth_layer,
        proposal_layer=args.proposal_layer,
        within=args.within,
        points=(
            functools.partial(
                write_control_points,
                args.points,
                overwrite=args.overwrite,
                pixel_size_m=args.pixel_size,
            )
            if args.points
            else None
        ),
        pixel_size_m=args.pixel_size,
    )
    scores["points"] = args.points
    print(format_scores(scores))
    if args.points:
        print(f"wrote {args.points} (APLS control points: truth_points, proposal_points)")
    if args.json:
        write_text_atomic(args.json, json.dumps(scores, indent=2) + "\n", overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="roadseg: road segmentation from satellite and aerial rasters. "
        "Stages read their section of params.yaml; `dvc repro` runs them in order.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def _stage(
    sub: argparse._SubParsersAction, name: str, fn: Callable, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand that reads params.yaml (``--params``) and can be quiet (``-q``)."""
    sp = sub.add_parser(name, help=help, description=description)
    sp.add_argument("--params", default=None, help="parameters file (default: params.yaml)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=fn)
    return sp


def _add_synth(sub: argparse._SubParsersAction) -> None:
    _stage(
        sub,
        "synth",
        cmd_synth,
        "generate synthetic scenes",
        "Write synthetic 4-band GeoTIFF scenes with road centrelines (GeoPackage, EPSG:4326) and "
        "land cover to synth.out_dir. Deterministic for each scene's seed.",
    )


def _add_tile(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "tile",
        cmd_tile,
        "cut scenes into chips with a spatial split",
        "Cut the scenes in data.scenes into image/mask chips, burn road masks from the vectors, "
        "assign train/val/test by blocks of area, write the chip index and band statistics.",
    )
    sp.add_argument(
        "--workers", type=_positive_int, default=None, help="Dask workers (default: tile.workers)"
    )


def _add_label_check(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "label-check",
        cmd_label_check,
        "measure how well road labels sit on the imagery",
        "For each scene with road labels (vectors or a label raster): the shift that best aligns the labels with the "
        "imagery's edges (or with a first model's probabilities), and with probabilities the "
        "length of predicted road no label covers. Writes label_check.report_path.",
    )
    sp.add_argument(
        "--probabilities",
        help="folder of `pipeline predict` outputs, <image stem>_roads.tif per scene",
    )


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "pretrain",
        cmd_pretrain,
        "pretrain a zoo backbone as a patch classifier on the chips (pretrain.task)",
        "Train a classifier from the zoo (lenet5, alexnet, vgg*, googlenet, resnet*) on patches of "
        "the chips: land cover, classes from the road masks, or rotation (pretrain.task); writes "
        "models/backbones/<arch>.safetensors + .json.",
    )
    sp.add_argument("arch", nargs="?", help="backbone (default: every arch in pretrain.archs)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "train",
        cmd_train,
        "train the road U-Net",
        "Train smp.Unet with the zoo encoder train.encoder on the chips; keeps the best model by "
        "val IoU in train.out_dir, with the threshold that is F1-best on the val chips; tracked "
        "in MLflow.",
    )
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint")


def _add_repro(sub: argparse._SubParsersAction) -> None:
    _stage(
        sub,
        "repro",
        cmd_repro,
        "`dvc repro`, with a progress line for the whole pipeline",
        "Run the stages `dvc repro` would run, one `dvc repro --single-item` each, printing "
        "before each: stage i of n, time elapsed and an estimate of the time left (from the "
        "last run's durations in .dvc/tmp/stage_durations.json, else from params.yaml).",
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    _stage(
        sub,
        "evaluate",
        cmd_evaluate,
        "evaluate on the held-out test scenes",
        "Predict every test scene whole (same code as predict), compute IoU/F1/relaxed metrics at "
        "the model's threshold (and, as an optimistic reference, at the test F1-best one), write "
        "metrics/eval.json, plots/ and reports/.",
    )


def _add_register(sub: argparse._SubParsersAction) -> None:
    _stage(
        sub,
        "register",
        cmd_register,
        "register the model in MLflow",
        "Register a new version of the model; alias 'champion' moves only if the test IoU is at "
        "least the champion's, otherwise 'challenger'.",
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "predict",
        cmd_predict,
        "predict roads on a raster of any size",
        "Dask-parallel, windowed prediction over any GDAL raster; writes a Cloud Optimised "
        "GeoTIFF of road probability with the input's CRS, transform and nodata.",
    )
    sp.add_argument(
        "image",
        nargs="+",
        help="input raster(s) (GeoTIFF, COG, VRT, ...), any GDAL path (/vsicurl/https://..., "
        "/vsis3/...) or STAC Item (.json file or URL); several share one cluster and one model load",
    )
    sp.add_argument(
        "--asset",
        help="a STAC Item's asset to predict (default: the first with role 'data', else the first "
        "GeoTIFF/JP2)",
    )
    sp.add_argument(
        "-o",
        "--output",
        help="output GeoTIFF (default: <image>_roads.tif beside it); with several images, a folder",
    )
    _add_predict_run_flags(sp)
    _add_predict_raster_flags(sp)
    _add_predict_output_flags(sp)


def _add_predict_run_flags(sp: argparse.ArgumentParser) -> None:
    """predict's flags that override params.yaml's predict section (``PredictOptions``)."""
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
    sp.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average the eight dihedral transforms, 8x the model time (default: predict.tta)",
    )


def _add_predict_raster_flags(sp: argparse.ArgumentParser) -> None:
    """predict's flags that say how the raster is read: its bands, pixel size and fill."""
    sp.add_argument(
        "--bands",
        type=_band_spec,
        help="the raster's bands for the model's, in its order: 1-based indexes (5,3,2,7) or "
        "names (red=5,green=3,blue=2,nir=7); default: by band name, else in file order",
    )
    sp.add_argument(
        "--no-resample",
        action="store_true",
        help="predict at the raster's own pixel size even when it differs from the model's by "
        "more than predict.gsd_tolerance, or its pixels are that much taller than wide "
        "(default: resample each window to the model's, each axis on its own scale)",
    )
    sp.add_argument(
        "--pixel-size",
        type=float,
        metavar="METRES",
        help="pixel size of rasters without georeferencing (PNG/JPEG tiles: Massachusetts 1, "
        "DeepGlobe 0.5), so they are resampled to the model's like georeferenced ones "
        "(default: predict.pixel_size_m; unset: read at the model's pixel size)",
    )
    sp.add_argument(
        "--nodata",
        type=float,
        metavar="VALUE",
        help="pixels holding this value on every band are nodata, beside what the raster "
        "declares: the white fill of Massachusetts tiles (255), a black mosaic collar (0), in a "
        "PNG or JPEG that cannot declare it (default: predict.fill)",
    )


def _add_predict_output_flags(sp: argparse.ArgumentParser) -> None:
    """predict's flags that say what it writes besides the probability COG."""
    sp.add_argument(
        "--vectors",
        help="also write road centrelines to this GeoPackage; with several images, a folder",
    )
    sp.add_argument(
        "--stac-item",
        help="also write a STAC Item describing the prediction (EPSG:4326 footprint, projection, "
        "assets, model and settings) to this .json; with several images, a folder",
    )
    sp.add_argument(
        "--network",
        help="also write the road network (edges, nodes) to this GeoPackage; with several "
        "images, a folder (settings: params.yaml network)",
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


def _add_score_network(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "score-network",
        help="score a road network against the true one (APLS, TOPO)",
        description="APLS as SpaceNet defines it (both directions and their harmonic mean) and TOPO "
        "precision/recall/F1 of a proposed road network against a true one, in metres. Either "
        "file is a network GeoPackage (edges/nodes layers, as `pipeline network` writes) or any "
        "line layer (centrelines, OSM, SpaceNet GeoJSON), noded where lines cross; the proposal "
        "is reprojected to the truth's CRS.",
    )
    sp.set_defaults(func=cmd_score_network)
    sp.add_argument("truth", help="true road network or centrelines (any OGR vector file)")
    sp.add_argument("proposal", help="proposed road network or centrelines")
    sp.add_argument(
        "--truth-layer", help="line layer of the truth (default: edges, else the only one)"
    )
    sp.add_argument(
        "--proposal-layer", help="line layer of the proposal (default: edges, else the only one)"
    )
    sp.add_argument(
        "--within",
        metavar="RASTER",
        help="clip the truth to the valid pixels of this raster (the image the proposal was "
        "predicted from), as evaluate does: truth roads where it has no data cannot be found",
    )
    sp.add_argument(
        "--pixel-size",
        type=_positive_float,
        metavar="METRES",
        help="networks without a CRS (of rasters without georeferencing, as `pipeline network` "
        "writes them for a tile predicted with --pixel-size) are in pixels of this size",
    )
    sp.add_argument("--json", help="also write the scores to this JSON file")
    sp.add_argument(
        "--points",
        metavar="GPKG",
        help="also write where APLS is lost: every control point of both networks, whether "
        "it snapped onto the other and the mean path-length difference of its pairs (layers "
        "truth_points, proposal_points; QGIS opens them green to red)",
    )
    sp.add_argument(
        "--overwrite", action="store_true", help="replace an existing --json or --points file"
    )
    sp.add_argument(
        "--max-sources",
        type=_positive_int,
        help="score from a seeded sample of this many APLS control points and TOPO seeds (big networks)",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "export",
        cmd_export,
        "export a model to ONNX for QGIS (Deepness) and onnxruntime",
        "Write a model folder or registry model as ONNX (opset 17; dynamic batch and size; input "
        "normalised as predict does, output road probability) with the metadata the QGIS "
        "Deepness plugin reads: model type, class names, resolution, standardisation, tile size "
        "and overlap, threshold.",
    )
    sp.add_argument("model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder")
    sp.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    sp.add_argument(
        "--tile-size",
        type=_positive_int,
        help="Deepness tile size in pixels, a multiple of 32 (default: predict.window)",
    )
    sp.add_argument(
        "--overlap",
        type=_non_negative_int,
        help="Deepness tile overlap in pixels, stored as a percentage (default: predict.overlap)",
    )
    sp.add_argument("--overwrite", action="store_true", help="replace an existing file")


def _add_network(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "network",
        cmd_network,
        "road network (edges, nodes) from a probability raster",
        "Threshold, thin and trace a road probability raster (predict's output, or another "
        "tool's with its scale, offset and nodata) block by block into one connected network: "
        "a GeoPackage with layers edges and nodes in the raster's CRS. Cleaning settings: "
        "params.yaml network (metres).",
    )
    sp.add_argument("probability", help="probability raster (any GDAL raster, one band)")
    _add_label_mask_arguments(sp)
    sp.add_argument(
        "-o", "--output", help="output GeoPackage (default: <probability>_network.gpkg beside it)"
    )
    sp.add_argument(
        "--threshold",
        type=_probability,
        help="road where probability >= this (default: network.threshold, else the raster's "
        "threshold tag, which predict writes)",
    )
    sp.add_argument(
        "--no-repair", action="store_true", help="the raw skeleton graph, without cleaning"
    )
    sp.add_argument(
        "--block-size",
        type=_positive_int,
        help="pixels a side per block (a multiple of network.skeleton_tile)",
    )
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _add_label_mask_arguments(sp: argparse.ArgumentParser) -> None:
    """``pipeline network``'s options for a raster that is not a probability: a label mask
    (grey or in a colour) and a raster without georeferencing."""
    sp.add_argument(
        "--labels",
        action="store_true",
        help="the raster is a road label mask (0/255, 0/1, white roads on black: its first "
        "band): road where it is at least half its largest value (a truth network for "
        "score-network)",
    )
    sp.add_argument(
        "--road-colour",
        type=_colour,
        metavar="R,G,B",
        help="the raster is a label mask that marks road in this colour (RoadNet: 255,0,0 on "
        "white; one value for a one-band mask): road where a pixel is nearer it than the "
        "background (see --edge-threshold); read 1,024 rows at a time",
    )
    sp.add_argument(
        "--background-colour",
        type=_colour,
        metavar="R,G,B",
        help="background colour of a --road-colour mask (default: white)",
    )
    sp.add_argument(
        "--edge-threshold",
        type=_probability,
        metavar="FRACTION",
        help="in a --road-colour mask, an anti-aliased pixel is road at least this far from "
        "background to road (default 0.5); colours off that line are refused",
    )
    sp.add_argument(
        "--grid-of",
        metavar="IMAGE",
        help="place a raster without georeferencing (a PNG mask) on the grid of this "
        "georeferenced image of the same size, its CRS and transform (RoadNet: the masks beside "
        "each GeoTIFF)",
    )
    sp.add_argument(
        "--pixel-size",
        type=_positive_float,
        metavar="METRES",
        help="pixel size of a raster without georeferencing (a PNG/JPEG tile or mask), so "
        "that lengths and the cleaning distances are metres",
    )


def _add_pansharpen(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "pansharpen",
        help="fuse multispectral bands with their panchromatic band (WorldView, SpaceNet)",
        description="Sharpen the multispectral bands onto the panchromatic band's grid with "
        "GDAL's pansharpening (weighted Brovey), block by block: a Cloud Optimised GeoTIFF, or "
        "with -o name.vrt the VRT that computes it as it is read. The bands are named (red, "
        "green, blue) so that tile and predict pick them by name.",
    )
    sp.add_argument("pan", help="panchromatic raster (one band)")
    sp.add_argument("mul", help="multispectral raster (same CRS, coarser pixels)")
    sp.add_argument(
        "-o", "--output", help="output .tif (COG) or .vrt (default: <pan>_pansharpened.tif)"
    )
    sp.add_argument(
        "--bands",
        type=_band_spec,
        help="the MUL bands to keep, by name (red=5,green=3,blue=2 for WorldView-3's 8 bands; "
        "add nir=7 for a 4-band model); default: red, green and blue as the file names them",
    )
    sp.add_argument(
        "--nodata", type=float, help="pixel value outside the imagery (default: the PAN's)"
    )
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sp.set_defaults(func=cmd_pansharpen)


def _add_models(sub: argparse._SubParsersAction) -> None:
    sp = _stage(
        sub,
        "models",
        cmd_models,
        "list registered versions, or promote one",
        "List the versions of the registered model with aliases and metrics, or move "
        "'champion' to a version by hand.",
    )
    sp.add_argument("action", nargs="?", choices=["list", "promote"], default="list")
    sp.add_argument("version", nargs="?", help="version to promote")


# the subcommands, in the order `pipeline --help` lists them
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_synth,
    _add_tile,
    _add_label_check,
    _add_pretrain,
    _add_train,
    _add_repro,
    _add_evaluate,
    _add_register,
    _add_predict,
    _add_score_network,
    _add_export,
    _add_network,
    _add_pansharpen,
    _add_models,
)


OWN_LOGGERS = ("pipeline", "backbones")


def configure_logging(*, verbose: bool, quiet: bool = False) -> None:
    """Our own progress messages at INFO (DEBUG with -v, only warnings with -q); other
    libraries' only from WARNING. Warnings print as one line, ``warning: <message>``, not with
    the Python source line that raised them.

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
    own_level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own_level)
    warnings.formatwarning = _one_line_warning


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    return f"warning: {message}\n"


_CLEANED = "its temporary files are removed and no output was left half-written"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a timeout, systemd, Kubernetes, SLURM) or SIGHUP (the terminal or ssh session
    gone), raised like Ctrl-C so that the same cleanup runs: temporaries removed, our own Dask
    cluster stopped, locks released. ``args[0]`` is the signal's number."""


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
_STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum: int, frame: object) -> None:
    for sig in _STOPPING_SIGNALS:  # a second signal ends the process at once
        signal.signal(sig, signal.SIG_DFL)
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (in the main thread
    only: Python delivers signals there), unless ignored already (``nohup``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a signal ignored where the command was started (nohup ignores SIGHUP) stays ignored
    stopping = [sig for sig in _STOPPING_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in stopping}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=getattr(args, "quiet", False))
    # MLflow draws progress bars of its own when it copies model artifacts: noise beside our
    # stages' own messages (and -q promises none)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if getattr(args, "action", None) == "promote" and not args.version:
        parser.error("models promote needs a VERSION")
    try:
        with sigterm_as_interrupt():
            args.func(args)
    except Terminated as stop:
        signum = stop.args[0] if stop.args else signal.SIGTERM
        name = signal.Signals(signum).name
        print(f"error: {args.command} stopped by {name}; {_CLEANED}", file=sys.stderr)
        return 128 + int(signum)
    except KeyboardInterrupt:
        print(f"error: {args.command} interrupted; {_CLEANED}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (
        ConfigError,
        FileNotFoundError,
        FileExistsError,
        LookupError,
        ValueError,
        DeviceError,
        ClusterError,
        OSError,  # a folder that cannot be written, found only when writing: one line
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
