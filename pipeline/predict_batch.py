"""Predict many rasters in one go: one cluster, so workers start and load the model once.

``pipeline predict tiles/*.tif -o roads/`` lands here. Each raster still goes through
``predict_raster`` (the same pixels as predicting it alone); what this module adds is where the
outputs go, which inputs to leave out, and that one bad raster does not stop the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import parallel
from pipeline.predict import default_output_path, predict_raster
from pipeline.raster import RasterError


@dataclass(frozen=True)
class Target:
    """One input raster and the files predict writes for it."""

    image: Path
    output: Path
    vectors: Path | None = None
    network: Path | None = None


def batch_targets(
    images: Sequence[Path],
    output: str | Path | None = None,
    vectors: str | Path | None = None,
    network: str | Path | None = None,
) -> list[Target]:
    """Where each image's outputs go.

    ``output`` / ``vectors`` / ``network`` name a file for one image, or an existing folder,
    which gets ``<image>_roads.tif`` / ``<image>_roads.gpkg`` / ``<image>_roads_network.gpkg``;
    with several images they must be folders.
    Without ``output`` each raster goes beside its input. Raises ValueError, before any work,
    when two inputs would write the same file.
    """

    def place(image: Path, value: str | Path | None, flag: str, suffix: str) -> Path | None:
        if value is None:
            return default_output_path(image) if suffix == ".tif" else None
        if Path(value).is_dir():
            return Path(value) / f"{image.stem}_roads{suffix}"
        if len(images) > 1:
            raise ValueError(
                f"{value}: with {len(images)} images, {flag} must be an existing folder "
                f"(each image gets <name>_roads{suffix} in it)"
            )
        return Path(value)

    targets = [
        Target(
            Path(image),
            place(Path(image), output, "-o/--output", ".tif"),
            place(Path(image), vectors, "--vectors", ".gpkg"),
            place(Path(image), network, "--network", "_network.gpkg"),
        )
        for image in images
    ]
    writers: dict[Path, Path] = {}
    for t in targets:
        for path in (t.output, t.vectors, t.network):
            if path is None:
                continue
            other = writers.setdefault(path.resolve(), t.image)
            if other is not t.image:
                raise ValueError(
                    f"{other} and {t.image} would both write {path}; predict them separately"
                )
    return targets


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
    outputs = {t.output.resolve() for t in targets}
    todo = []
    for t in targets:
        if t.image.resolve() in outputs:
            report(f"skipped {t.image}: it is the output of another image given")
        elif (
            skip_existing
            and t.output.exists()
            and all(p is None or p.exists() for p in (t.vectors, t.network))
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
                result = predict_raster(
                    t.image,
                    t.output,
                    vectors=t.vectors,
                    network=t.network,
                    scheduler=address,
                    workers=workers,
                    device=device,
                    overwrite=overwrite,
                    **options,
                )
            except (RasterError, FileExistsError) as e:
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
