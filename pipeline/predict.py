"""Predict roads on one raster of any size: windows -> model -> stitching -> streamed COG.

The flow, and where each part lives:

* ``windows.py`` lays a fixed grid of overlapping windows over the raster (a function of
  raster size, window and overlap only) and cuts it into tasks of ``windows_per_task``
  neighbouring windows;
* each task runs on a Dask worker (``inference.py``, which alone imports torch: this client
  stays light): it reads its windows (never the whole raster), skips windows that are all
  nodata, normalises with the model's own mean/std, zeroes nodata, runs the model in batches
  (optionally with 8-fold dihedral TTA) and returns ``weight * probability`` summed over its
  area, the weights already normalised (``stitching.py``). Every window is computed exactly
  once;
* the client adds results into output blocks as they arrive (``stitching.BlockAssembler``)
  and writes each block the moment all tasks touching it are in (``raster.stream_cog``);
  memory holds the open blocks only. The staging file becomes a COG with overviews, renamed
  into place when everything succeeded.

A pixel's value is the same sum whatever the block size or the number of workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline import ground, parallel, raster, registry, sources, stac, styles
from pipeline.atomic import check_free_space
from pipeline.config import PredictOptions
from pipeline.model_config import ModelConfig, check_weights, read_config, resolve_model
from pipeline.output_checks import GEOPACKAGE, GEOTIFF, check_output
from pipeline.predict_task import AS_IS, GroupResult, PixelScale, PredictJob, model_version
from pipeline.stitching import (
    NODATA_UINT8,
    UINT8_SCALE,
    BlockAssembler,
    encode_float32,
    encode_uint8,
)
from pipeline.windows import UNET_MULTIPLE, WindowGrid, WindowGroup, window_groups

log = logging.getLogger(__name__)

BAND_DESCRIPTION = "road_probability"


@dataclass(frozen=True)
class PredictResult:
    """What a prediction wrote and how fast."""

    output: Path
    vectors: Path | None
    seconds: float
    windows_run: int
    windows_skipped: int
    mpix_per_s: float
    peak_open_blocks: int = 0
    # seconds by phase: cluster_start, model_load, windows (all tasks), cog_finalize,
    # cluster_stop on the client; read, model, blend summed over the workers; assemble_write on the client
    timings: dict[str, float] = field(default_factory=dict)


def default_output_path(image: str | Path) -> Path:
    """``region.tif`` -> ``region_roads.tif`` beside it; a remote raster's (``/vsicurl/...``)
    in the current folder."""
    if sources.is_remote(image):
        return Path(sources.file_stem(image) + "_roads.tif")
    image = Path(image)
    return image.with_name(image.stem + "_roads.tif")


# ------------------------------------------------------------------------------ worker side
# Thin entry points for Dask: the work is in pipeline.inference, imported on the worker, so
# this client never imports torch.
def run_group(job: PredictJob, group: WindowGroup) -> GroupResult:
    """Run one task's windows on a worker (``inference.run_group``)."""
    from pipeline import inference

    return inference.run_group(job, group)


def fitted_batch_size(*args: Any) -> int:
    """On a worker: ``inference.fitted_batch_size(*args)`` (loads the model, returns the batch
    size it can take); sent by reference to this module, which imports no torch."""
    from pipeline import inference

    return inference.fitted_batch_size(*args)


def release_readers() -> int:
    """On a worker: close the raster readers kept open between tasks (``inference``)."""
    from pipeline import inference

    return inference.release_readers()


# ------------------------------------------------------------------------------ client side
def _check_inputs(
    image: Path,
    info: raster.RasterInfo,
    config: ModelConfig,
    model_ref: str,
    options: PredictOptions,
) -> raster.BandPlan:
    """The raster's bands for this model (``raster.band_plan``, with the declared fill value
    ``options.fill``); warns about what may go wrong."""
    pixel_size_m = options.pixel_size_m
    plan = raster.band_plan(image, config.bands, options.bands, wanted_by=f"the model {model_ref}")
    plan = dataclasses.replace(plan, fill=options.fill)
    if plan.note:
        (log.warning if plan.warn else log.info)("%s", plan.note)
    _warn_of_fill(image, plan)
    if info.crs is None and info.gcps and pixel_size_m is None and config.gsd_m:
        warnings.warn(
            f"{image}: georeferenced by ground control points only: its pixel size is read as "
            f"the model's ({config.gsd_m:g} m); warp it to a grid (gdalwarp -t_srs ...) or pass "
            "--pixel-size METRES if it is not",
            stacklevel=3,
        )
    if not _georeferenced(info):
        unknown = ""
        if pixel_size_m is None and config.gsd_m:
            unknown = (
                f", and its pixel size is unknown: it is read as the model's ({config.gsd_m:g} m); "
                "pass --pixel-size METRES (predict.pixel_size_m) if it is not"
            )
        warnings.warn(
            f"{image}: raster has no CRS; the prediction will have none either{unknown}",
            stacklevel=3,
        )
    if config.dtype and info.dtype != config.dtype and config.normalisation == "dataset":
        warnings.warn(
            f"{image}: sample type {info.dtype}, but the model {model_ref} was trained on {config.dtype} "
            "imagery; it normalises with that imagery's statistics, so rescale the raster to the same "
            "value range (gdal_translate -scale -ot) or expect poor predictions",
            stacklevel=3,
        )
    return plan


FILL_WARN_SHARE = 0.01  # an undeclared fill border over this share of the raster is warned of


def _warn_of_fill(image: Path, plan: raster.BandPlan) -> None:
    """Warn of a fill border the raster does not declare as nodata (``raster.fill_border``)."""
    found = raster.fill_border(image, plan)
    if found is None or found[1] < FILL_WARN_SHARE:
        return
    value, share = found
    warnings.warn(
        f"{image}: {share:.0%} of it is a border of {value:g} on every band, and it declares no "
        f"nodata: predicted as imagery (its edge may come out as road). Pass --nodata {value:g} "
        "(predict.fill), or declare it in the file",
        stacklevel=4,
    )


def _georeferenced(info: raster.RasterInfo) -> bool:
    return info.crs is not None or bool(info.gcps)


def declared_pixel_size(info: raster.RasterInfo, pixel_size_m: float | None) -> float | None:
    """The declared ``pixel_size_m`` where it is the one used: for a raster without a CRS."""
    return pixel_size_m if info.metres_per_pixel is None and pixel_size_m else None


def raster_pixel_size(
    image: Path, info: raster.RasterInfo, pixel_size_m: float | None
) -> float | None:
    """The raster's pixel size in metres: from its CRS, else ``pixel_size_m`` (declared for a
    raster without georeferencing), else None. A declared size that contradicts the CRS's is
    not used, with a warning."""
    mpp = info.metres_per_pixel
    if mpp is None:  # no CRS (or only ground control points): the declared size, if any
        return declared_pixel_size(info, pixel_size_m)
    if pixel_size_m and not 0.99 <= mpp / pixel_size_m <= 1.01:
        warnings.warn(
            f"{image}: georeferenced, with {mpp:.3g} m pixels: --pixel-size {pixel_size_m:g} "
            "(for rasters without georeferencing) is not used",
            stacklevel=3,
        )
    return mpp


def raster_pixel_metres(
    image: Path, info: raster.RasterInfo, pixel_size_m: float | None
) -> tuple[float, float] | None:
    """(metres per row, metres per column) on the ground: from the CRS (a square-degree
    pixel is taller than wide away from the equator), else the declared ``pixel_size_m``
    (square), else None."""
    mpp = raster_pixel_size(image, info, pixel_size_m)
    if mpp is None or info.crs is None:
        return None if mpp is None else (mpp, mpp)
    return info.pixel_metres


def pixel_scale(
    image: Path,
    info: raster.RasterInfo,
    config: ModelConfig,
    model_ref: str,
    resample: bool = True,
    tolerance: float = ground.GSD_TOLERANCE,
    pixel_size_m: float | None = None,
) -> PixelScale:
    """Model pixels per raster pixel, down the rows and across the columns. ``AS_IS`` (1, 1)
    when the raster's pixel size (its CRS's, else the declared ``pixel_size_m``) is unknown,
    or within ``tolerance`` (a ratio) of the model's ``gsd_m`` on both axes and square on the
    ground within it; else each axis's metres / ``gsd_m`` with ``resample``, so the model sees
    square pixels of its size (an EPSG:4326 export's included), and ``AS_IS`` with a warning
    (and a resampling command that fits the raster's CRS) without."""
    sizes = raster_pixel_metres(image, info, pixel_size_m)
    if not config.gsd_m or sizes is None or ground.passes_for(sizes, config.gsd_m, tolerance):
        return AS_IS
    down, across = sizes
    if resample:
        log.info(
            "%s: pixels are %.3g m wide and %.3g m tall, the model's %.3g m: each window is "
            "resampled to the model's pixel size and its probability back onto the raster's grid",
            image, across, down, config.gsd_m,
        )  # fmt: skip
        scale = (down / config.gsd_m, across / config.gsd_m)
        _warn_if_far_coarser(image, scale, config.gsd_m)
        return scale
    if info.crs is not None:
        _warn_if_stretched(image, info, tolerance)
    mpp = math.sqrt(down * across)
    if not ground.passes_for((mpp, mpp), config.gsd_m, tolerance):
        warnings.warn(
            f"{image}: pixels are {mpp:.2f} m, but the model {model_ref} was trained at "
            f"{config.gsd_m:.2f} m; roads will look {'wider' if mpp < config.gsd_m else 'narrower'} "
            f"than it learned them: predict without --no-resample, or resample first "
            f"({_resample_hint(info, config.gsd_m, mpp)})",
            stacklevel=3,
        )
    return AS_IS


# a raster this many times coarser than the model's pixels is upsampled that much each way:
# detail the model was trained to see is not in it, and it computes that squared per pixel
COARSER_WARNING = 4.0


def _warn_if_far_coarser(image: Path, scale: PixelScale, gsd_m: float) -> None:
    """Warn when resampling would upsample the raster more than ``COARSER_WARNING`` times (a
    10 m Sentinel-2 scene for a 1 m aerial model): roads a few metres wide are a fraction of
    its pixels, and the model computes 100 pixels for each of them."""
    if max(scale) <= COARSER_WARNING:
        return
    size = math.sqrt(scale[0] * scale[1]) * gsd_m
    warnings.warn(
        f"{image}: pixels are {size:.3g} m, {size / gsd_m:.3g}x the model's {gsd_m:.3g} m: "
        f"upsampled to it, a window computes {scale[0] * scale[1]:.0f} model pixels per raster "
        "pixel and shows no detail finer than the raster's; roads narrower than a pixel are "
        "unlikely to be found. A model trained at this pixel size suits it better",
        stacklevel=4,
    )


def _warn_if_stretched(image: Path, info: raster.RasterInfo, tolerance: float) -> None:
    """Warn when the raster's pixels are far from square on the ground (``ground.square_pixel_advice``)."""
    advice = ground.square_pixel_advice(
        info.crs, info.transform, info.width, info.height, tolerance
    )
    if advice:
        warnings.warn(f"{image}: {advice}", stacklevel=4)


def _resample_hint(info: raster.RasterInfo, gsd: float, mpp: float | None = None) -> str:
    """A gdalwarp command to the model's pixel size: -tr is in the CRS's units, so a raster in
    degrees or in a Mercator's "metres" (not metres on the ground) is sent to its UTM zone
    instead; without a CRS (a declared pixel size), gdal_translate to the size in pixels that
    the model's pixel size gives."""
    if info.metres_per_pixel is None and mpp:
        percent = 100 * mpp / gsd
        return f"gdal_translate -r average -outsize {percent:.4g}% {percent:.4g}%"
    if ground.measured_on_ellipsoid(info.crs):
        grid = (info.crs, info.transform, info.width, info.height)
        epsg = ground.utm_epsg(*ground.centre_lonlat(*grid))
        units = "degrees" if info.crs.is_geographic else "Mercator metres"
        per_unit = ground.pixel_size_m(*grid) / info.res[0]
        return (
            f"gdalwarp -t_srs EPSG:{epsg} -tr {gsd:g} {gsd:g}; the raster is in {units}, "
            f"where -tr would take about {gsd / per_unit:.3g}"
        )
    return f"gdalwarp -tr {gsd:g} {gsd:g}"


def raster_grid(
    info: raster.RasterInfo, window: int, overlap: int, scale: PixelScale
) -> WindowGrid:
    """The fixed window grid over the raster, in raster pixels. Resampled (``scale`` not
    ``AS_IS``), a window covers what ``window`` model pixels cover each way (rounded to the
    U-Net's multiple), and its overlap ``overlap`` model pixels: windows are square on the
    ground, and the grid still depends on raster size, window, overlap and scale only."""
    if scale == AS_IS:
        return WindowGrid(info.height, info.width, window, overlap)
    (rows, row_overlap), (cols, col_overlap) = (_axis_window(window, overlap, s) for s in scale)
    return WindowGrid(info.height, info.width, rows, row_overlap, UNET_MULTIPLE, cols, col_overlap)


def _axis_window(window: int, overlap: int, scale: float) -> tuple[int, int]:
    """(window, overlap) in raster pixels along an axis of ``scale`` model pixels per pixel."""
    side = max(UNET_MULTIPLE, round(window / scale / UNET_MULTIPLE) * UNET_MULTIPLE)
    return side, min(round(overlap / scale), side - 1)


def _model_tags(model_ref: str | Path, folder: Path, config: ModelConfig) -> dict[str, str]:
    tags = {
        "model": str(model_ref),
        "model_folder": str(folder),
        "model_encoder": config.encoder,
        "model_bands": ",".join(config.bands),
        "threshold": f"{config.threshold:g}",
    }
    if config.data_fingerprint:
        tags["model_data_fingerprint"] = config.data_fingerprint
    if config.git_commit:
        tags["model_git_commit"] = config.git_commit
    ref = str(model_ref)
    parsed = registry.parse_version_uri(ref)
    if parsed:
        tags["model_uri"] = ref
        name, version, alias = parsed
        if version is None:
            with contextlib.suppress(Exception):  # the version is informative only
                version = registry.alias_version(name, alias)
        if version:
            tags["model_version"] = str(version)
    return tags


class ResolvedModel(NamedTuple):
    folder: Path
    config: ModelConfig  # as the run uses it (the TTA threshold with ``tta``)
    tags: dict[str, str]  # the output's tags naming the model
    version: str  # ``predict_task.model_version`` of the folder as read: what workers load


def _resolve_model(model: str | Path, tracking_default: str, tta: bool = False) -> ResolvedModel:
    """The model folder of a folder or a registry URI, its config, tags and version. With
    ``tta`` the config's threshold is the eight-view mean's own (``threshold_tta``) where
    evaluate chose one: the COG's tag, its style, centrelines and network all cut there."""
    folder = Path(resolve_model(model, tracking_default))
    config = read_config(folder)
    check_weights(folder, config)  # a corrupt file stops here, before any worker loads it
    version = model_version(config)  # of the folder's config, before the run's changes
    if tta and config.threshold_tta is not None:
        config = config.model_copy(update={"threshold": config.threshold_tta})
    return ResolvedModel(folder, config, _model_tags(model, folder, config), version)


def min_output_bytes(width: int, height: int, dtype: str) -> int:
    """The least disk space a run needs: staging file and COG, each compressed to at best an
    eighth of the raw samples (deflate on smooth probabilities). Checked before the cluster
    starts, so a full disk is found in a second, not after the model loaded."""
    return width * height * np.dtype(dtype).itemsize // 4


def _start_network_warm_up() -> Any:
    """Compile the network's skeleton code on a thread while the workers predict."""
    from pipeline.network import warm_up

    pool = ThreadPoolExecutor(1, thread_name_prefix="roadseg-network-warm-up")
    future = pool.submit(warm_up)
    pool.shutdown(wait=False)
    return future


def _cog_blocksize(height: int, width: int) -> int:
    # 512 px COG tiles as GDAL's default; small rasters get 256 so they still have an overview
    return 512 if min(height, width) >= 2048 else 256


def plan_line(image: str | Path, grid: WindowGrid, tasks: int, threads: int) -> str:
    """What a run is about to do, printed before it starts: a raster so large that the run
    takes days says so before the first window, not after a silent night."""
    return (
        f"predict {sources.display_name(image)}: {grid.height:,} x {grid.width:,} px, {len(grid):,} windows of "
        f"{_window_size(grid)} px in {tasks:,} tasks on {threads} worker thread(s)"
    )


def _window_size(grid: WindowGrid) -> str:
    """The first window's size in raster pixels (the raster's, rounded up to the U-Net's
    multiple, when that is smaller): one number when square, else "rows x columns"."""
    first = grid.rect(0, 0)
    rows, cols = first.height, first.width
    return f"{rows}" if rows == cols else f"{rows} x {cols}"


def _print_estimate(windows: int, seconds: float, total: int, threads: int) -> None:
    """The run's expected duration from its first task, with ``threads`` tasks running at once
    (the first includes the workers' warm-up, so it errs long), printed above the progress
    bar."""
    from tqdm import tqdm

    if windows == 0 or total <= windows:
        return
    eta = seconds / windows * total / threads
    hours, minutes = divmod(round(eta / 60), 60)
    took = f"{eta:.0f} s" if eta < 90 else f"{f'{hours} h ' if hours else ''}{minutes} min"
    tqdm.write(
        f"first task: {windows} windows in {seconds:.1f} s; about {took} for all {total:,} "
        "windows at this speed"
    )


def _stream_windows(
    client: Any,
    run: RunPlan,
    writer: raster.BlockWriter,
    timings: dict[str, float],
    progress: bool,
    name: str,
) -> tuple[int, int]:
    """Run every task on the cluster; write each output block as it completes.

    Returns (windows run, windows skipped); adds the workers' and the assembly's seconds to
    ``timings``.
    """
    job, assembler, encode = run.job, run.assembler, run.encoding.encode
    ran = skipped = 0
    for rect, prob, valid in assembler.initially_complete():
        writer.write(encode(prob, valid), rect.row_off, rect.col_off)
    results = parallel.stream_results(
        client,
        run_group,
        ((job, g) for g in run.groups),
        max_in_flight=2 * parallel.total_threads(client) + 2,
        total=len(job.grid),
        progress=progress,
        desc=f"predict {name}",
        unit="win",
        weight=lambda task: len(task[1].windows),
    )
    started = time.perf_counter()
    with contextlib.closing(results):  # on any error, cancel what is still queued
        for res in results:
            t0 = time.perf_counter()
            if progress and ran + skipped == 0:
                threads = parallel.total_threads(client)
                _print_estimate(res.ran + res.skipped, t0 - started, len(job.grid), threads)
            ran += res.ran
            skipped += res.skipped
            for key, value in res.timings.items():
                timings[key] += value
            for rect, prob, valid in assembler.add(res.region, res.contrib, res.valid):
                writer.write(encode(prob, valid), rect.row_off, rect.col_off)
            timings["assemble_write"] += time.perf_counter() - t0
    if not assembler.done:
        raise RuntimeError("internal error: some output blocks were never completed")
    return ran, skipped


@dataclass(frozen=True)
class Target:
    """One input raster and the files predict writes for it."""

    image: str | Path  # a local file, or a GDAL name such as /vsicurl/https://...
    output: Path
    vectors: Path | None = None
    stac_item: Path | None = None  # where to write the prediction's STAC Item
    source_item: dict | None = None  # the STAC Item the image came from
    network: Path | None = None  # where to write the road network

    def outputs(self) -> list[Path]:
        """The files this target writes (the probability style excepted)."""
        return [p for p in (self.output, self.vectors, self.stac_item, self.network) if p]


@dataclass(frozen=True)
class OutputEncoding:
    """How probabilities are stored: the sample type, its encoder, nodata and scale."""

    dtype: str
    encode: Callable[[np.ndarray, np.ndarray], np.ndarray]
    nodata: float
    scale: float | None

    @classmethod
    def of(cls, dtype: str) -> OutputEncoding:
        if dtype == "uint8":
            return cls(dtype, encode_uint8, float(NODATA_UINT8), UINT8_SCALE)
        return cls(dtype, encode_float32, float("nan"), None)

    def tags(self) -> dict[str, str]:
        """What the output's tags say of the encoding."""
        if self.dtype == "uint8":
            return {"encoding": "uint8: p = value / 254, 255 = nodata", "scale": "1/254"}
        return {"encoding": "float32: p, NaN = nodata"}


@dataclass
class RunPlan:
    """What the client settles inside the cluster before the first task: the model's config,
    the output's tags, the job each task carries, the tasks and the block assembler."""

    config: ModelConfig
    tags: dict[str, str]
    job: PredictJob
    groups: list[WindowGroup]
    assembler: BlockAssembler
    encoding: OutputEncoding


def predict_raster(
    image: str | Path,
    output: str | Path,
    options: PredictOptions | None = None,
    *,
    vectors: str | Path | None = None,
    stac_item: str | Path | None = None,
    source_item: dict | None = None,
    network: str | Path | None = None,
) -> PredictResult:
    """Predict road probability over ``image`` and write a COG to ``output``.

    ``options`` (``config.PredictOptions``; its defaults without) say how: model, windows,
    batches, device, precision, TTA, bands, resampling, sample type, cluster. Beside the COG
    and its QGIS style, ``vectors`` gets road centrelines, ``network`` the road network and
    ``stac_item`` a STAC Item (derived from ``source_item``, the image's own, when given).
    Raises FileExistsError when an output exists and ``options.overwrite`` is False,
    ``raster.RasterError`` when the raster does not fit the model.
    """
    t0 = time.perf_counter()
    options = options or PredictOptions()
    target = Target(
        sources.gdal_name(image),  # /vsicurl/https://... stays a str
        Path(output),
        vectors=_optional_path(vectors),
        stac_item=_optional_path(stac_item),
        source_item=source_item,
        network=_optional_path(network),
    )
    info = check_target(target, options)
    network_warm_up = _start_network_warm_up() if target.network is not None else None
    resolving, band_plan = _resolve_model_early(target, info, options)
    WindowGrid(info.height, info.width, options.window, options.overlap)  # checks both
    run, ran, skipped, timings = _predict_on_cluster(target, info, options, resolving, band_plan)
    with _one_set(target, options.overwrite) as written:
        vectors_out = _publish(target, info, options, run, timings, network_warm_up, written)
    seconds = time.perf_counter() - t0
    return PredictResult(
        output=target.output,
        vectors=vectors_out,
        seconds=seconds,
        windows_run=ran,
        windows_skipped=skipped,
        mpix_per_s=info.width * info.height / 1e6 / seconds,
        peak_open_blocks=run.assembler.peak_open,
        timings=timings,
    )


def _optional_path(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path)


# ------------------------------------------------------------------------ phase: the request
def check_target(target: Target, options: PredictOptions) -> raster.RasterInfo:
    """Refuse, before any work, outputs that exist (without overwrite) or would replace the
    input, a disk too full for the output and a STAC Item without a CRS; returns the raster's
    description."""
    output = target.output
    style = styles.style_path(output)
    for path in (output, target.vectors, target.network, style, target.stac_item):
        if path is not None and path.exists() and not options.overwrite:
            raise FileExistsError(f"{path}: exists; pass --overwrite to replace it")
    _check_output_formats(target)
    if sources.absolute(target.image) == str(output.resolve()):
        raise ValueError(f"{output}: the output would replace the input image")
    info = raster.raster_info(target.image)
    check_free_space(output, min_output_bytes(info.width, info.height, options.dtype))
    if target.stac_item is not None and info.crs is None:  # refused before any work, not after it
        raise raster.RasterError(
            f"{target.image}: no CRS, so no STAC Item (its footprint is in EPSG:4326)"
        )
    return info


def _check_output_formats(target: Target) -> None:
    """Each output named for what is written into it (a GeoTIFF, GeoPackages, a JSON Item);
    a GeoPackage with layers of its own is not replaced (``output_checks.check_output``).
    Existing outputs without ``--overwrite`` were refused already (``check_target``)."""
    from pipeline.network_io import EDGES_LAYER, NODES_LAYER

    image = target.image if Path(target.image).exists() else None  # not a /vsicurl/ URL
    check_output(target.output, suffixes=GEOTIFF, overwrite=True)
    for path, layers in (
        (target.vectors, ("roads",)),
        (target.network, (EDGES_LAYER, NODES_LAYER)),
    ):
        if path is not None:
            check_output(
                path, suffixes=GEOPACKAGE, overwrite=True, inputs=[image], own_layers=layers
            )
    if target.stac_item is not None:
        check_output(target.stac_item, suffixes=(".json",), overwrite=True, inputs=[image])


def _resolve_model_early(
    target: Target, info: raster.RasterInfo, options: PredictOptions
) -> tuple[Future, raster.BandPlan | None]:
    """Start resolving the model on a thread; returns that future and, for a model folder, the
    band plan (``None`` for a registry model, planned once the cluster is up).

    A registry model is resolved while the cluster starts: importing MLflow and asking the
    store take about as long (~1.7 s) as a worker takes to start. A model folder is read and
    checked at once, so that its errors come before any cluster starts."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="roadseg-model-resolve")
    resolving = pool.submit(_resolve_model, options.model, options.tracking_default, options.tta)
    pool.shutdown(wait=False)
    if registry.is_model_uri(str(options.model)):
        return resolving, None
    config = resolving.result().config
    return resolving, _check_inputs(target.image, info, config, str(options.model), options)


# ------------------------------------------------------------------------ phase: the cluster
def _predict_on_cluster(
    target: Target,
    info: raster.RasterInfo,
    options: PredictOptions,
    resolving: Future,
    band_plan: raster.BandPlan | None,
) -> tuple[RunPlan, int, int, dict[str, float]]:
    """Start (or join) the cluster, plan the run, stream every task into the COG; returns the
    plan, the windows run and skipped, and the seconds by phase."""
    timings = {"read": 0.0, "model": 0.0, "blend": 0.0, "assemble_write": 0.0}
    t_cluster = time.perf_counter()
    with parallel.cluster_client(options.scheduler, options.workers, options.device) as client:
        timings["cluster_start"] = time.perf_counter() - t_cluster
        run = plan_run(client, target, info, options, resolving.result(), band_plan, timings)
        ran, skipped, t_stop = _write_cog(client, run, target, info, options, timings)
    # the part of the cluster's shutdown not hidden behind the COG finalisation
    timings["cluster_stop"] = time.perf_counter() - t_stop
    return run, ran, skipped, timings


def plan_run(
    client: Any,
    target: Target,
    info: raster.RasterInfo,
    options: PredictOptions,
    resolved: ResolvedModel,
    band_plan: raster.BandPlan | None,
    timings: dict[str, float],
) -> RunPlan:
    """The run's bands, pixel scale, window grid, tags, batch size and tasks, once the model
    is known and its workers are up."""
    folder, config, tags, version = resolved
    image, model_ref = target.image, str(options.model)
    if band_plan is None:
        band_plan = _check_inputs(image, info, config, model_ref, options)
    scale = pixel_scale(
        image, info, config, model_ref, options.resample, options.gsd_tolerance,
        options.pixel_size_m,
    )  # fmt: skip
    stretch = None
    if config.normalisation == "percentile":  # this raster's own band range, as in training
        stretch = tuple(raster.band_percentiles(image, band_plan))
    grid = raster_grid(info, options.window, options.overlap, scale)
    encoding = OutputEncoding.of(options.dtype)
    tags.update(_run_tags(options, band_plan, scale, encoding))
    if declared := declared_pixel_size(info, options.pixel_size_m):
        tags["pixel_size_m"] = f"{declared:g}"  # `pipeline network` measures by it
    model_dir = str(folder.resolve())
    link = parallel.dashboard_link(client)
    if options.progress and link:
        print(f"Dask dashboard: {link}")
    batch_size = _fit_batch_size(client, model_dir, version, options, timings)
    # a task holds at least one full batch of windows
    groups = window_groups(grid, max(options.windows_per_task, batch_size))
    if options.progress:
        print(plan_line(image, grid, len(groups), parallel.total_threads(client)))
    assembler = BlockAssembler(
        info.height, info.width, options.block_size, [g.region for g in groups]
    )
    job = PredictJob(
        sources.absolute(image),
        model_dir,
        options.device,
        grid,
        batch_size,
        options.tta,
        options.precision,
        plan=band_plan,
        scale=scale,
        stretch=stretch,
        model_version=version,
    )
    return RunPlan(config, tags, job, groups, assembler, encoding)


def _run_tags(
    options: PredictOptions, band_plan: raster.BandPlan, scale: PixelScale, encoding: OutputEncoding
) -> dict[str, Any]:
    """The output's tags that record how it was predicted (after those naming the model)."""
    return {
        "window": options.window,
        "overlap": options.overlap,
        "tta": options.tta,
        "precision": options.precision,
        "bands": ",".join(str(b) for b in band_plan.bands),
        "model_pixels_per_pixel": _scale_tag(scale),
        **({"fill": f"{band_plan.fill:g}"} if band_plan.fill is not None else {}),
        **encoding.tags(),
    }


def _scale_tag(scale: PixelScale) -> str:
    """Model pixels per raster pixel: one number for square pixels, else "down across"."""
    down, across = scale
    return f"{down:.6g}" if down == across else f"{down:.6g} {across:.6g}"


def _fit_batch_size(
    client: Any, model_dir: str, version: str, options: PredictOptions, timings: dict[str, float]
) -> int:
    """``options.batch_size``, else the smallest that every worker says it can take; every
    worker loads the model (of ``version``) now either way (timed as ``model_load``)."""
    t_load = time.perf_counter()
    concurrent = parallel.max_threads_per_worker(client)
    fitted = client.run(
        fitted_batch_size, model_dir, options.device, options.window, concurrent,
        options.precision, version,
    )  # fmt: skip
    timings["model_load"] = time.perf_counter() - t_load
    return options.batch_size or min(fitted.values())


def _write_cog(
    client: Any,
    run: RunPlan,
    target: Target,
    info: raster.RasterInfo,
    options: PredictOptions,
    timings: dict[str, float],
) -> tuple[int, int, float]:
    """Stream every task's windows into the output COG; returns (windows run, windows
    skipped, when the COG was finished). Our own cluster stops while the COG's overviews are
    built."""
    stopping = None
    try:
        with raster.stream_cog(
            target.output,
            width=info.width,
            height=info.height,
            crs=info.crs,
            transform=info.transform,
            gcps=info.gcps,
            gcp_crs=info.gcp_crs,
            dtype=run.encoding.dtype,
            nodata=run.encoding.nodata,
            description=BAND_DESCRIPTION,
            scale=run.encoding.scale,
            tags=run.tags,
            overwrite=options.overwrite,
            cog_blocksize=_cog_blocksize(info.height, info.width),
        ) as writer:
            t_stream = time.perf_counter()
            try:
                ran, skipped = _stream_windows(
                    client,
                    run,
                    writer,
                    timings,
                    options.progress,
                    sources.display_name(target.image),
                )
            finally:
                # workers of a cluster that outlives this call (--scheduler) close the raster
                # now; best effort: a worker that died has nothing left open
                with contextlib.suppress(Exception):
                    client.run(release_readers)
            t_finalize = time.perf_counter()
            timings["windows"] = t_finalize - t_stream
            stopping = parallel.stop_cluster_in_background(client)
        t_stop = time.perf_counter()
        timings["cog_finalize"] = t_stop - t_finalize
    finally:
        if stopping is not None:
            stopping.result()
    return ran, skipped, t_stop


# ------------------------------------------------------------------------ phase: publishing
@contextlib.contextmanager
def _one_set(target: Target, overwrite: bool) -> Iterator[list[Path]]:
    """The target's outputs as one set while they are published: a failure or Ctrl-C part way
    removes what this run wrote (the COG, then each path added to the yielded list) and, with
    ``overwrite``, the rest of the set it was to replace, so a set is never left with its COG
    but not its network, nor a new COG beside an older run's network; run it again. Without
    ``overwrite`` a file that another process put at one of the names meanwhile is kept."""
    written = [target.output]
    try:
        yield written
    except BaseException:
        doomed = [*target.outputs(), styles.style_path(target.output)] if overwrite else written
        for path in doomed:
            path.unlink(missing_ok=True)
        raise


def _publish(
    target: Target,
    info: raster.RasterInfo,
    options: PredictOptions,
    run: RunPlan,
    timings: dict[str, float],
    network_warm_up: Future | None,
    written: list[Path],
) -> Path | None:
    """Beside the written COG: its QGIS style, then the centrelines, the road network and the
    STAC Item asked for, each added to ``written`` once written. Returns the centrelines'
    path (None when not asked for)."""
    output, threshold = target.output, run.config.threshold
    written.append(styles.write_probability_style(output, threshold, overwrite=options.overwrite))
    vectors_out = None
    if target.vectors is not None:
        from pipeline.vectorize import vectorize_raster

        vectors_out = vectorize_raster(
            output,
            target.vectors,
            threshold=threshold,
            overwrite=options.overwrite,
            min_spur_m=options.vector_min_spur_m,
            simplify_m=options.vector_simplify_m,
        )
        written.append(vectors_out)
    if target.network is not None:
        from pipeline.network import network_raster

        network_warm_up.result()
        t_network = time.perf_counter()
        net = options.network_params
        network_raster(
            output,
            target.network,
            net,
            threshold=net.threshold or threshold,
            overwrite=options.overwrite,
        )
        written.append(target.network)
        timings["network"] = time.perf_counter() - t_network
    if target.stac_item is not None:
        encoding = run.encoding
        stac.write_prediction_item(
            target.stac_item,
            output,
            info,
            run.tags,
            vectors=vectors_out,
            network=target.network,
            source_item=target.source_item,
            encoding={
                "data_type": encoding.dtype,
                "nodata": encoding.nodata,
                "scale": encoding.scale,
            },
            overwrite=options.overwrite,
        )
    return vectors_out
