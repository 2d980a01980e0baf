"""The worker side of predict: raster readers kept open between the tasks of one run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline import inference


def write(path: Path, value: int) -> Path:
    """A 4-band 64 x 64 uint8 GeoTIFF filled with ``value`` (rewritten in place on a second call)."""
    profile = dict(
        driver="GTiff",
        width=64,
        height=64,
        count=4,
        dtype="uint8",
        crs="EPSG:32632",
        transform=Affine(0.5, 0, 500000, 0, -0.5, 5400000),
        tiled=True,
        blockxsize=32,
        blockysize=32,
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.full((4, 64, 64), value, np.uint8))
    return path


@pytest.fixture(autouse=True)
def _no_readers_left():
    inference.release_readers()
    yield
    inference.release_readers()


def test_reader_is_kept_for_the_run_and_never_reused_by_the_next(tmp_path) -> None:
    path = str(write(tmp_path / "a.tif", 10))
    with inference.run_reader(path, "run-1") as first:
        assert first.read(0, 0, 8, 8)[0].max() == 10
    assert inference.open_reader_count() == 1  # open between the run's tasks
    with inference.run_reader(path, "run-1") as again:
        assert again is first
    # the file is rewritten under the same name, and no release came between the runs (a worker
    # of a long-lived cluster): the next run still reads the new pixels, not cached blocks
    write(tmp_path / "a.tif", 20)
    with inference.run_reader(path, "run-2") as second:
        assert second is not first and first.ds.closed
        assert second.read(0, 0, 8, 8)[0].max() == 20
    assert inference.release_readers() == 1
    assert inference.open_reader_count() == 0 and second.ds.closed


def test_release_does_not_close_a_reader_in_use(tmp_path) -> None:
    path = str(write(tmp_path / "a.tif", 7))
    with inference.run_reader(path, "run") as reader:
        assert inference.release_readers() == 0
        assert reader.read(0, 0, 64, 64)[0].min() == 7  # still readable
    assert reader.ds.closed and inference.open_reader_count() == 0  # closed when its task ended


def test_a_failed_task_closes_its_reader(tmp_path) -> None:
    path = str(write(tmp_path / "a.tif", 7))
    with pytest.raises(RuntimeError, match="boom"), inference.run_reader(path, "run") as reader:
        raise RuntimeError("boom")
    assert reader.ds.closed and inference.open_reader_count() == 0
    with inference.run_reader(path, "run") as fresh:  # the run's next task opens afresh
        assert fresh is not reader and fresh.read(0, 0, 4, 4)[0].max() == 7


def test_each_thread_reads_through_its_own_dataset(tmp_path) -> None:
    path = str(write(tmp_path / "a.tif", 3))
    seen: list[int] = []

    def task() -> None:
        with inference.run_reader(path, "run") as reader:
            seen.append(id(reader.ds))

    threads = [threading.Thread(target=task) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with inference.run_reader(path, "run") as mine:
        seen.append(id(mine.ds))
    assert len(set(seen)) == 3 and inference.open_reader_count() == 3
