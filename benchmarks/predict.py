"""Benchmark ``pipeline predict``: efficiency, overlap cost, throughput, memory.

Measured side by side in one run and printed as a table:

* efficiency = wall time of ``predict_raster`` on an N x N raster (cluster start, reading,
  blending, COG writing included) / the bare batched forward pass of the same model over the
  same number of windows in one process with all cores (target <= 1.15). The bare pass runs
  with the workers' malloc settings (like with like) and, for reference, in a plain process;
  every measurement runs in a fresh process;
* overlap cost = ``predict_raster`` wall with the default overlap / with overlap 0
  (target <= 1.35; the window-count ratio, the floor for any method, is printed beside it);
* throughput in Mpix/s;
* with ``--compare-dask-defaults``, the same predict on a cluster with dask's own housekeeping
  (``parallel.QUIET_CLUSTER_CONFIG`` off: the worker profiler, 20 ms event-loop ticks), run in
  the same round, and the ratio of the two;
* memory = peak RSS of the whole process tree (this process + Dask nanny/worker processes,
  sampled every 100 ms with psutil, in separate runs from the timed ones) while predicting rasters of two sizes (targets: the larger
  under 2 GB and within 20 % of the smaller).

Usage (the defaults are the full targets; on a 2-core CPU box use smaller sizes)::

    python benchmarks/predict.py                                   # 8192; memory 4096 vs 16384
    python benchmarks/predict.py --size 3072 --memory-sizes 2048,6144
    python benchmarks/predict.py --size 2048 --skip-memory
    python benchmarks/predict.py --size 8192 --skip-memory --repeats 3   # medians of 3 rounds
    python benchmarks/predict.py --size 4096 --skip-memory --skip-overlap --skip-efficiency \
        --compare-dask-defaults --repeats 4    # what dask's default housekeeping costs

The model is a random-weight U-Net (``--encoder``, resnet18 by default): speed and memory
do not depend on what the weights learned. Inputs are synthetic 4-band uint8 GeoTIFFs,
written block by block so making them does not inflate the measured memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import numpy as np
import psutil

from pipeline import parallel
from pipeline.config import PRECISIONS, PredictOptions
from pipeline.predict import predict_raster
from pipeline.windows import WindowGrid, window_groups


def make_input(path: Path, size: int, seed: int = 0) -> Path:
    """A size x size 4-band uint8 tiled GeoTIFF with some texture, written in strips."""
    import rasterio  # only to make the synthetic input; the pipeline itself reads via raster.py
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint8",
        crs="EPSG:32632",
        transform=from_origin(500000, 5400000, 0.5, 0.5),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        photometric="MINISBLACK",
        BIGTIFF="IF_SAFER",
    )
    strip = 512
    xx = np.arange(size)[None, :]
    with rasterio.open(path, "w", **profile) as ds:
        for r in range(0, size, strip):
            h = min(strip, size - r)
            yy = np.arange(r, r + h)[:, None]
            base = 120 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
            data = np.stack([base + 10 * b for b in range(4)]) + rng.normal(0, 8, (4, h, size))
            ds.write(np.clip(data, 1, 255).astype(np.uint8), window=Window(0, r, size, h))
    return path


# torch is imported only where a model is built or run, so the measured predict process is
# what `pipeline predict` is: a client without torch.
def make_model(folder: Path, encoder: str) -> Path:
    import torch

    from pipeline.model import ModelConfig, build_unet, save_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=encoder,
        bands=["red", "green", "blue", "nir"],
        mean=[120.0] * 4,
        std=[40.0] * 4,
        chip_size=512,
    )
    return save_model(build_unet(cfg), cfg, folder)


class TreeMemory:
    """Samples the memory of this process and all its descendants; keeps the peaks.

    ``rss`` sums resident sets, counting shared pages (torch's libraries, ~0.4 GB) once per
    process; ``pss`` shares them out (proportional set size), so its sum is the tree's real
    footprint.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.rss, self.pss = interval, 0, 0
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = pss = 0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                m = p.memory_full_info()
            except psutil.Error:
                continue
            rss += m.rss
            pss += getattr(m, "pss", m.rss)
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def bare_forward(model_dir: Path, size: int, args: argparse.Namespace) -> float:
    """Seconds for the model alone over the windows predict runs on a size x size raster.

    The same windows (the cropped last row and column included), batched as ``run_group``
    batches them (per task, one shape per batch); no reading, no Dask, no writing.
    """
    import torch

    from pipeline.inference import fitted_batch_size, forward_probs, worker_model

    torch.set_num_threads(parallel.available_cores())
    # the model as a worker holds it (device, channels_last), loaded once: fitted_batch_size
    # below reuses the same cached copy
    model, cfg, dev = worker_model(str(model_dir), args.device)
    grid = WindowGrid(size, size, args.window, args.overlap)
    batch_size = args.batch_size or fitted_batch_size(
        str(model_dir), args.device, args.window, 1, args.precision
    )
    batches: list[tuple[int, int, int]] = []  # (n, height, width)
    for group in window_groups(grid, max(args.windows_per_task, batch_size)):
        shapes = [(grid.rect(*ij).height, grid.rect(*ij).width) for ij in group.windows]
        run: list[tuple[int, int]] = []
        for shape in shapes + [None]:
            if run and (shape != run[0] or len(run) == batch_size):
                batches.append((len(run), *run[0]))
                run = []
            if shape is not None:
                run.append(shape)
    inputs = {(n, h, w): torch.randn(n, cfg.in_channels, h, w) for n, h, w in set(batches)}
    for x in inputs.values():
        forward_probs(
            model, x, dev, precision=args.precision
        )  # warm-up (allocator, kernels, every shape), not timed
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for key in batches:
        forward_probs(model, inputs[key], dev, precision=args.precision)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_bare(model_dir: Path, size: int, args: argparse.Namespace, tuned: bool) -> float:
    """``bare_forward`` in a fresh process; ``tuned`` gives it the workers' malloc settings."""
    env = dict(os.environ, **(parallel.ALLOCATOR_ENV if tuned else {}))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure-bare",
        str(size),
        "--model-dir",
        str(model_dir),
        "--window",
        str(args.window),
        "--overlap",
        str(args.overlap),
        "--windows-per-task",
        str(args.windows_per_task),
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


def measure_once(
    image: Path, out: Path, model_dir: Path, args: argparse.Namespace, overlap: int
) -> dict:
    """One predict_raster call (run in a fresh process), with the memory sampler around it
    only for memory runs: reading /proc/<pid>/smaps of every process ten times a second costs
    CPU the timed runs must not lose."""
    with TreeMemory() if args.sample_memory else contextlib.nullcontext(TreeMemory()) as mem:
        t0 = time.perf_counter()
        res = predict_raster(
            image,
            out,
            PredictOptions(
                model=model_dir,
                window=args.window,
                overlap=overlap,
                batch_size=args.batch_size,
                windows_per_task=args.windows_per_task,
                workers=args.workers,
                device=args.device,
                precision=args.precision,
                overwrite=True,
                progress=args.progress,
                block_size=args.block_size,
            ),
        )
        wall = time.perf_counter() - t0
    return dict(
        wall=wall,
        rss=mem.rss,
        pss=mem.pss,
        windows=res.windows_run,
        open_blocks=res.peak_open_blocks,
        timings=res.timings,
    )


def run_predict(
    image: Path,
    out: Path,
    model_dir: Path,
    args: argparse.Namespace,
    overlap: int,
    memory: bool = False,
    dask_defaults: bool = False,
) -> dict:
    """``measure_once`` in a fresh Python process, so runs do not inherit each other's memory."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure-one",
        str(image),
        "--out",
        str(out),
        "--model-dir",
        str(model_dir),
        "--overlap",
        str(overlap),
        "--window",
        str(args.window),
        "--windows-per-task",
        str(args.windows_per_task),
        "--block-size",
        str(args.block_size),
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.progress:
        cmd += ["--progress"]
    if memory:
        cmd += ["--sample-memory"]
    if dask_defaults:
        cmd += ["--dask-defaults"]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_round(image: Path, work: Path, model_dir: Path, args: argparse.Namespace) -> dict:
    """One round of the timed measurements, each in a fresh process, back to back: predict at
    the default overlap, predict at overlap 0, the bare forward in a plain process and with the
    workers' malloc settings. Ratios are taken within a round, so a machine that slows down
    between rounds (a shared VM) moves both sides of each ratio."""
    n = args.size
    r = run_predict(image, work / f"out_{n}.tif", model_dir, args, args.overlap)
    out = dict(wall=r["wall"], windows=r["windows"], timings=r["timings"])
    if not args.skip_overlap:
        r0 = run_predict(image, work / f"out0_{n}.tif", model_dir, args, 0)
        out.update(wall0=r0["wall"], windows0=r0["windows"])
    if not args.skip_efficiency:
        out.update(
            plain=run_bare(model_dir, n, args, tuned=False),
            bare=run_bare(model_dir, n, args, tuned=True),
        )
    if args.compare_dask_defaults:
        rd = run_predict(
            image, work / f"outd_{n}.tif", model_dir, args, args.overlap, dask_defaults=True
        )
        out.update(
            wall_dask=rd["wall"], model=r["timings"]["model"], model_dask=rd["timings"]["model"]
        )
    return out


def med(rounds: list[dict], key: str) -> float:
    """The median of ``key`` over the rounds."""
    return median(r[key] for r in rounds)


def runs(rounds: list[dict], key: str, fmt: str = ".1f") -> str:
    """``; runs a, b, c`` when there was more than one round (the value shown is their median)."""
    return "" if len(rounds) < 2 else "; runs " + ", ".join(f"{r[key]:{fmt}}" for r in rounds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size", type=int, default=8192, help="raster side for efficiency/overlap/throughput"
    )
    ap.add_argument(
        "--memory-sizes", default="4096,16384", help="two raster sides for the memory comparison"
    )
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default: predict's own choice")
    ap.add_argument("--windows-per-task", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument(
        "--precision",
        default="auto",
        choices=list(PRECISIONS),
        help="autocast precision of both predict and the bare pass (pipeline.model.autocast_dtype)",
    )
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of the timed runs; medians are reported (the ratios within each round)",
    )
    ap.add_argument(
        "--compare-dask-defaults",
        action="store_true",
        help="also predict on a cluster with dask's default housekeeping (profiler, 20 ms ticks; "
        "parallel.QUIET_CLUSTER_CONFIG off) in each round, and print the ratio",
    )
    ap.add_argument("--skip-efficiency", action="store_true")
    ap.add_argument("--skip-overlap", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--progress", action="store_true", help="show the progress bars")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep inputs/outputs here (default: a temp dir)"
    )
    ap.add_argument(
        "--measure-one", type=Path, help=argparse.SUPPRESS
    )  # internal: one run, JSON out
    ap.add_argument(
        "--measure-bare", type=int, help=argparse.SUPPRESS
    )  # internal: bare seconds out
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--sample-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dask-defaults", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure_bare:
        print(bare_forward(args.model_dir, args.measure_bare, args))
        return
    if args.measure_one:
        if args.dask_defaults:  # the comparison leg: the cluster keeps dask's own housekeeping
            parallel.QUIET_CLUSTER_CONFIG.clear()
        print(
            json.dumps(measure_once(args.measure_one, args.out, args.model_dir, args, args.overlap))
        )
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="roadseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    try:
        model_dir = make_model(work / "model", args.encoder)
        dev = (
            "cuda"
            if args.device == "cuda" or (args.device == "auto" and parallel._cuda_count())
            else "cpu"
        )
        print(
            f"device {dev}, cores {parallel.available_cores()}, workers {args.workers or 'auto'}, "
            f"encoder {args.encoder}, window {args.window}, overlap {args.overlap}, "
            f"batch {args.batch_size or 'auto'}, windows/task {args.windows_per_task}, block {args.block_size}"
        )

        gib = 2**30
        if not (args.skip_efficiency and args.skip_overlap) or args.compare_dask_defaults:
            n = args.size
            image = make_input(work / f"in_{n}.tif", n)
            rounds = [timed_round(image, work, model_dir, args) for _ in range(args.repeats)]
            wall = med(rounds, "wall")
            n_win = rounds[0]["windows"]
            rows.append(
                (
                    f"predict {n}^2 (overlap {args.overlap})",
                    f"{wall:.1f} s",
                    f"{n_win} windows{runs(rounds, 'wall')}",
                )
            )
            timings = {k: median(r["timings"][k] for r in rounds) for k in rounds[0]["timings"]}
            rows.append(
                ("  of which (seconds)", "", ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
            )
            if not args.skip_overlap:
                floor = (
                    WindowGrid(n, n, args.window, args.overlap).pixels
                    / WindowGrid(n, n, args.window, 0).pixels
                )
                rows.append(
                    (
                        f"predict {n}^2 (overlap 0)",
                        f"{med(rounds, 'wall0'):.1f} s",
                        f"{rounds[0]['windows0']} windows{runs(rounds, 'wall0')}",
                    )
                )
                for r in rounds:
                    r["overlap_cost"] = r["wall"] / r["wall0"]
                rows.append(
                    (
                        f"overlap cost = overlap {args.overlap} / 0",
                        f"{med(rounds, 'overlap_cost'):.3f}",
                        f"target <= 1.35; ratio of pixels the model computes (the floor) {floor:.3f}"
                        f"{runs(rounds, 'overlap_cost', '.3f')}",
                    )
                )
            if not args.skip_efficiency:
                for r in rounds:
                    r["efficiency"], r["vs_plain"] = r["wall"] / r["bare"], r["wall"] / r["plain"]
                rows.append(
                    (
                        f"bare forward, same {n_win} windows",
                        f"{med(rounds, 'bare'):.1f} s",
                        f"one process, all cores, workers' malloc settings (plain process: "
                        f"{med(rounds, 'plain'):.1f} s){runs(rounds, 'bare')}",
                    )
                )
                rows.append(
                    (
                        "efficiency = predict / bare",
                        f"{med(rounds, 'efficiency'):.3f}",
                        f"target <= 1.15 (vs the plain process: {med(rounds, 'vs_plain'):.3f})"
                        f"{runs(rounds, 'efficiency', '.3f')}",
                    )
                )
            if args.compare_dask_defaults:
                for r in rounds:
                    r["housekeeping"], r["housekeeping_model"] = (
                        r["wall_dask"] / r["wall"],
                        r["model_dask"] / r["model"],
                    )
                dask_note = (
                    f"model {med(rounds, 'model_dask'):.1f} s (quiet: {med(rounds, 'model'):.1f} s)"
                )
                rows.append(
                    (
                        f"predict {n}^2, dask's default housekeeping",
                        f"{med(rounds, 'wall_dask'):.1f} s",
                        dask_note + runs(rounds, "wall_dask"),
                    )
                )
                cost_note = f"wall; model time {med(rounds, 'housekeeping_model'):.3f}"
                rows.append(
                    (
                        "housekeeping cost = default / quiet",
                        f"{med(rounds, 'housekeeping'):.3f}",
                        cost_note + runs(rounds, "housekeeping", ".3f"),
                    )
                )
            rows.append(
                ("throughput", f"{n * n / 1e6 / wall:.3f} Mpix/s", f"{n}^2, overlap {args.overlap}")
            )

        if not args.skip_memory:
            small, large = (int(v) for v in args.memory_sizes.split(","))
            peaks = {}
            for n in (small, large):
                image = make_input(work / f"mem_{n}.tif", n)
                r = run_predict(
                    image, work / f"mem_out_{n}.tif", model_dir, args, args.overlap, memory=True
                )
                peaks[n] = r
                rows.append(
                    (
                        f"peak memory, process tree, {n}^2",
                        f"{r['pss'] / gib:.2f} GiB",
                        f"PSS (RSS sum {r['rss'] / gib:.2f} GiB); {r['wall']:.1f} s, "
                        f"at most {r['open_blocks']} open blocks",
                    )
                )
                image.unlink()
            for key in ("pss", "rss"):
                growth = peaks[large][key] / peaks[small][key] - 1
                rows.append(
                    (
                        f"memory growth {small}^2 -> {large}^2 ({key.upper()})",
                        f"{100 * growth:+.1f} %",
                        f"area x{(large / small) ** 2:.0f}; target within 20 %, under 2 GB",
                    )
                )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
