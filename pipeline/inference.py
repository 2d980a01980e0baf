"""The worker side of predict: load the model once per worker, run windows, blend them.

Imported only on Dask workers (through ``pipeline.predict.run_group``), so the client that
plans and writes never loads torch. Each task reads its windows (never the whole raster),
skips windows that are all nodata, normalises with the model's own mean/std, zeroes nodata,
runs the model in batches of one window shape (optionally with 8-fold dihedral TTA) and
returns ``weight * probability`` summed over its area, the weights already normalised
(``stitching.py``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import parallel, raster
from pipeline.model import autocast_dtype, load_model, pick_device
from pipeline.model_config import WEIGHTS_FILE, ModelConfig, ModelError, read_config
from pipeline.normalise import standardise
from pipeline.predict_task import AS_IS, GroupResult, PixelScale, PredictJob, model_version
from pipeline.stitching import window_contribution_weight
from pipeline.windows import UNET_MULTIPLE, Rect, WindowGroup

# Windows per forward pass on CPU when not given: a CPU's convolutions already use every core
# at batch 1-2, and a worker then peaks at ~1.0 GiB instead of ~1.4 GiB with batch 4 for
# 512 px windows (measured; BENCHMARKS.md, issue 6).
CPU_BATCH_SIZE = 2
# Models a worker holds at once: a long-lived cluster running model after model (a
# comparison, a retrain) keeps the latest two in memory (on the GPU: in its memory), not all.
MODELS_KEPT = 2
GPU_MEMORY_FRACTION = 0.6  # of the GPU memory free after loading the model, for activations
MAX_GPU_BATCH_SIZE = 64


def load_for_inference(
    model_dir: str, device: str
) -> tuple[torch.nn.Module, ModelConfig, torch.device]:
    """The model of ``model_dir`` on ``device`` (``auto``: CUDA when present; on a Dask worker
    its own GPU), in channels-last layout, with its config and the device."""
    dev = pick_device(device)
    if dev.type == "cuda" and dev.index is None:
        gpu = parallel.worker_gpu()
        dev = torch.device("cuda", torch.cuda.current_device() if gpu is None else gpu)
    model, config = load_model(model_dir, dev)
    # the fast convolution layout of both oneDNN (CPU) and cuDNN
    return model.to(memory_format=torch.channels_last), config, dev


def worker_model(
    model_dir: str, device: str, version: str | None = None
) -> tuple[torch.nn.Module, ModelConfig, torch.device]:
    """The model for this worker process, loaded on first use and reused by later tasks.

    Keyed by ``version`` (``predict_task.model_version``, what the run was planned with;
    None: the folder's version now), so a model written again into its folder (retrained in
    place, or given evaluate's TTA threshold) is loaded afresh by a long-lived cluster's
    workers, while every window of one run uses the model it was planned with: a folder
    that changed since raises ModelError. A worker keeps its ``MODELS_KEPT`` most recently
    used models."""
    if version is None:
        version = model_version(read_config(Path(model_dir)))

    def load() -> tuple[torch.nn.Module, ModelConfig, torch.device]:
        loaded = load_for_inference(model_dir, device)
        if model_version(loaded[1]) != version:
            raise ModelError(
                f"{model_dir}: the model was written again while this predict ran; run it again"
            )
        return loaded

    return parallel.worker_cached(("model", model_dir, device, version), load, keep=MODELS_KEPT)


def fitted_batch_size(
    model_dir: str,
    device: str,
    window: int,
    concurrent: int = 1,
    precision: str = "auto",
    version: str | None = None,
) -> int:
    """Runs on a worker: the batch size it should use for ``window`` x ``window`` windows
    (loading the model of ``version``, ``worker_model``).

    CPU: ``CPU_BATCH_SIZE``. CUDA: one window is run to measure its activation memory, and
    the batch is what fits in ``GPU_MEMORY_FRACTION`` of the memory still free (what the
    caching allocator holds counts as free), shared by the ``concurrent`` tasks the worker
    runs at once, between 1 and ``MAX_GPU_BATCH_SIZE``.
    """
    model, config, dev = worker_model(model_dir, device, version)
    if dev.type != "cuda":
        return CPU_BATCH_SIZE
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    forward_probs(
        model, torch.zeros(1, config.in_channels, window, window), dev, precision=precision
    )
    per_window = max(1, torch.cuda.max_memory_allocated(dev) - before)
    free, _total = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return int(
        max(1, min(MAX_GPU_BATCH_SIZE, GPU_MEMORY_FRACTION * free // (per_window * concurrent)))
    )


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def _undo_dihedral(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.flip(y, dims=(-1,)) if flip else y
    return torch.rot90(y, -k, dims=(-2, -1))


def forward_probs(
    model: torch.nn.Module,
    x: torch.Tensor,
    device: torch.device,
    tta: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """Road probability (N, H, W) float32 for a normalised batch (N, C, H, W).

    channels_last, under autocast as ``precision`` says (``model.autocast_dtype``: with auto,
    bf16 on CUDA, float32 on CPU). With ``tta`` the probabilities of the eight dihedral
    transforms (4 rotations x flip) are averaged.
    """
    amp_dtype = autocast_dtype(device, precision, training=False)
    with torch.inference_mode():
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        ctx = (
            torch.autocast(device.type, dtype=amp_dtype)
            if amp_dtype is not None
            else contextlib.nullcontext()
        )
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


def forward_padded(
    model: torch.nn.Module,
    x: torch.Tensor,
    device: torch.device,
    tta: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """:func:`forward_probs` for a batch of any height and width: padded at the bottom and
    right to the U-Net's multiple of 32 (reflected where the image is large enough, else
    zeros), the probabilities cropped back to (N, H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % UNET_MULTIPLE, (-w) % UNET_MULTIPLE
    if ph or pw:
        mode = "reflect" if min(h, w) > max(ph, pw) else "constant"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return forward_probs(model, x, device, tta, precision)[:, :h, :w]


def model_shape(height: int, width: int, scale: PixelScale) -> tuple[int, int]:
    """The model-pixel shape of a ``height`` x ``width`` raster window at ``scale`` model pixels
    per raster pixel (down, across), each side rounded to the U-Net's multiple of 32."""
    return tuple(
        max(UNET_MULTIPLE, round(n * s / UNET_MULTIPLE) * UNET_MULTIPLE)
        for n, s in zip((height, width), scale, strict=True)
    )


def resample_window(
    image: np.ndarray, valid: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A window (C, H, W) and its validity resampled to ``shape``: area average (down) or
    bilinear (up) over valid pixels only, so nodata never bleeds into values; a model pixel is
    valid when at least half of what it covers is. Deterministic: it depends on the window."""
    # invalid pixels zeroed first: a float raster's NaN nodata times a zero weight is NaN
    x = torch.from_numpy(np.where(valid, image, 0).astype(np.float32))[None]
    v = torch.from_numpy(valid.astype(np.float32))[None, None]
    down = shape[0] * shape[1] <= image.shape[1] * image.shape[2]
    kwargs = {"mode": "area"} if down else {"mode": "bilinear", "align_corners": False}
    weight = F.interpolate(v, size=shape, **kwargs)
    x = F.interpolate(x * v, size=shape, **kwargs) / weight.clamp_min(1e-6)
    return x[0].numpy(), (weight[0, 0] >= 0.5).numpy()


def resample_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Probabilities (N, h, w) at the model's pixel size back to the window's ``shape``."""
    if probs.shape[1:] == tuple(shape):
        return probs
    y = F.interpolate(
        torch.from_numpy(probs)[:, None], size=shape, mode="bilinear", align_corners=False
    )
    return y[:, 0].clamp(0, 1).numpy()


@dataclass
class _OpenReader:
    key: tuple[str, str]  # (image, run id)
    generation: int
    stack: contextlib.ExitStack
    reader: raster.WindowReader


# Each task thread's open reader of the raster being predicted, kept between the tasks of one
# predict run: neighbouring tasks share the tiles under their overlapping windows, which GDAL's
# block cache then decodes once instead of once per task (4096^2 deflate input: window reads
# 0.54 s -> 0.25 s), and a VRT mosaic or remote COG is opened once per thread, not per task.
# Per thread, because a GDAL dataset must not be read by two threads at once; keyed by the run,
# so a later predict never reads through a handle (and cached blocks) of an earlier one. While
# a task reads, its reader is out of the table, so ``release_readers`` never closes one in use.
_READERS: dict[int, _OpenReader] = {}
_READERS_LOCK = threading.Lock()
_READERS_GENERATION = 0


@contextlib.contextmanager
def run_reader(
    image: str, run_id: str, plan: raster.BandPlan | None = None
) -> Iterator[raster.WindowReader]:
    """This thread's reader of ``image`` for predict run ``run_id``, opened on first use (reading
    the bands of ``plan``, which belongs to the run)."""
    key, me = (image, run_id), threading.get_ident()
    with _READERS_LOCK:
        entry, generation = _READERS.pop(me, None), _READERS_GENERATION
    if entry is not None and (entry.key != key or entry.generation != generation):
        entry.stack.close()
        entry = None
    if entry is None:
        stack = contextlib.ExitStack()
        reader = stack.enter_context(raster.open_reader(image, plan))
        entry = _OpenReader(key, generation, stack, reader)
    try:
        yield entry.reader
    except BaseException:
        entry.stack.close()  # a failed read may leave the dataset in any state: open afresh
        raise
    with _READERS_LOCK:
        if entry.generation == _READERS_GENERATION:
            _READERS[me] = entry
            entry = None
    if entry is not None:  # released while this task read
        entry.stack.close()


def release_readers() -> int:
    """Close the readers no task is using; one in use closes when its task ends. Run on every
    worker (``client.run``) when a predict finishes. Returns how many were closed."""
    global _READERS_GENERATION
    with _READERS_LOCK:
        _READERS_GENERATION += 1
        idle = list(_READERS.values())
        _READERS.clear()
    for entry in idle:
        entry.stack.close()
    return len(idle)


def open_reader_count() -> int:
    """Readers held open between tasks in this process (``client.run`` asks workers)."""
    with _READERS_LOCK:
        return len(_READERS)


def check_finite(probs: np.ndarray, job: PredictJob, first: tuple[int, int]) -> None:
    """Stop the run when the model yields NaN or infinite probabilities: written as uint8 they
    would read as "no road" everywhere, a wrong answer that looks like a real one."""
    if np.isfinite(probs).all():
        return
    raise ModelError(
        f"the model {job.model_dir} yields non-finite probabilities (NaN or inf) on the batch "
        f"starting at window {first}: its weights are broken (retrain it or restore "
        f"{WEIGHTS_FILE}), or the raster {job.image} holds NaN/inf values that are not nodata"
    )


def run_group(job: PredictJob, group: WindowGroup) -> GroupResult:
    """Run one task's windows and return their blended contribution (runs on a worker)."""
    model, config, device = worker_model(job.model_dir, job.device, job.model_version)
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    stretch = None if job.stretch is None else np.asarray(job.stretch, np.float32)
    blend = _GroupBlend(job, group.region, model, device)
    ran = skipped = 0
    with raster.gdal_cache_limit(), run_reader(job.image, job.run_id, job.plan) as reader:
        for ij in group.windows:
            t0 = time.perf_counter()
            rect = job.grid.rect(*ij)
            image, valid = raster.read_window(
                reader, rect.col_off, rect.row_off, rect.width, rect.height
            )
            if not valid.any():
                skipped += 1  # all nodata: the model never sees it
                blend.timings["read"] += time.perf_counter() - t0
                continue
            if job.scale != AS_IS:
                shape = model_shape(rect.height, rect.width, job.scale)
                pixels, model_valid = resample_window(image, valid, shape)
                x = standardise(pixels, mean, std, model_valid, stretch)
            else:
                x = standardise(image, mean, std, valid, stretch)
            blend.timings["read"] += time.perf_counter() - t0
            blend.add(ij, x, valid)
            ran += 1
        blend.flush()
    return GroupResult(group.region, blend.contrib, blend.valid, ran, skipped, blend.timings)


class _GroupBlend:
    """One task's sum of weighted window probabilities over its ``region``: windows are
    batched (one window shape per batch), run through the model and blended in."""

    def __init__(
        self, job: PredictJob, region: Rect, model: torch.nn.Module, device: torch.device
    ) -> None:
        self.job, self.region, self.model, self.device = job, region, model, device
        self.contrib: np.ndarray | None = None  # None until a window is run
        self.valid: np.ndarray | None = None
        self.batch: list[tuple[tuple[int, int], np.ndarray, np.ndarray]] = []
        self.timings = {"read": 0.0, "model": 0.0, "blend": 0.0}

    def add(self, ij: tuple[int, int], x: np.ndarray, valid: np.ndarray) -> None:
        """Queue window ``ij`` (normalised ``x``, its raster-pixel validity); runs a full batch."""
        if self.batch and self.batch[0][1].shape != x.shape:
            self.flush()  # the last row/column of windows is cropped: a batch holds one shape
        self.batch.append((ij, x, valid))
        if len(self.batch) >= self.job.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the queued windows and add their weighted probabilities to the sum."""
        if not self.batch:
            return
        job, batch = self.job, self.batch
        t0 = time.perf_counter()
        x = torch.from_numpy(np.stack([b[1] for b in batch]))
        probs = forward_probs(self.model, x, self.device, job.tta, job.precision)
        check_finite(probs, job, batch[0][0])
        t1 = time.perf_counter()
        self.timings["model"] += t1 - t0
        if self.contrib is None:
            self.contrib = np.zeros((self.region.height, self.region.width), np.float32)
            self.valid = np.zeros((self.region.height, self.region.width), bool)
        for (ij, _, valid), prob in zip(batch, probs, strict=True):
            if job.scale != AS_IS:  # back from the model's pixels onto the raster's
                prob = resample_probs(prob[None], valid.shape)[0]
            inside, weight = window_contribution_weight(job.grid, *ij)
            dst = inside.slices_in(self.region)
            self.contrib[dst] += weight * prob[: inside.height, : inside.width]
            self.valid[dst] |= valid[: inside.height, : inside.width]
        batch.clear()
        self.timings["blend"] += time.perf_counter() - t1
