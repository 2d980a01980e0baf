"""parallel.py on real clusters: sizing, bounded streaming, per-worker caches, and predict
through an external ``dask scheduler`` with two ``dask worker`` processes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from distributed import Client

from pipeline import parallel
from pipeline.config import PredictOptions
from pipeline.predict import predict_raster
from tests.helpers import make_model, smooth_image, write_raster

DASK = Path(sys.executable).with_name("dask")


@pytest.fixture(scope="module")
def client():
    with parallel.local_cluster(2, "cpu") as c:
        yield c


def test_plan_workers_never_oversubscribes_cores() -> None:
    cores = parallel.available_cores()
    plan = parallel.plan_workers(None, "cpu")
    n, threads = plan.workers, plan.torch_threads
    assert n == max(1, cores // parallel.CPU_THREADS_PER_WORKER) and n * threads <= cores
    assert threads == cores // n and plan.gpus == [None] * n and plan.tasks_per_worker == 1
    assert parallel.plan_workers(1, "cpu") == parallel.WorkerPlan(1, cores, 1, [None])
    assert parallel.plan_workers(cores, "cpu") == parallel.WorkerPlan(cores, 1, 1, [None] * cores)
    plan = parallel.plan_workers(3, "cpu")
    assert plan.workers == 3 and plan.workers * plan.torch_threads <= max(cores, 3)
    with pytest.raises(ValueError):
        parallel.plan_workers(0, "cpu")


@pytest.mark.skipif(parallel._cuda_count() > 0, reason="this machine has a GPU")
def test_cuda_without_gpu_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA"):
        parallel.plan_workers(None, "cuda")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_local_cluster_is_processes_with_one_thread_each(client) -> None:
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())
    pids = client.run(os.getpid)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    threads = client.run(_torch_threads)
    cores = parallel.available_cores()
    assert set(threads.values()) == {max(1, cores // 2)}
    assert set(client.run(os.getenv, "GDAL_CACHEMAX").values()) == {"64"}
    assert set(client.run(os.getenv, "MALLOC_MMAP_MAX_").values()) == {"0"}  # set before spawn
    assert parallel.total_threads(client) == 2


def _housekeeping(dask_worker) -> dict:
    return {
        "profiling": "profile" in dask_worker.periodic_callbacks,
        "tick_s": dask_worker._tick_interval,
        "memory_monitor_ms": dask_worker.periodic_callbacks["memory_monitor"].callback_time,
    }


def _task_housekeeping(_: int) -> dict:
    from distributed import get_worker

    return _housekeeping(get_worker())


def test_our_clusters_run_without_dask_profiler_and_frequent_ticks(client) -> None:
    # each wake-up of a worker's event loop pre-empts one of torch's lock-stepped threads
    quiet = {"profiling": False, "tick_s": 1.0, "memory_monitor_ms": 1000}
    assert list(client.run(_housekeeping).values()) == [quiet, quiet]  # predict's clusters
    # the tile stage's
    assert list(
        parallel.map_ordered(_task_housekeeping, [(0,), (1,)], workers=2, progress=False)
    ) == [quiet, quiet]


def test_stream_results_bounds_tasks_in_flight_and_returns_all(client) -> None:
    pulled = 0

    def tasks():
        nonlocal pulled
        for k in range(25):
            pulled += 1
            yield (k, 2)

    got = []
    for value in parallel.stream_results(client, pow, tasks(), max_in_flight=3, progress=False):
        got.append(value)
        assert pulled - len(got) <= 3  # never more than max_in_flight outstanding
    assert sorted(got) == [k * k for k in range(25)]


def test_stream_results_raises_the_task_error_and_cancels_the_rest(client) -> None:
    tasks = [("1",), ("2",), ("x",), ("4",), ("5",), ("6",)]
    got = []
    with pytest.raises(ValueError, match="invalid literal"):
        for v in parallel.stream_results(client, int, tasks, max_in_flight=2, progress=False):
            got.append(v)
    assert set(got) <= {1, 2, 4} and 5 not in got and 6 not in got


def test_worker_cache_builds_once_per_worker(client) -> None:
    futures = [
        client.submit(parallel.worker_cached, ("pid",), os.getpid, pure=False) for _ in range(12)
    ]
    values = client.gather(futures)
    pids = set(client.run(os.getpid).values())
    assert set(values) <= pids
    loads = client.run(parallel.cache_loads)
    assert all(v.get(repr(("pid",)), 0) <= 1 for v in loads.values())
    assert sum(v.get(repr(("pid",)), 0) for v in loads.values()) == len(set(values))


def test_worker_cache_keeps_the_most_recently_used_values_of_a_kind() -> None:
    """``keep`` bounds the values of one kind (the key's first item), least recently used out;
    keys of other kinds stay."""
    built = []

    def get(kind: str, name: str) -> str:
        return parallel.worker_cached((kind, name), lambda: built.append(name) or name, keep=2)

    parallel.worker_cached(("other-kind", 0), dict)
    for name in ("a", "b", "a", "c"):  # "a" used again before "c" arrives: "b" goes
        get("lru-test", name)
    assert parallel.cached_keys("lru-test") == [repr(("lru-test", n)) for n in ("a", "c")]
    get("lru-test", "b")  # built again
    assert built == ["a", "b", "c", "b"]
    assert parallel.cached_keys("other-kind") == [repr(("other-kind", 0))]


def _frozen_after_a_cached_load() -> int:
    parallel.worker_cached(("freeze-check",), lambda: [{} for _ in range(1000)])
    return gc.get_freeze_count()


def test_worker_freezes_its_heap_after_a_load_so_it_exits_in_time(client) -> None:
    """What a worker holds after a load lives until it exits; frozen, Python's collections at
    exit skip it (2.3 s -> 0.5 s measured), so the nanny does not kill the worker after 4 s."""
    frozen = client.run(_frozen_after_a_cached_load)  # client.run: as predict's first load comes
    assert len(frozen) == 2 and all(n > 10_000 for n in frozen.values()), frozen
    before = gc.get_freeze_count()
    parallel.worker_cached(("freeze-check-client",), dict)  # not a worker: the client's heap stays
    assert gc.get_freeze_count() == before


def test_a_heartbeat_in_flight_at_shutdown_logs_no_error(capfd) -> None:
    """A worker's heartbeat still waiting for the scheduler when the cluster closes fails with
    a CommClosedError that distributed logs as an ERROR with a traceback, although nothing went
    wrong (seen once at the end of a tile stage). The scheduler here answers heartbeats slowly
    so that every worker has one in flight when the cluster closes: without the filter in
    ``local_cluster`` this prints the ERROR once per worker."""
    with parallel.local_cluster(2) as c:
        scheduler = c.cluster.scheduler
        answer = scheduler.handlers["heartbeat_worker"]

        async def slow_answer(*args, **kwargs):
            await asyncio.sleep(2.0)
            return answer(*args, **kwargs)

        scheduler.handlers["heartbeat_worker"] = slow_answer
        time.sleep(1.5)  # heartbeats go every 0.5 s: each worker now waits on one
    err = capfd.readouterr().err
    assert "Failed to communicate with scheduler during heartbeat" not in err, err


def _heartbeat_failure_would_be_logged() -> bool:
    logger = logging.getLogger("distributed.worker")
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        0,
        "Failed to communicate with scheduler during heartbeat.",
        (),
        None,
    )
    return bool(logger.filter(record))


def test_a_running_worker_still_logs_heartbeat_failures(client) -> None:
    """The filter hides the failure only while the worker closes: a scheduler lost while
    the worker runs must still be reported."""
    kept = client.run(_heartbeat_failure_would_be_logged)
    assert len(kept) == 2 and all(kept.values()), kept


def _interrupt_sync_before_it_starts() -> None:
    """Ctrl-C lands in ``distributed.utils.sync`` while its event loop is still busy, so the
    interrupt comes before the call started there: the race a SIGTERM mid-predict can hit."""
    import signal
    import threading

    from distributed.utils import LoopRunner, sync

    # Ctrl-C raises KeyboardInterrupt even where pytest was started with SIGINT ignored
    # (a background job of a shell script)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = LoopRunner(asynchronous=False)
    runner.start()
    try:
        runner.loop.add_callback(time.sleep, 0.5)  # the loop is busy for 0.5 s
        main = threading.get_ident()
        threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            sync(runner.loop, asyncio.sleep, 5)
        time.sleep(0.8)  # the loop runs the call, then the cancel scheduled by the interrupt
    finally:
        runner.stop()
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_before_a_dask_call_starts_logs_no_traceback(caplog) -> None:
    """distributed 2026.8 logs a NameError traceback from its own cancel callback when an
    interrupt beats the call to the event loop (seen once in CI, SIGTERM mid-predict). The
    filter drops exactly that record; without it this logs the traceback."""
    parallel.quiet_interrupted_sync()
    with caplog.at_level(logging.ERROR, logger="tornado.application"):
        _interrupt_sync_before_it_starts()
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_other_errors_in_dask_callbacks_are_still_logged(caplog) -> None:
    """Only the known NameError from distributed's cancel is dropped."""
    from tornado.ioloop import IOLoop

    parallel.quiet_interrupted_sync()
    loop = IOLoop(make_current=False)

    def cancel() -> None:
        raise NameError("name 'future' is not defined", name="future")

    loop.add_callback(cancel)
    loop.add_callback(loop.stop)
    with caplog.at_level(logging.ERROR, logger="tornado.application"):
        loop.start()
    loop.close()
    assert any(r.exc_info and isinstance(r.exc_info[1], NameError) for r in caplog.records)


def _wait_for(path: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


def test_predict_through_an_external_scheduler(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    img = write_raster(tmp_path / "img.tif", smooth_image(160, 224).astype(np.uint8), nodata=0)
    sched_file = tmp_path / "scheduler.json"
    common = dict(cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [
        subprocess.Popen(
            [
                str(DASK),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            **common,
        )
    ]
    try:
        _wait_for(sched_file)
        for nthreads in (
            "1",
            "2",
        ):  # the second runs two tasks at once on one cached model (as on a GPU)
            procs.append(
                subprocess.Popen(
                    [
                        str(DASK),
                        "worker",
                        "--scheduler-file",
                        str(sched_file),
                        "--nthreads",
                        nthreads,
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    **common,
                )
            )
        address = json.loads(sched_file.read_text())["address"]
        with Client(address) as c:
            c.wait_for_workers(2, timeout=60)
        res = predict_raster(
            img,
            tmp_path / "out.tif",
            PredictOptions(
                model=model,
                window=64,
                overlap=16,
                windows_per_task=1,
                scheduler=address,
                progress=False,
            ),
        )
        assert res.windows_run == 3 * 5  # one window per task
        with rasterio.open(res.output) as ds:
            values = ds.read(1)
            assert ds.crs.to_epsg() == 32632 and ds.nodata == 255
        assert values.max() <= 254 and values.std() > 0
        with Client(address) as c:
            loads = c.run(parallel.cache_loads)
        model_loads = [
            n for per_worker in loads.values() for k, n in per_worker.items() if "model" in k
        ]
        assert model_loads and all(n == 1 for n in model_loads)  # once per worker, not per task
        local = predict_raster(
            img,
            tmp_path / "local.tif",
            PredictOptions(
                model=model, window=64, overlap=16, workers=1, device="cpu", progress=False
            ),
        )
        with rasterio.open(local.output) as ds:
            assert np.abs(ds.read(1).astype(int) - values.astype(int)).max() <= 1
    finally:
        for p in reversed(procs):  # workers first, then the scheduler
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _sleep_then_square(k: int, seconds: float) -> int:
    time.sleep(seconds)
    return k * k


@pytest.mark.parametrize("workers", [1, 2])
def test_map_ordered_yields_in_task_order_with_bounded_tasks_in_flight(workers) -> None:
    """Later tasks finish first (shorter sleeps), yet results come in task order, and the tasks
    pulled but not yet yielded never exceed max_in_flight: memory stays bounded."""
    pulled = 0

    def tasks():
        nonlocal pulled
        for k in range(12):
            pulled += 1
            yield (k, 0.02 * (k % 4 == 0) + 0.002 * (12 - k))

    got, outstanding = [], []
    for value in parallel.map_ordered(
        _sleep_then_square, tasks(), workers=workers, max_in_flight=3, progress=False
    ):
        got.append(value)
        outstanding.append(pulled - len(got))
    assert got == [k * k for k in range(12)]
    assert max(outstanding) <= 3
    assert workers == 1 or max(outstanding) == 3  # the window was used, not one task at a time


def test_map_ordered_raises_the_first_failure_in_task_order(client) -> None:
    tasks = [("1",), ("2",), ("x",), ("4",), ("5",), ("6",)]
    got = []
    with pytest.raises(ValueError, match="invalid literal"):
        for v in parallel.map_ordered(int, tasks, client=client, max_in_flight=2, progress=False):
            got.append(v)
    assert got == [1, 2]


def test_a_task_error_chained_to_gdal_reaches_the_client_as_itself(client, tmp_path) -> None:
    """A road file OGR cannot open raises VectorError chained to pyogrio's and GDAL's errors,
    which distributed cannot pickle: without call_portably the client got a bare
    Exception(repr) and the CLI a raw traceback."""
    from pipeline.vectors import VectorError, _read

    broken = tmp_path / "roads.geojson"
    broken.write_text("{ not json")
    with pytest.raises(VectorError, match=r"roads\.geojson: not a vector file OGR can read"):
        list(parallel.map_ordered(_read, [(broken,)], client=client, progress=False))
    with pytest.raises(VectorError, match=r"roads\.geojson"):
        list(parallel.stream_results(client, _read, [(broken,)], max_in_flight=1, progress=False))


def test_task_errors_in_our_clusters_are_reported_once_by_the_client(capfd) -> None:
    """A failed task's traceback is not logged again by the worker above the client's error."""
    tasks = [("1",), ("x",), ("y",), ("4",)]
    with pytest.raises(ValueError, match="invalid literal"):
        list(parallel.map_ordered(int, tasks, workers=2, max_in_flight=4, progress=False))
    err = capfd.readouterr().err
    assert "Compute Failed" not in err and "CancelledError" not in err
