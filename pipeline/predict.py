"""Predict roads on one raster of any size: windows -> model -> stitching -> streamed COG.

The flow, and where each part lives:

* ``windows.py`` lays a fixed grid of overlapping windows over the raster (a function of
  raster size, window and overlap only) and cuts it into tasks of ``windows_per_task``
  neighbouring windows;
* each task runs on a Dask worker (``run_group``): it reads its windows (never the whole
  raster), skips windows that are all nodata, normalises with the model's own mean/std,
  zeroes nodata, runs the model in batches (optionally with 8-fold dihedral TTA) and returns
  ``weight * probability`` summed over its area, the weights already normalised
  (``stitching.py``). Every window is computed exactly once;
* the client adds results into output blocks as they arrive (``stitching.BlockAssembler``)
  and writes each block the moment all tasks touching it are in (``raster.stream_cog``);
  memory holds the open blocks only. The staging file becomes a COG with overviews, renamed
  into place when everything succeeded.

A pixel's value is the same sum whatever the block size or the number of workers.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import parallel, raster
from pipeline.model import ModelConfig, load_model, pick_device, read_config, resolve_model
from pipeline.stitching import (
    NODATA_UINT8,
    UINT8_SCALE,
    BlockAssembler,
    encode_float32,
    encode_uint8,
    window_contribution_weight,
)
from pipeline.windows import Rect, WindowGrid, WindowGroup, window_groups

BAND_DESCRIPTION = "road_probability"
DEFAULT_BLOCK = 1024
# Windows per forward pass on CPU when not given: as fast as 4 on 2 cores, and a worker
# peaks at ~1.0 GiB instead of ~1.4 GiB for 512 px windows (BENCHMARKS.md, issue 6).
CPU_BATCH_SIZE = 2
GPU_MEMORY_FRACTION = 0.6  # of the GPU memory free after loading the model, for activations
MAX_GPU_BATCH_SIZE = 64


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


@dataclass(frozen=True)
class PredictJob:
    """Everything a worker needs to run windows; small, so it travels with each task."""

    image: str
    model_dir: str
    device: str
    grid: WindowGrid
    batch_size: int
    tta: bool


@dataclass
class GroupResult:
    """One task's output: summed normalised contributions and validity over ``region``."""

    region: Rect
    contrib: np.ndarray | None  # None when every window of the task was all nodata
    valid: np.ndarray | None
    ran: int
    skipped: int
    timings: dict[str, float] = field(default_factory=dict)  # worker seconds by phase


def default_output_path(image: Path) -> Path:
    """``region.tif`` -> ``region_roads.tif`` beside it."""
    image = Path(image)
    return image.with_name(image.stem + "_roads.tif")


# ------------------------------------------------------------------------------ worker side
def _load_for_worker(model_dir: str, device: str) -> tuple[torch.nn.Module, ModelConfig, torch.device]:
    dev = pick_device(device)
    if dev.type == "cuda" and dev.index is None:
        gpu = parallel.worker_gpu()
        dev = torch.device("cuda", torch.cuda.current_device() if gpu is None else gpu)
    model, config = load_model(model_dir, dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, config, dev


def worker_model(model_dir: str, device: str) -> tuple[torch.nn.Module, ModelConfig, torch.device]:
    """The model for this worker process, loaded on first use and reused by later tasks."""
    return parallel.worker_cached(("model", model_dir, device), lambda: _load_for_worker(model_dir, device))


def fitted_batch_size(model_dir: str, device: str, window: int, concurrent: int = 1) -> int:
    """Runs on a worker: the batch size it should use for ``window`` x ``window`` windows.

    CPU: ``CPU_BATCH_SIZE``. CUDA: one window is run to measure its activation memory, and
    the batch is what fits in ``GPU_MEMORY_FRACTION`` of the memory still free (what the
    caching allocator holds counts as free), shared by the ``concurrent`` tasks the worker
    runs at once, between 1 and ``MAX_GPU_BATCH_SIZE``.
    """
    model, config, dev = worker_model(model_dir, device)
    if dev.type != "cuda":
        return CPU_BATCH_SIZE
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    forward_probs(model, torch.zeros(1, config.in_channels, window, window), dev)
    per_window = max(1, torch.cuda.max_memory_allocated(dev) - before)
    free, _total = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return int(max(1, min(MAX_GPU_BATCH_SIZE, GPU_MEMORY_FRACTION * free // (per_window * concurrent))))


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def _undo_dihedral(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.flip(y, dims=(-1,)) if flip else y
    return torch.rot90(y, -k, dims=(-2, -1))


def forward_probs(model: torch.nn.Module, x: torch.Tensor, device: torch.device, tta: bool = False) -> np.ndarray:
    """Road probability (N, H, W) float32 for a normalised batch (N, C, H, W).

    Under CUDA: channels_last and autocast (bf16 where supported, else fp16). With ``tta`` the
    probabilities of the eight dihedral transforms (4 rotations x flip) are averaged.
    """
    with torch.inference_mode():
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            ctx = torch.autocast("cuda", dtype=dtype)
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            if not tta:
                prob = torch.sigmoid(model(x).float())
            else:
                prob = torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3], device=device)
                for k in range(4):
                    for flip in (False, True):
                        y = torch.sigmoid(model(_dihedral(x, k, flip)).float())
                        prob += _undo_dihedral(y, k, flip)
                prob /= 8
        return prob[:, 0].float().cpu().numpy()


def normalise(image: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(C, H, W) any dtype -> float32 ``(x - mean) / std``, 0 where the pixel is nodata."""
    x = (image.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
    x[:, ~valid] = 0.0
    return x


def run_group(job: PredictJob, group: WindowGroup) -> GroupResult:
    """Run one task's windows and return their blended contribution (runs on a worker)."""
    model, config, device = worker_model(job.model_dir, job.device)
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    region = group.region
    contrib: np.ndarray | None = None
    valid_out: np.ndarray | None = None
    batch: list[tuple[tuple[int, int], np.ndarray, np.ndarray]] = []
    ran = skipped = 0
    timings = {"read": 0.0, "model": 0.0, "blend": 0.0}

    def flush() -> None:
        nonlocal contrib, valid_out
        if not batch:
            return
        t0 = time.perf_counter()
        x = torch.from_numpy(np.stack([b[1] for b in batch]))
        probs = forward_probs(model, x, device, job.tta)
        t1 = time.perf_counter()
        timings["model"] += t1 - t0
        if contrib is None:
            contrib = np.zeros((region.height, region.width), np.float32)
            valid_out = np.zeros((region.height, region.width), bool)
        for (ij, _, valid), prob in zip(batch, probs, strict=True):
            inside, weight = window_contribution_weight(job.grid, *ij)
            dst = inside.slices_in(region)
            contrib[dst] += weight * prob[: inside.height, : inside.width]
            valid_out[dst] |= valid[: inside.height, : inside.width]
        batch.clear()
        timings["blend"] += time.perf_counter() - t1

    with raster.gdal_cache_limit(), raster.open_reader(job.image) as reader:
        for ij in group.windows:
            t0 = time.perf_counter()
            rect = job.grid.rect(*ij)
            image, valid = raster.read_window(reader, rect.col_off, rect.row_off, rect.width, rect.height)
            if not valid.any():
                skipped += 1  # all nodata: the model never sees it
                timings["read"] += time.perf_counter() - t0
                continue
            x = normalise(image, valid, mean, std)
            timings["read"] += time.perf_counter() - t0
            if batch and batch[0][1].shape != x.shape:
                flush()  # the last row/column of windows is cropped: a batch holds one shape
            batch.append((ij, x, valid))
            ran += 1
            if len(batch) >= job.batch_size:
                flush()
        flush()
    return GroupResult(region, contrib, valid_out, ran, skipped, timings)


# ------------------------------------------------------------------------------ client side
def _check_inputs(image: Path, info: raster.RasterInfo, config: ModelConfig, model_ref: str) -> None:
    if info.count != config.in_channels:
        raise raster.RasterError(
            f"{image}: has {info.count} band(s), but the model {model_ref} expects "
            f"{config.in_channels} ({', '.join(config.bands)})"
        )
    names = [d.lower() if d else None for d in info.band_descriptions]
    if all(names) and names != [b.lower() for b in config.bands]:
        warnings.warn(
            f"{image}: band descriptions {names} differ from the model's bands {config.bands}; "
            "bands are used in file order",
            stacklevel=3,
        )
    if info.crs is None:
        warnings.warn(f"{image}: raster has no CRS; the prediction will have none either", stacklevel=3)


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
    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(.+))", ref)
    if m:
        tags["model_uri"] = ref
        version = m.group(2)
        if version is None:
            from pipeline import registry

            with contextlib.suppress(Exception):  # the version is informative only
                version = registry.alias_version(m.group(1), m.group(3))
        if version:
            tags["model_version"] = str(version)
    return tags


def _cog_blocksize(height: int, width: int) -> int:
    # 512 px COG tiles as GDAL's default; small rasters get 256 so they still have an overview
    return 512 if min(height, width) >= 2048 else 256


def _stream_windows(
    client: Any,
    job: PredictJob,
    groups: list[WindowGroup],
    assembler: BlockAssembler,
    writer: raster.BlockWriter,
    encode: Callable[[np.ndarray, np.ndarray], np.ndarray],
    timings: dict[str, float],
    progress: bool,
    name: str,
) -> tuple[int, int]:
    """Run every task on the cluster; write each output block as it completes.

    Returns (windows run, windows skipped); adds the workers' and the assembly's seconds to
    ``timings``.
    """
    ran = skipped = 0
    for rect, prob, valid in assembler.initially_complete():
        writer.write(encode(prob, valid), rect.row_off, rect.col_off)
    results = parallel.stream_results(
        client, run_group, ((job, g) for g in groups),
        max_in_flight=2 * parallel.total_threads(client) + 2, total=len(job.grid),
        progress=progress, desc=f"predict {name}", unit="win",
        weight=lambda task: len(task[1].windows),
    )
    with contextlib.closing(results):  # on any error, cancel what is still queued
        for res in results:
            t0 = time.perf_counter()
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


def predict_raster(
    image: Path,
    output: Path,
    *,
    model: str | Path = "models:/road-unet@champion",
    window: int = 512,
    overlap: int = 64,
    batch_size: int | None = None,
    windows_per_task: int = 4,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    tta: bool = False,
    vectors: Path | None = None,
    overwrite: bool = False,
    dtype: str = "uint8",
    tracking_default: str = "sqlite:///mlflow.db",
    progress: bool = True,
    block_size: int = DEFAULT_BLOCK,
) -> PredictResult:
    """Predict road probability over ``image`` and write a COG to ``output``.

    ``block_size`` is the side of the output blocks written as they complete (a multiple of
    256); it changes memory and write granularity, never pixel values. ``batch_size`` None
    lets each worker choose (``fitted_batch_size``: 2 on CPU, what fits on a GPU); tasks hold
    at least one batch of windows. Raises
    FileExistsError when ``output`` (or ``vectors``) exists and ``overwrite`` is False,
    ``raster.RasterError`` when the band count does not match the model.
    """
    t0 = time.perf_counter()
    image, output = Path(image), Path(output)
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be uint8 or float32, got {dtype!r}")
    if window % 32:
        raise ValueError(f"window must be a multiple of 32 (U-Net depth 5), got {window}")
    if block_size <= 0 or block_size % 256:
        raise ValueError(f"block_size must be a positive multiple of 256, got {block_size}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for target in (output, vectors):
        if target is not None and Path(target).exists() and not overwrite:
            raise FileExistsError(f"{target}: exists; pass --overwrite to replace it")
    if output.resolve() == image.resolve():
        raise ValueError(f"{output}: the output would replace the input image")

    info = raster.raster_info(image)
    folder = resolve_model(model, tracking_default)
    config = read_config(folder)
    _check_inputs(image, info, config, str(model))

    if dtype == "uint8":
        encode, nodata, scale = encode_uint8, float(NODATA_UINT8), UINT8_SCALE
    else:
        encode, nodata, scale = encode_float32, float("nan"), None
    tags = _model_tags(model, Path(folder), config)
    tags.update(
        window=window, overlap=overlap, tta=tta,
        encoding="uint8: p = value / 254, 255 = nodata" if dtype == "uint8" else "float32: p, NaN = nodata",
    )
    if scale is not None:
        tags["scale"] = "1/254"

    timings = {"read": 0.0, "model": 0.0, "blend": 0.0, "assemble_write": 0.0}
    grid = WindowGrid(info.height, info.width, window, overlap)
    model_dir = str(Path(folder).resolve())
    with parallel.cluster_client(scheduler, workers, device) as client:
        timings["cluster_start"] = time.perf_counter() - t0
        link = parallel.dashboard_link(client)
        if progress and link:
            print(f"Dask dashboard: {link}")
        t_load = time.perf_counter()
        # every worker loads the model now (and says what batch it can take); the smallest wins
        concurrent = parallel.max_threads_per_worker(client)
        fitted = min(client.run(fitted_batch_size, model_dir, device, window, concurrent).values())
        batch_size = batch_size or fitted
        timings["model_load"] = time.perf_counter() - t_load
        # a task holds at least one full batch of windows
        groups = window_groups(grid, max(windows_per_task, batch_size))
        assembler = BlockAssembler(info.height, info.width, block_size, [g.region for g in groups])
        job = PredictJob(str(image.resolve()), model_dir, device, grid, batch_size, tta)
        with raster.stream_cog(
            output, width=info.width, height=info.height, crs=info.crs, transform=info.transform,
            dtype=dtype, nodata=nodata, description=BAND_DESCRIPTION, scale=scale, tags=tags,
            overwrite=overwrite, cog_blocksize=_cog_blocksize(info.height, info.width),
        ) as writer:
            t_stream = time.perf_counter()
            ran, skipped = _stream_windows(client, job, groups, assembler, writer, encode, timings,
                                           progress, image.name)
            t_finalize = time.perf_counter()
            timings["windows"] = t_finalize - t_stream
        t_stop = time.perf_counter()
        timings["cog_finalize"] = t_stop - t_finalize
    timings["cluster_stop"] = time.perf_counter() - t_stop

    vectors_out = None
    if vectors is not None:
        from pipeline.vectorize import vectorize_raster

        vectors_out = vectorize_raster(output, Path(vectors), threshold=config.threshold, overwrite=overwrite)
    seconds = time.perf_counter() - t0
    return PredictResult(
        output=output, vectors=vectors_out, seconds=seconds, windows_run=ran,
        windows_skipped=skipped, mpix_per_s=info.width * info.height / 1e6 / seconds,
        peak_open_blocks=assembler.peak_open, timings=timings,
    )
