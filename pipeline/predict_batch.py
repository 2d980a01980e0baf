"""Predict many rasters in one go: one cluster, so workers start and load the model once.

``pipeline predict tiles/*.tif -o roads/`` lands here. Each raster still goes through
``predict_raster`` (the same pixels as predicting it alone); what this module adds is where the
outputs go, which inputs to leave out, and that one bad raster does not stop the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import parallel, sources
from pipeline.atomic import OutputError, exclusive_output
from pipeline.predict import default_output_path, predict_raster
from pipeline.raster import RasterError
from pipeline.sources import Source


@dataclass(frozen=True)
class Target:
    """One input raster and the files predict writes for it."""

    image: str | Path  # a local file, or a GDAL name such as /vsicurl/https://...
    output: Path
    vectors: Path | None = None
    stac_item: Path | None = None  # where to write the prediction's STAC Item
    source_item: dict | None = None  # the STAC Item the image came from
    network: Path | None = None  # where to write the road network


def batch_targets(
    images: Sequence[str | Path | Source],
    output: str | Path | None = None,
    vectors: str | Path | None = None,
    stac_item: str | Path | None = None,
    network: str | Path | None = None,
) -> list[Target]:
    """Where each image's outputs go.

    ``output`` / ``vectors`` / ``stac_item`` / ``network`` name a file for one image, or an existing
    folder, which gets ``<image>_roads.tif`` / ``.gpkg`` / ``.json`` / ``_network.gpkg``; with several images they must be
    folders. Without ``output`` each raster goes beside its input (a remote one's, or a STAC
    Item's named by the item id, in the current folder). Raises ValueError, before any work,
    when two inputs would write the same file.
    """
    given = [i if isinstance(i, Source) else sources.resolve_input(i) for i in images]

    def place(src: Source, value: str | Path | None, flag: str, suffix: str) -> Path | None:
        if value is None:
            if suffix != ".tif":
                return None
            if src.item is not None:  # a STAC Item's image: named by the item
                return Path(f"{src.stem}_roads.tif")
            return default_output_path(src.path)
        if Path(value).is_dir():
            return Path(value) / f"{src.stem}_roads{suffix}"
        if len(images) > 1:
            raise ValueError(
                f"{value}: with {len(images)} images, {flag} must be an existing folder "
                f"(each image gets <name>_roads{suffix} in it)"
            )
        return Path(value)

    targets = [
        Target(
            src.path,
            place(src, output, "-o/--output", ".tif"),
            place(src, vectors, "--vectors", ".gpkg"),
            place(src, stac_item, "--stac-item", ".json"),
            src.item,
            place(src, network, "--network", "_network.gpkg"),
        )
        for src in given
    ]
    writers: dict[Path, Target] = {}
    for t in targets:
        for path in (t.output, t.vectors, t.stac_item, t.network):
            if path is None:
                continue
            if not sources.is_remote(t.image) and path.resolve() == Path(t.image).resolve():
                raise ValueError(
                    f"{path}: is the input image itself; give another output name (-o)"
                )
            other = writers.setdefault(path.resolve(), t)
            if other is not t:
                raise ValueError(
                    f"{other.image} and {t.image} would both write {path}; predict them separately"
                )
    return targets


@contextlib.contextmanager
def exclusive_outputs(target: Target) -> Iterator[None]:
    """Hold the lock of each output of ``target`` (``atomic.exclusive_output``): a second
    predict of the same output fails at once instead of racing this one, and temporaries left
    by a killed earlier run of it are removed."""
    with contextlib.ExitStack() as stack:
        for path in (target.output, target.vectors, target.stac_item, target.network):
            if path is not None:
                stack.enter_context(exclusive_output(path))
        yield


def predict_batch(
    targets: Sequence[Target],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    skip_existing: bool = False,
    overwrite: bool = False,
    report: Callable[[str], None] = print,
    report_error: Callable[[str], None] = print,
    **options: Any,
) -> list[Path]:
    """``predict_raster`` for every target, on one cluster; returns the outputs written.

    Several targets share one local cluster (unless ``scheduler`` names one). Left out, each
    with a line to ``report``: an input that is the output of another target (a second run over
    ``tiles/*.tif`` matches the first run's ``*_roads.tif``), and with ``skip_existing`` a target
    whose outputs all exist (they appear whole or not at all: an interrupted run resumes). A
    raster that cannot be predicted (``RasterError``, an output that exists) is reported to
    ``report_error`` and the others go on; then ValueError names the failures at the end. With
    a single target its error is raised as is. ``options`` go to ``predict_raster``.
    """
    if skip_existing and overwrite:
        raise ValueError("--skip-existing and --overwrite contradict each other; give one")
    outputs = {str(t.output.resolve()) for t in targets}
    todo = []
    for t in targets:
        if sources.absolute(t.image) in outputs:
            report(f"skipped {t.image}: it is the output of another image given")
        elif skip_existing and all(
            p is None or p.exists() for p in (t.output, t.vectors, t.stac_item, t.network)
        ):
            report(f"skipped {t.image}: {t.output} exists")
        else:
            todo.append(t)
    written: list[Path] = []
    failed: list[Path] = []
    # one cluster for all (~4 s of worker start and model load on 2 cores saved per raster)
    with parallel.shared_cluster(scheduler, len(todo), workers, device) as address:
        for t in todo:
            try:
                with exclusive_outputs(t):
                    result = predict_raster(
                        t.image,
                        t.output,
                        vectors=t.vectors,
                        stac_item=t.stac_item,
                        source_item=t.source_item,
                        network=t.network,
                        scheduler=address,
                        workers=workers,
                        device=device,
                        overwrite=overwrite,
                        **options,
                    )
            except (RasterError, FileExistsError, OutputError) as e:
                if len(todo) == 1:
                    raise
                report_error(f"error: {e}")  # this raster only: go on with the others
                failed.append(t.image)
                continue
            written.append(result.output)
            also = [str(p) for p in (result.vectors, t.network) if p is not None]
            report(f"wrote {result.output}" + "".join(f" and {p}" for p in also))
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(todo)} images failed (errors above): {', '.join(map(str, failed))}"
        )
    return written
