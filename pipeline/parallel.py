"""The one module that imports dask: clusters, task mapping, per-worker caches.

``map_ordered`` runs tasks in order with a bounded number in flight (tile stage). Predict
uses ``cluster_client`` (a sized LocalCluster, or an existing scheduler), ``stream_results``
(bounded in-flight submission, results as they finish) and ``worker_cached`` (the model once
per worker).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def map_ordered(
    fn: Callable[..., Any],
    tasks: Iterable[tuple],
    *,
    workers: int = 2,
    client: Any = None,
    max_in_flight: int | None = None,
    total: int | None = None,
    weight: Callable[[tuple], int] | None = None,
    desc: str = "",
    unit: str = "task",
    progress: bool = True,
) -> Iterator[Any]:
    """Yield ``fn(*task)`` for every task, in task order.

    On ``client`` when given; else on a local cluster of ``workers`` processes with one
    thread each, started here; with one worker, in this process one task after another.
    ``tasks`` is pulled lazily, and at most ``max_in_flight`` tasks (default: twice the
    cluster's threads) are submitted and not yet yielded at any time: a task is submitted only
    once it is fewer than ``max_in_flight`` places ahead of the next result to yield. Unlike
    ``stream_results`` (results as they finish), a slow task then stalls submission instead of
    letting finished results pile up behind it, so the reorder buffer is bounded too and
    memory does not grow with the number of tasks. The first failing task in task order
    cancels the rest and its exception is raised here. The progress bar counts
    ``weight(task)`` per task (e.g. chips) out of ``total``.
    """
    from tqdm import tqdm

    quiet_interrupted_sync()
    with contextlib.ExitStack() as stack:
        if client is None and workers > 1:
            import dask
            from distributed import Client, LocalCluster

            stack.enter_context(dask.config.set(QUIET_CLUSTER_CONFIG))
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    env=_WORKER_ENV_DEFAULTS,
                )
            )
            client = stack.enter_context(Client(cluster))
            client.run(_quiet_owned_worker)
            # runs first when the stack closes: the workers' heaps (geopandas, rasterio, the
            # scenes' roads) frozen, their exit is quick and the nanny need not kill them
            stack.callback(_freeze_heaps, client)
        if client is None:
            pairs: Iterator[tuple[tuple, Any]] = ((task, fn(*task)) for task in tasks)
        else:
            pairs = _ordered_on(client, fn, tasks, max_in_flight or 2 * total_threads(client))
        bar = stack.enter_context(
            tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
        )
        with contextlib.closing(pairs):
            for task, result in pairs:
                bar.update(weight(task) if weight else 1)
                yield result


def call_portably(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a Dask worker; an exception leaves it without its chain (``__cause__``,
    ``__context__``). GDAL's errors (rasterio's ``CPLE_*``, chained under pyogrio's and ours)
    do not survive distributed's pickling, and one in the chain made the client raise a bare
    ``Exception(repr)`` in place of the pipeline's own error, which the CLI turns into one
    sentence. The pipeline's messages already carry the cause's text."""
    try:
        return fn(*args)
    except Exception as e:
        e.__cause__ = None
        e.__context__ = None
        e.__suppress_context__ = True
        raise


def _task_key(fn: Callable[..., Any]) -> str:
    """A unique task key named after ``fn`` (what the dashboard and worker logs show)."""
    return f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"


def _ordered_on(
    client: Any, fn: Callable[..., Any], tasks: Iterable[tuple], max_in_flight: int
) -> Iterator[tuple[tuple, Any]]:
    """(task, result) in task order, keeping a window of at most ``max_in_flight`` futures."""
    from collections import deque

    it = iter(tasks)
    window: deque[tuple[Any, tuple]] = deque()

    def fill() -> None:
        while len(window) < max(1, max_in_flight):
            task = next(it, None)
            if task is None:
                return
            window.append((client.submit(call_portably, fn, *task, key=_task_key(fn)), task))

    fill()
    try:
        while window:
            fut, task = window[0]
            result = fut.result()  # raises the task's exception
            window.popleft()
            fut.release()
            fill()
            yield task, result
    finally:
        if window:
            client.cancel([f for f, _ in window])


def map_ordered_on_threads(
    fn: Callable[..., Any], tasks: Iterable[tuple], threads: int
) -> Iterator[Any]:
    """``fn(*task)`` for each task, in task order, on ``threads`` threads of this process, at
    most ``threads`` tasks ahead of the one yielded (``_ordered_on``'s window, for work that
    releases the GIL: scikit-image's thinning, skan's numba steps), so results do not pile up
    behind a slow task."""
    from collections import deque

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="roadseg-ordered") as pool:
        pending: deque[Future] = deque()
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ------------------------------------------------------------------------ clusters (predict)
_WORKER_ENV_DEFAULTS = {"GDAL_CACHEMAX": "64"}  # MB: GDAL's default is 5 % of RAM per process
# glibc malloc, read at process start (so set before the worker is spawned): torch's large
# activation buffers would otherwise be mmapped and unmapped on every batch (and Dask's
# default MALLOC_TRIM_THRESHOLD_=65536 returns the rest eagerly), page-faulting them back in
# each time. One arena, because tasks run in a worker thread, whose own arena would still
# map and trim its heaps. Measured on a 2-core CPU: a resnet18 U-Net batch of 4 x 512^2 in a
# thread runs ~1/3 faster (sys time 2 s -> 0.02 s per 3 batches); peak memory is unchanged,
# the buffers are simply reused.
ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**34),
}
# Dask's housekeeping on the clusters roadseg starts itself. By default each worker samples
# its task threads' stacks 100 times a second (the dashboard's Profile page), and every
# process wakes its event loop 50 times a second to time it, 10 times a second to read memory
# and twice a second for the dashboard's system plots. Each wake-up pre-empts one of torch's
# threads, which run in lock step, so on a small machine the model loses several per cent to
# them. Measured on 2 cores: an idle one-worker cluster costs 6 % of a core with the
# defaults and 1 % with these; predict on 4096^2 takes 4.5 % less time with these (the ratio
# within each round of `benchmarks/predict.py --compare-dask-defaults`; BENCHMARKS.md, issue 6).
# The dashboard keeps its task stream and progress; its Profile page stays empty. Clusters
# given by --scheduler keep their own configuration.
QUIET_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}
CPU_THREADS_PER_WORKER = 4  # torch threads per CPU worker process when workers is not given
GPU_TASKS_PER_WORKER = 2  # tasks at once per GPU worker: reading overlaps the GPU's work


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# Device files of a GPU driver (NVIDIA, WSL's GPU bridge, AMD ROCm). Without any of them there
# is no GPU to count and torch is not imported: the predict client stays light on CPU boxes.
_GPU_DEVICE_FILES = (
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/proc/driver/nvidia",
    "/dev/dxg",
    "/dev/kfd",
)


class DeviceError(RuntimeError):
    """The device asked for is not there (e.g. ``--device cuda`` on a machine without CUDA)."""


class ClusterError(RuntimeError):
    """The Dask cluster cannot do the work: no scheduler at the address, no workers, or the
    scheduler or every worker lost mid-run. The message says which and what to do."""


SCHEDULER_CONNECT_TIMEOUT_S = 10  # distributed's default is 30 s of silent retries
WORKERS_JOIN_TIMEOUT_S = 60
# How long a run waits for a worker to come back once every worker is gone (a nanny restarts
# a killed worker within seconds; an external cluster may be rescaling). ROADSEG_NO_WORKERS_
# TIMEOUT_S overrides it.
NO_WORKERS_TIMEOUT_S = 120.0
NO_WORKERS_TIMEOUT_ENV = "ROADSEG_NO_WORKERS_TIMEOUT_S"
WATCH_INTERVAL_S = 1.0  # how often a waiting run checks that workers and scheduler are there


def _cuda_count() -> int:
    if sys.platform.startswith("linux") and not any(os.path.exists(f) for f in _GPU_DEVICE_FILES):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class WorkerPlan:
    """How a local cluster for predict is laid out."""

    workers: int  # worker processes
    torch_threads: int  # intra-op threads of each worker's torch
    tasks_per_worker: int  # Dask threads: tasks a worker runs at once
    gpus: list[int | None]  # the GPU each worker owns (None: CPU)


def plan_workers(workers: int | None, device: str) -> WorkerPlan:
    """Size a local cluster for ``device``.

    CUDA (asked for, or ``auto`` with a GPU): one worker per GPU unless ``workers`` says
    otherwise (then GPUs are shared round-robin), each running ``GPU_TASKS_PER_WORKER`` tasks
    at once so that one task reads and normalises its windows on the CPU while another keeps
    the GPU busy. CPU: ``cores // CPU_THREADS_PER_WORKER`` workers by default (at least one),
    each running one task at a time with ``cores // workers`` torch threads, so workers x
    threads = cores: never oversubscribed. Why not one worker per core: every worker process
    holds torch (~0.4 GB), the model and a batch of activations, so memory grows with
    workers, while torch's convolutions scale well over a few threads; on 2 cores one worker
    with 2 threads is as fast as two with one.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    gpus = _cuda_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus == 0:
        raise DeviceError("--device cuda asked for, but torch sees no CUDA device")
    if gpus:
        n = workers or gpus
        return WorkerPlan(n, 1, GPU_TASKS_PER_WORKER, [k % gpus for k in range(n)])
    cores = available_cores()
    n = workers or max(1, cores // CPU_THREADS_PER_WORKER)
    return WorkerPlan(n, max(1, cores // n), 1, [None] * n)


def _configure_worker(threads: int, gpu: int | None) -> None:
    """Run once in each worker process: torch threads, and the GPU this worker owns."""
    import torch

    torch.set_num_threads(threads)
    if gpu is not None:
        torch.cuda.set_device(gpu)
    _CACHE["__gpu__"] = gpu
    _quiet_owned_worker()


_HEARTBEAT_FAILURE = "Failed to communicate with scheduler during heartbeat"


class _HeartbeatAtCloseFilter(logging.Filter):
    """Drops distributed's heartbeat-failure ERROR while this process's worker is closing.

    A worker that closes stops its heartbeat timer and then its connections to the scheduler;
    a heartbeat already waiting for the scheduler's answer then fails with a CommClosedError,
    which distributed (2026.8) logs as an ERROR with a traceback although nothing went wrong
    (dask/distributed#7105). While the worker runs, the message is kept: then the scheduler
    really is unreachable.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(_HEARTBEAT_FAILURE)):
            return True
        from distributed import Worker
        from distributed.core import Status

        closing = {Status.closing, Status.closing_gracefully, Status.closed}
        workers = list(Worker._instances)
        return not workers or any(w.status not in closing for w in workers)


class _InterruptedSyncFilter(logging.Filter):
    """Drops the NameError distributed logs when Ctrl-C or SIGTERM lands in a blocking call.

    ``distributed.utils.sync`` (2026.8) answers a KeyboardInterrupt by scheduling a
    ``cancel()`` on its event loop that reads a future assigned only once the call has started
    there; when the interrupt comes first, the loop's callback fails with ``NameError: cannot
    access free variable 'future'`` and tornado logs it with a traceback. Nothing was left
    running (the call never started), and our own interrupt message follows; the traceback
    would only tell the user that something crashed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, NameError) or exc.name != "future":
            return True
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code if tb is not None else None
        return not (
            code is not None
            and code.co_name == "cancel"
            and code.co_filename.replace(os.sep, "/").endswith("distributed/utils.py")
        )


def quiet_interrupted_sync() -> None:
    """Install ``_InterruptedSyncFilter`` on tornado's callback logger in this process (once)."""
    logger = logging.getLogger("tornado.application")
    if not any(isinstance(f, _InterruptedSyncFilter) for f in logger.filters):
        logger.addFilter(_InterruptedSyncFilter())


class _ReportedTaskErrorFilter(logging.Filter):
    """Drops a worker's "Compute Failed" ERROR (the task's traceback, once per failed task) and
    the "ended with CancelledError" warning of the tasks cancelled after it.

    In a cluster roadseg starts for one command, the client raises every task error itself
    (``map_ordered``, ``stream_results``): the CLI prints it as one line, or Python its
    traceback for an unexpected one. The worker's copy only repeated it above that line, once
    per task that failed, and the cancellations that follow are deliberate.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not (
            message.startswith("Compute Failed")
            or (message.startswith("Async instruction") and "CancelledError" in message)
        )


def _quiet_owned_worker() -> None:
    """Install ``_HeartbeatAtCloseFilter`` and ``_ReportedTaskErrorFilter`` in this worker
    process (once): for the clusters roadseg starts and stops itself, whose shutdown it knows
    to be deliberate and whose task errors its client reports."""
    for name, kind in (
        ("distributed.worker", _HeartbeatAtCloseFilter),
        ("distributed.worker", _ReportedTaskErrorFilter),
        ("distributed.worker.state_machine", _ReportedTaskErrorFilter),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


@contextlib.contextmanager
def local_cluster(workers: int | None, device: str = "auto") -> Iterator[Any]:
    """A LocalCluster of worker processes sized by ``plan_workers``; yields a connected Client.

    On CPU one task at a time per worker process: torch's threads and GDAL then never share a
    process between tasks running at once. Tasks running at once in one worker (GPU) share
    its cached model, which inference only reads.
    """
    import dask
    from distributed import Client, LocalCluster

    quiet_interrupted_sync()
    plan = plan_workers(workers, device)
    threads = plan.torch_threads
    pre_spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    pre_spawn.update(ALLOCATOR_ENV, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with (
        dask.config.set({**QUIET_CLUSTER_CONFIG, "distributed.nanny.pre-spawn-environ": pre_spawn}),
        LocalCluster(
            n_workers=plan.workers,
            threads_per_worker=plan.tasks_per_worker,
            processes=True,
            dashboard_address=":0",  # a free port: several clusters may run side by side
            env=_WORKER_ENV_DEFAULTS,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(plan.workers)
        for addr, gpu in zip(sorted(client.scheduler_info()["workers"]), plan.gpus, strict=True):
            client.run(_configure_worker, threads, gpu, workers=[addr])
        yield client


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A Client on a running scheduler (``tcp://host:port``); its workers must see the files."""
    from distributed import Client

    quiet_interrupted_sync()
    try:
        client = Client(scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise ClusterError(
            f"{scheduler}: no Dask scheduler answers there ({e}); start one (dask scheduler) "
            "or leave out --scheduler to run on a local cluster"
        ) from None
    with client:
        if not client.scheduler_info()["workers"]:
            try:
                client.wait_for_workers(1, timeout=WORKERS_JOIN_TIMEOUT_S)
            except TimeoutError:
                raise ClusterError(
                    f"{scheduler}: no worker joined this scheduler in {WORKERS_JOIN_TIMEOUT_S} s; "
                    f"start some (dask worker {scheduler})"
                ) from None
        yield client


@contextlib.contextmanager
def cluster_client(scheduler: str | None, workers: int | None, device: str) -> Iterator[Any]:
    """``connect(scheduler)`` when an address is given, otherwise ``local_cluster``."""
    cm = connect(scheduler) if scheduler else local_cluster(workers, device)
    with cm as client:
        yield client


@contextlib.contextmanager
def shared_cluster(
    scheduler: str | None, runs: int, workers: int | None, device: str = "auto"
) -> Iterator[str | None]:
    """The scheduler address for ``runs`` predicts in a row: ``scheduler`` when given; else, for
    more than one run, a ``local_cluster`` started here for all of them (its workers start and
    load the model once, not once per run); else None, and the single run starts its own."""
    if scheduler is not None or runs < 2:
        yield scheduler
        return
    with local_cluster(workers, device) as client:
        yield client.scheduler.address


def stop_cluster_in_background(client: Any) -> Future:
    """Close ``client`` now and the LocalCluster it owns (if any) on a thread, so the caller's
    remaining work (the COG's overviews) overlaps the ~1 s a cluster takes to stop. Wait for
    the returned future (its ``result()`` re-raises an error of the stop) before leaving the
    cluster's context. The client closes here, on the caller's thread: its context variables
    belong to it."""
    client.close()
    cluster = getattr(client, "cluster", None)
    pool = ThreadPoolExecutor(1, thread_name_prefix="roadseg-cluster-stop")
    future = pool.submit(cluster.close if cluster is not None else (lambda: None))
    pool.shutdown(wait=False)
    return future


def total_threads(client: Any) -> int:
    """Task slots on the cluster (sum of worker threads)."""
    workers = client.scheduler_info().get("workers", {})  # none once the scheduler is lost
    return sum(w["nthreads"] for w in workers.values()) or 1


def max_threads_per_worker(client: Any) -> int:
    """The most tasks any one worker runs at once."""
    return max((w["nthreads"] for w in client.scheduler_info()["workers"].values()), default=1)


def dashboard_link(client: Any) -> str | None:
    return (
        client.dashboard_link
        if "dashboard" in client.scheduler_info().get("services", {})
        else None
    )


def stream_results(
    client: Any,
    fn: Callable[..., Any],
    tasks: Iterable[tuple],
    *,
    max_in_flight: int,
    total: int | None = None,
    progress: bool = True,
    desc: str = "",
    unit: str = "task",
    weight: Callable[[tuple], int] | None = None,
) -> Iterator[Any]:
    """Yield ``fn(*task)`` results as tasks finish, keeping at most ``max_in_flight`` submitted.

    Tasks are submitted in the given order and topped up as results come back, so the
    consumer sees results roughly in submission order and holds only a bounded window of
    them (this is what keeps predict's memory flat). The first failing task cancels the rest
    and its exception is raised here.
    """
    from distributed import as_completed
    from tqdm import tqdm

    it = iter(tasks)
    pending: dict[str, tuple] = {}
    ac = as_completed()

    def submit_one() -> bool:
        task = next(it, None)
        if task is None:
            return False
        fut = client.submit(call_portably, fn, *task, key=_task_key(fn))
        pending[fut.key] = task
        ac.add(fut)
        return True

    for _ in range(max(1, max_in_flight)):
        if not submit_one():
            break
    with tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        try:
            while not ac.is_empty():
                if not ac.has_ready():
                    wait_while_cluster_lives(client, list(ac.futures))
                fut = next(ac)
                task = pending.pop(fut.key)
                result = _result(fut)  # raises the task's exception
                fut.release()
                submit_one()
                bar.update(weight(task) if weight else 1)
                yield result
        finally:
            if pending:
                client.cancel(list(ac.futures))


_SCHEDULER_LOST = (
    "the Dask scheduler dropped this run's tasks (it stopped, or the connection to it was "
    "lost); start the scheduler again and rerun"
)


def _result(fut: Any) -> Any:
    """``fut.result()``; a future cancelled because the scheduler went away is a ClusterError."""
    from concurrent.futures import CancelledError

    try:
        return fut.result()
    except CancelledError:
        raise ClusterError(_SCHEDULER_LOST) from None


def _worker_count(client: Any) -> int:
    """Workers the scheduler has now; ClusterError when the scheduler no longer answers."""
    try:
        info = client.scheduler_info()
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"{_SCHEDULER_LOST} ({e})") from None
    if "workers" not in info or client.status in ("closing", "closed"):  # gave up reconnecting
        raise ClusterError(_SCHEDULER_LOST)
    return len(info["workers"])


def wait_while_cluster_lives(client: Any, futures: list[Any]) -> None:
    """Block until one of ``futures`` finishes, checking every ``WATCH_INTERVAL_S`` that the
    scheduler answers and has workers. With every worker gone, say so once and wait for one to
    return for ``NO_WORKERS_TIMEOUT_S`` (``$ROADSEG_NO_WORKERS_TIMEOUT_S``); then ClusterError:
    a run never hangs in silence."""
    import time
    from concurrent.futures import CancelledError

    from distributed import wait

    limit = float(os.environ.get(NO_WORKERS_TIMEOUT_ENV, NO_WORKERS_TIMEOUT_S))
    gone_since: float | None = None
    while True:
        try:
            wait(futures, timeout=WATCH_INTERVAL_S, return_when="FIRST_COMPLETED")
            return
        except TimeoutError:
            pass
        except CancelledError:  # distributed cancels every future when the scheduler is lost
            raise ClusterError(_SCHEDULER_LOST) from None
        if _worker_count(client):
            gone_since = None
            continue
        now = time.monotonic()
        if gone_since is None:
            gone_since = now
            log.warning(
                "every Dask worker of %s is gone; waiting up to %.0f s for one to return",
                client.scheduler.address,
                limit,
            )
        elif now - gone_since > limit:
            raise ClusterError(
                f"every Dask worker of {client.scheduler.address} has been gone for {limit:.0f} "
                "s; gave up (start workers, or rerun without --scheduler)"
            )


# ----------------------------------------------------------------------- per-worker caches
_CACHE: OrderedDict[Hashable, Any] = OrderedDict()  # least recently used first
_CACHE_LOCK = threading.Lock()
CACHE_LOADS: dict[Hashable, int] = {}  # how often each key was built in this process


def worker_cached(key: Hashable, factory: Callable[[], Any], *, keep: int | None = None) -> Any:
    """The value for ``key`` in this worker process, built by ``factory()`` on first use.

    Used for the model (keyed by its folder, device and version): each worker loads it once
    and every task it runs afterwards reuses it. With ``keep``, at most that many values of
    keys of the same kind (a tuple key's first item) stay, the least recently used dropped:
    a long-lived cluster (``--scheduler``) running one model after another holds its latest
    few, not every model it ever ran.
    """
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        _CACHE[key] = value = factory()
        CACHE_LOADS[key] = CACHE_LOADS.get(key, 0) + 1
        if keep is not None:
            _drop_least_recent(_kind(key), keep)
        _freeze_worker_heap()
        return value


def _kind(key: Hashable) -> Hashable:
    return key[0] if isinstance(key, tuple) and key else key


def _drop_least_recent(kind: Hashable, keep: int) -> None:
    """Drop all but the ``keep`` most recently used values of ``kind`` (under the lock). A
    dropped model is freed by reference counting, frozen heap or not (``gc.freeze`` only hides
    objects from the cyclic collector); a full collection here would hold the lock, and the
    worker's event loop, for seconds."""
    same = [k for k in _CACHE if _kind(k) == kind]
    for key in same[: max(0, len(same) - keep)]:
        del _CACHE[key]


def cached_keys(kind: Hashable) -> list[str]:
    """The keys of ``kind`` this process holds, least recently used first (as text);
    ``client.run(cached_keys, "model")`` asks workers."""
    with _CACHE_LOCK:
        return [repr(k) for k in _CACHE if _kind(k) == kind]


def _freeze_heaps(client: Any) -> None:
    """``_freeze_worker_heap`` on every worker, best effort (a worker may be gone)."""
    with contextlib.suppress(Exception):
        client.run(_freeze_worker_heap)


def _freeze_worker_heap() -> None:
    """In a Dask worker process of its own (a nanny's), move every object alive now out of
    the cyclic collector's reach (``gc.freeze``); elsewhere (a client, a test, threads of an
    in-process cluster) do nothing.

    After its first model load a worker holds ~430,000 objects (torch, smp, timm, rasterio,
    the model) that live until it exits. Python's collections at interpreter exit walk them
    all: measured 2.3-2.5 s on 2 loaded cores (0.3-0.5 s frozen), long enough for the nanny to
    give up after 4 s and kill the worker with a WARNING. Objects made later, by the tasks,
    are collected as before.
    """
    from distributed import Worker

    # not get_worker(): it only answers inside tasks, and the first load may come from client.run
    if multiprocessing.parent_process() is not None and len(Worker._instances) > 0:
        gc.freeze()


def worker_gpu() -> int | None:
    """The GPU index ``local_cluster`` gave this worker (None: not set)."""
    return _CACHE.get("__gpu__")


def cache_loads() -> dict[str, int]:
    """``{repr(key): times built}`` in this process; ``client.run(cache_loads)`` asks workers."""
    return {repr(k): v for k, v in CACHE_LOADS.items()}
