"""Predict many rasters in one go: one cluster, so workers start and load the model once.

``pipeline predict tiles/*.tif -o roads/`` lands here. Each raster still goes through
``predict_raster`` (the same pixels as predicting it alone); what this module adds is where the
outputs go, which inputs to leave out, and that one bad raster does not stop the others.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pipeline import parallel, sources
from pipeline.atomic import OutputError, exclusive_output
from pipeline.config import PredictOptions
from pipeline.predict import Target, default_output_path, predict_raster
from pipeline.raster import RasterError
from pipeline.sources import Source


def batch_targets(
    images: Sequence[str | Path | Source],
    output: str | Path | None = None,
    vectors: str | Path | None = None,
    stac_item: str | Path | None = None,
    network: str | Path | None = None,
) -> list[Target]:
    """Where each image's outputs go.

    ``output`` / ``vectors`` / ``stac_item`` / ``network`` name a file for one image, or a
    folder (one that exists, or a name ending in "/", made once the outputs are checked),
    which gets ``<image>_roads.tif`` / ``.gpkg`` / ``.json`` / ``_network.gpkg``; with several
    images they must be folders. Without ``output`` each raster goes beside its input (a
    remote one's, or a STAC Item's named by the item id, in the current folder). Raises
    ValueError, before any work, when two inputs would write the same file.
    """
    given = [i if isinstance(i, Source) else sources.resolve_input(i) for i in images]
    new_folders: set[Path] = set()

    def place(src: Source, value: str | Path | None, flag: str, suffix: str) -> Path | None:
        if value is None:
            if suffix != ".tif":
                return None
            if src.item is not None:  # a STAC Item's image: named by the item
                return Path(f"{src.stem}_roads.tif")
            return default_output_path(src.path)
        exists = Path(value).is_dir()
        if exists or _names_folder(value):
            if not exists:
                new_folders.add(Path(value))
            return Path(value) / f"{src.stem}_roads{suffix}"
        if len(images) > 1:
            raise ValueError(
                f"{value}: with {len(images)} images, {flag} must be a folder: one that exists, "
                f"or a name ending in / (each image gets <name>_roads{suffix} in it)"
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
    _refuse_clashes(targets)
    for folder in sorted(new_folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{folder}: cannot make the output folder ({e.strerror})") from None
    return targets


def _refuse_clashes(targets: list[Target]) -> None:
    """ValueError when an output is its own input or two inputs would write one file."""
    writers: dict[Path, Target] = {}
    for t in targets:
        for path in t.outputs():
            if not sources.is_remote(t.image) and path.resolve() == Path(t.image).resolve():
                raise ValueError(
                    f"{path}: is the input image itself; give another output name (-o)"
                )
            other = writers.setdefault(path.resolve(), t)
            if other is not t:
                raise ValueError(
                    f"{other.image} and {t.image} would both write {path}; predict them separately"
                )


def _names_folder(value: str | Path) -> bool:
    """``-o roads/``: a name ending in a path separator is a folder, made if need be."""
    return str(value).endswith(("/", os.sep))


@contextlib.contextmanager
def exclusive_outputs(target: Target) -> Iterator[None]:
    """Hold the lock of each output of ``target`` (``atomic.exclusive_output``): a second
    predict of the same output fails at once instead of racing this one, and temporaries left
    by a killed earlier run of it are removed."""
    with contextlib.ExitStack() as stack:
        for path in target.outputs():
            stack.enter_context(exclusive_output(path))
        yield


def predict_batch(
    targets: Sequence[Target],
    options: PredictOptions | None = None,
    *,
    skip_existing: bool = False,
    report: Callable[[str], None] = print,
    report_error: Callable[[str], None] = print,
) -> list[Path]:
    """``predict_raster`` for every target with the same ``options``, on one cluster; returns
    the outputs written.

    Several targets share one local cluster (unless ``options.scheduler`` names one). Left
    out, each with a line to ``report``: an input that is the output of another target (a second
    run over ``tiles/*.tif`` matches the first run's ``*_roads.tif``), and with ``skip_existing``
    a target whose outputs all exist (they appear whole or not at all: an interrupted run
    resumes). A raster that cannot be predicted (``RasterError``, an output that exists) is
    reported to ``report_error`` and the others go on; then ValueError names the failures at
    the end. With a single target its error is raised as is.
    """
    options = options or PredictOptions()
    if skip_existing and options.overwrite:
        raise ValueError("--skip-existing and --overwrite contradict each other; give one")
    todo = targets_to_predict(targets, skip_existing, report)
    written: list[Path] = []
    failed: list[str | Path] = []
    # one cluster for all (~4 s of worker start and model load on 2 cores saved per raster)
    cluster = parallel.shared_cluster(options.scheduler, len(todo), options.workers, options.device)
    with cluster as address:
        on_cluster = options.model_copy(update={"scheduler": address})
        for t in todo:
            try:
                written.append(_predict_target(t, on_cluster, report))
            except (RasterError, FileExistsError, OutputError) as e:
                if len(todo) == 1:
                    raise
                report_error(f"error: {e}")  # this raster only: go on with the others
                failed.append(t.image)
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(todo)} images failed (errors above): {', '.join(map(str, failed))}"
        )
    return written


def targets_to_predict(
    targets: Sequence[Target], skip_existing: bool, report: Callable[[str], None]
) -> list[Target]:
    """``targets`` less those whose input is another target's output and, with
    ``skip_existing``, those whose outputs all exist; each left out is reported."""
    outputs = {str(t.output.resolve()) for t in targets}
    todo = []
    for t in targets:
        if sources.absolute(t.image) in outputs:
            report(f"skipped {t.image}: it is the output of another image given")
        elif skip_existing and all(p.exists() for p in t.outputs()):
            report(f"skipped {t.image}: {t.output} exists")
        else:
            todo.append(t)
    return todo


def _predict_target(target: Target, options: PredictOptions, report: Callable[[str], None]) -> Path:
    """Predict one target holding its outputs' locks; reports and returns the COG written."""
    with exclusive_outputs(target):
        result = predict_raster(
            target.image,
            target.output,
            options,
            vectors=target.vectors,
            stac_item=target.stac_item,
            source_item=target.source_item,
            network=target.network,
        )
    also = [str(p) for p in (result.vectors, target.network) if p is not None]
    report(f"wrote {result.output}" + "".join(f" and {p}" for p in also))
    return result.output
