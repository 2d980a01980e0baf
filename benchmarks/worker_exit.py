"""How long a local Dask cluster takes to stop after its worker loaded a model, with and
without the worker's heap frozen (``parallel._freeze_worker_heap``, ``gc.freeze``).

A predict worker holds torch, smp, timm, rasterio and the model: ~470,000 objects that the
collections at interpreter exit walk unless they are frozen. distributed's nanny kills a worker
still alive 4 s after it asked it to close (a WARNING in the user's log), so on a loaded
machine the walk decides whether predict ends cleanly. Runs alternate between the two settings
in this one process; each run starts a fresh 1-worker ``parallel.local_cluster``, loads the
model there through ``inference.worker_model`` (predict's first load, from ``client.run``)
and times ``cluster.close()``; the medians and their ratio are printed.

    .venv/bin/python benchmarks/worker_exit.py            # 5 runs per setting
    .venv/bin/python benchmarks/worker_exit.py --runs 3 --model models/release
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.predict import make_model  # noqa: E402
from pipeline import parallel  # noqa: E402


def load_in_worker(model_dir: str, freeze: bool) -> tuple[int, int]:
    """On the worker: predict's own first load (``inference.worker_model``); returns (frozen,
    tracked) objects."""
    if not freeze:
        parallel._freeze_worker_heap = lambda: None  # this worker process only
    from pipeline import inference

    inference.worker_model(model_dir, "cpu")
    return gc.get_freeze_count(), len(gc.get_objects())


def one_run(model_dir: str, freeze: bool) -> tuple[float, int, int]:
    with parallel.local_cluster(1, "cpu") as client:
        cluster = client.cluster
        frozen, tracked = next(iter(client.run(load_in_worker, model_dir, freeze).values()))
        client.close()
        t = time.perf_counter()
        cluster.close()
        return time.perf_counter() - t, frozen, tracked


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per setting")
    ap.add_argument(
        "--model", type=Path, default=None, help="a model folder (default: a random resnet18 U-Net)"
    )
    args = ap.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="roadseg-bench-") as tmp:
        model_dir = str(args.model or make_model(Path(tmp) / "model", "resnet18"))
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            for freeze in (False, True):
                s, frozen, tracked = one_run(model_dir, freeze)
                seconds[freeze].append(s)
                print(
                    f"freeze={freeze!s:5}  cluster.close {s:5.2f} s  (worker: {frozen:,} objects frozen, "
                    f"{tracked:,} tracked)",
                    flush=True,
                )
    plain, frozen_ = statistics.median(seconds[False]), statistics.median(seconds[True])
    print()
    print("| worker heap | cluster.close(), median s | runs |")
    print("|---|---|---|")
    print(
        f"| collected at exit (no freeze) | {plain:.2f} | {', '.join(f'{s:.2f}' for s in seconds[False])} |"
    )
    print(
        f"| frozen after the model load | {frozen_:.2f} | {', '.join(f'{s:.2f}' for s in seconds[True])} |"
    )
    print(f"\nratio frozen / plain: {frozen_ / plain:.2f}")


if __name__ == "__main__":
    main()
