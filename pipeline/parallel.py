"""The one module that imports dask: clusters, task mapping, per-worker caches.

NOTE for whoever extends this file: keep `map_tasks` (used by the tile stage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def map_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    *,
    workers: int = 2,
    desc: str = "",
    progress: bool = True,
) -> list[Any]:
    """Run ``fn(*task)`` for every task on a local dask.distributed cluster; results in task order.

    One process per worker with one thread each (GDAL and numpy release the GIL, but separate
    processes keep rasterio handles and memory per worker). With one task or one worker the
    tasks run in this process: a cluster would only add start-up time.
    """
    from tqdm import tqdm

    if workers <= 1 or len(tasks) <= 1:
        return [fn(*t) for t in tqdm(tasks, desc=desc, disable=not progress)]

    from distributed import Client, LocalCluster, as_completed

    n = min(workers, len(tasks))
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            futures = [client.submit(fn, *t, pure=False) for t in tasks]
            order = {f.key: i for i, f in enumerate(futures)}
            results: list[Any] = [None] * len(tasks)
            with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
                for fut in as_completed(futures):
                    results[order[fut.key]] = fut.result()
                    bar.update(1)
    return results
