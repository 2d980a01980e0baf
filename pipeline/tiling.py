"""The tile stage: scenes -> chips (image, road mask, land cover), one chip index, band stats.

Each scene is read window by window (never whole); road masks are burned per chip from the
vectors (reprojected and buffered in metres once per scene); chips with too much nodata are
skipped. The work is Dask-parallel over scenes and windows: a task is a run of neighbouring
chip windows of one scene (so one large scene keeps every worker busy); its chips come back to
this process, which appends them to the scene's ``.npy`` files in task order, with a bounded
number of tasks in flight. So memory does not grow with the scene, and the outputs are
byte-identical whatever the number of workers. The split is spatial (pipeline/splits.py).
Output format: docs/formats.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from affine import Affine

from pipeline import ground, raster
from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.chip_format import (
    INDEX_FILE,
    INDEX_LAYER,
    LANDCOVER_UNKNOWN,
    MASK_NEGATIVE,
    MASK_NODATA,
)
from pipeline.config import DataParams, SceneSource, TileParams
from pipeline.splits import (
    ChipWindow,
    assign_blocks,
    block_grid,
    chips_in_blocks,
    whole_scene_chips,
)

log = logging.getLogger(__name__)

CHIPS_PER_TASK = 16  # chips per Dask task: a 4096 px scene at 256 px chips is 16 tasks


class TilingError(ValueError):
    """An input scene cannot be tiled; the message names the file."""


@dataclass
class ChipBatch:
    """The chips one task cut from a run of neighbouring chip windows of one scene, in plan
    order. Each train chip's band sums travel separately, so the client adds them chip by
    chip in plan order: the statistics do not depend on how the chips were grouped."""

    scene: str
    images: np.ndarray  # (n, C, S, S), the scene dtype
    masks: np.ndarray  # (n, S, S) uint8: 0 background, 1 road, MASK_NODATA
    landcover: np.ndarray | None  # (n, S, S) uint8, LANDCOVER_UNKNOWN where nodata
    rows: list[dict]  # index rows; array_index counts from 0 within the batch
    train_sums: list[
        tuple[np.ndarray, np.ndarray, int]
    ]  # (sum, sum of squares, pixels) per train chip
    roads_loaded: bool = False  # this task built the scene's road polygons (not cached yet)


@dataclass
class SceneTiles:
    """What tiling one scene produced: index rows and the running sums for band statistics."""

    scene: str
    rows: list[dict] = field(default_factory=list)
    band_sum: np.ndarray | None = None
    band_sumsq: np.ndarray | None = None
    band_count: int = 0
    digest: str = ""
    tasks: int = 0
    roads_loads: int = 0


# ----------------------------------------------------------------------------- validation
def check_scenes(data: DataParams) -> dict[str, raster.RasterInfo]:
    """Validate every scene before any work: CRS present, same band count, road files readable,
    label grids match, one sample type (transfer scenes, never chipped, may have another:
    predict reads them)."""
    infos: dict[str, raster.RasterInfo] = {}
    chipped: list[raster.RasterInfo] = []
    for scene in data.scenes:
        info = raster.raster_info(scene.image)
        # errors name a tile set's tile by its own image (raster.shown_name), not its VRT
        if info.crs is None:
            raise TilingError(
                f"{raster.shown_name(scene.image)}: image has no CRS; georeference it "
                "(gdal_edit.py -a_srs) first"
            )
        if not scene.transfer:
            if chipped and info.dtype != chipped[0].dtype:
                first = raster.shown_name(chipped[0].path)
                raise TilingError(
                    f"{raster.shown_name(scene.image)}: sample type {info.dtype}, but {first} "
                    f"is {chipped[0].dtype}; every scene must share one sample type (band "
                    "statistics are pooled over them)"
                )
            chipped.append(info)
        try:
            scene_band_plan(scene, data)  # raises when the scene lacks one of data.bands
        except raster.RasterError as e:
            raise raster.RasterError(
                str(e).replace(str(scene.image), raster.shown_name(scene.image))
            ) from None
        if scene.roads is not None:
            from pipeline import vectors

            vectors.check_readable(scene.roads)
        if scene.negatives is not None and not Path(scene.negatives).is_file():
            raise TilingError(
                f"{scene.negatives}: file not found (scene {scene.name}'s negatives); "
                "re-run `pipeline synth` for a synthetic scene, or fix the path"
            )
        for label_path in (scene.labels, scene.landcover, scene.centrelines):
            if label_path is None:
                continue
            linfo = raster.raster_info(label_path)
            if not raster.same_grid(linfo, info):
                raise TilingError(
                    f"{label_path}: label raster is on another grid than {scene.image} "
                    f"({raster.grid_difference(linfo, info)}); resample it onto the image grid "
                    "(gdalwarp -te/-tr)"
                )
        infos[scene.name] = info
    return infos


def scene_band_plan(scene: SceneSource, data: DataParams) -> raster.BandPlan:
    """Which bands of the scene's image are ``data.bands`` (``raster.band_plan``: declared in
    ``scene.bands``, else by name, else file order) and where its validity comes from."""
    try:
        return raster.band_plan(scene.image, list(data.bands), scene.bands)
    except raster.RasterError as e:
        raise TilingError(f"{e}; every scene must have the same bands") from None


def _warn_if_stretched(image: Path, info: raster.RasterInfo) -> None:
    """Say when a scene's pixels are far from square on the ground (square-degree pixels away
    from the equator): its chips would teach roads narrower one way than the other."""
    advice = ground.square_pixel_advice(info.crs, info.transform, info.width, info.height)
    if advice:
        log.warning("%s: %s", raster.shown_name(image), advice)


def metres_per_pixel(info: raster.RasterInfo) -> float:
    """Pixel size in metres of a georeferenced scene (``check_scenes`` refused the others)."""
    mpp = info.metres_per_pixel
    if mpp is None:
        raise TilingError(f"{info.path}: image has no CRS")
    return mpp


# ----------------------------------------------------------------------------- chip layout
def plan_chips(
    data: DataParams, tile: TileParams, infos: dict[str, raster.RasterInfo]
) -> dict[str, list[ChipWindow]]:
    """Chip windows and their split for every scene (pure: depends on grids and params only)."""
    block_keys: list[tuple[str, int, int]] = []
    block_px: dict[str, int] = {}
    for scene in data.scenes:
        if scene.split == "auto":
            info = infos[scene.name]
            mpp = metres_per_pixel(info)
            block_px[scene.name] = max(tile.chip_size, round(tile.split.block_size_m / mpp))
            block_keys += [
                (scene.name, r, c)
                for r, c in block_grid(info.height, info.width, block_px[scene.name])
            ]
    assigned = assign_blocks(
        block_keys, tile.split.val_fraction, tile.split.test_fraction, tile.split.seed
    )

    plans: dict[str, list[ChipWindow]] = {}
    for scene in data.scenes:
        info = infos[scene.name]
        if scene.transfer:
            plans[scene.name] = []  # scored by evaluate on the whole scene, never chipped
            continue
        if scene.split != "auto":
            plans[scene.name] = whole_scene_chips(
                info.height, info.width, tile.chip_size, tile.stride, scene.split
            )
            continue
        split_of = {(r, c): s for (name, r, c), s in assigned.items() if name == scene.name}
        gap_px = round(tile.split.gap_m / metres_per_pixel(info))
        plans[scene.name] = chips_in_blocks(
            info.height,
            info.width,
            block_px=block_px[scene.name],
            gap_px=gap_px,
            chip_size=tile.chip_size,
            stride=tile.stride,
            split_of=split_of,
        )
    _warn_of_small_scenes(data, infos, plans, tile.chip_size)
    return plans


def _warn_of_small_scenes(
    data: DataParams,
    infos: dict[str, raster.RasterInfo],
    plans: dict[str, list[ChipWindow]],
    chip_size: int,
) -> None:
    """Say which scenes are smaller than one chip, and so give none (a tile set's odd small
    tile would otherwise count as a train tile without a chip of it)."""
    small = [
        s
        for s in data.scenes
        if not s.transfer
        and not plans[s.name]
        and min(infos[s.name].height, infos[s.name].width) < chip_size
    ]
    if small:
        sizes = ", ".join(
            f"{raster.shown_name(s.image)} ({infos[s.name].width}x{infos[s.name].height})"
            for s in small[:3]
        )
        log.warning(
            "%d scene(s) smaller than a chip (%d px) give no chips: %s%s; use a smaller "
            "tile.chip_size or leave them out",
            len(small),
            chip_size,
            sizes,
            " ..." if len(small) > 3 else "",
        )


# ----------------------------------------------------------------------------- one scene
class _NpyStream:
    """Append fixed-shape rows to a raw file, then prepend the .npy header: memory stays flat."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.row_shape = row_shape
        self.dtype = np.dtype(dtype)
        self.raw = path.with_name(f".{path.name}.raw")
        self.fh: BinaryIO = open(self.raw, "wb")  # noqa: SIM115 - closed in finish()
        self.n = 0
        self.hash = hashlib.sha256()

    def extend(self, rows: np.ndarray) -> None:
        """Append ``rows``, an array of shape (n, *row_shape)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path}: rows of shape {rows.shape[1:]}, expected {self.row_shape}"
            )
        raw = rows.reshape(-1).view(np.uint8)
        self.fh.write(raw)
        self.hash.update(raw)
        self.n += len(rows)

    def finish(self) -> None:
        self.fh.close()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.n, *self.row_shape),
        }
        with atomic_path(self.path) as tmp, open(tmp, "wb") as out, open(self.raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, length=1 << 22)
        self.raw.unlink()

    def abort(self) -> None:
        self.fh.close()
        self.raw.unlink(missing_ok=True)


_ROADS: dict[tuple, Any] = {}  # this process's road polygons, one scene at a time
_NEGATIVES: dict[tuple, Any] = {}  # and its hard-negative polygons (None: none)
ROADS_LOADS = 0  # how often this process built road polygons


def scene_roads(scene: SceneSource, data: DataParams, info: raster.RasterInfo) -> tuple[Any, bool]:
    """(road polygons of ``scene`` on its image grid, whether this call built them).

    Reading, reprojecting and buffering a scene's vectors costs far more than burning one
    chip, so each process builds them once per scene and its later tasks of that scene reuse
    them. Tasks arrive in scene order, so one scene is held at a time. The key includes the
    file's size and mtime: a file rewritten between two runs in one process is read again.
    """
    global ROADS_LOADS
    from pipeline import vectors

    key = (
        *_file_key(scene.roads),
        info.crs.to_wkt(),
        info.bounds,
        data.width_attribute,
        data.default_half_width_m,
    )
    if key in _ROADS:
        return _ROADS[key], False
    _ROADS.clear()
    _ROADS[key] = vectors.load_scene_roads(scene, data, info)
    ROADS_LOADS += 1
    return _ROADS[key], True


def scene_negatives(scene: SceneSource, data: DataParams, info: raster.RasterInfo) -> Any:
    """The hard-negative polygons of ``scene`` on its image grid (None: it has none), built
    once per scene and process as :func:`scene_roads` builds the roads."""
    from pipeline import vectors

    if scene.negatives is None:
        return None
    key = (
        *_file_key(scene.negatives),
        info.crs.to_wkt(),
        data.width_attribute,
        data.negative_half_width_m,
    )
    if key not in _NEGATIVES:
        _NEGATIVES.clear()
        _NEGATIVES[key] = vectors.load_scene_negatives(scene, data, info)
    return _NEGATIVES[key]


def _file_key(path: Path) -> tuple:
    """A file's identity for the caches above: a file rewritten between two runs in one
    process is read again."""
    stat = Path(path).stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@dataclass
class _ChipCollector:
    """The chips a task keeps, in plan order, with their index rows and train band sums."""

    scene: str
    size: int
    n_bands: int
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    landcover: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    train_sums: list[tuple[np.ndarray, np.ndarray, int]] = field(default_factory=list)

    def add(
        self,
        chip: ChipWindow,
        image: np.ndarray,
        mask: np.ndarray,
        valid: np.ndarray,
        landcover: np.ndarray | None,
        nodata_fraction: float,
        transform: Affine,
    ) -> None:
        """Keep one chip (``transform``: its window's) and its index row."""
        self.images.append(image)
        self.masks.append(mask)
        if landcover is not None:
            self.landcover.append(landcover)
        if chip.split == "train":
            px = image.reshape(self.n_bands, -1)[:, valid.ravel()].astype(np.float64)
            self.train_sums.append((px.sum(axis=1), (px * px).sum(axis=1), px.shape[1]))
        n_valid = int(valid.sum())
        self.rows.append(
            dict(
                chip_id=f"{self.scene}_{chip.row_off}_{chip.col_off}",
                scene=self.scene,
                array_index=len(self.rows),
                row_off=chip.row_off,
                col_off=chip.col_off,
                size=self.size,
                split=chip.split,
                road_fraction=float((mask == 1).sum()) / max(n_valid, 1),
                nodata_fraction=nodata_fraction,
                bounds=_window_bounds(transform, self.size),
            )
        )

    def batch(self, dtype: str, with_landcover: bool, roads_loaded: bool) -> ChipBatch:
        """The kept chips stacked (``dtype``: the scene's; empty arrays when none was kept)."""
        size = self.size

        def stack(arrays: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.stack(arrays) if arrays else np.empty((0, *shape), dtype)

        return ChipBatch(
            scene=self.scene,
            images=stack(self.images, (self.n_bands, size, size), dtype),
            masks=stack(self.masks, (size, size), np.uint8),
            landcover=stack(self.landcover, (size, size), np.uint8) if with_landcover else None,
            rows=self.rows,
            train_sums=self.train_sums,
            roads_loaded=roads_loaded,
        )


@contextmanager
def _scene_readers(
    scene: SceneSource, plan: raster.BandPlan
) -> Iterator[tuple[raster.WindowReader, Any, Any]]:
    """Readers of the scene's image, label raster and land cover (None where it has none)."""
    with raster.open_reader(scene.image, plan) as image:
        label_reader = raster.open_reader(scene.labels) if scene.labels else nullcontext()
        lc_reader = raster.open_reader(scene.landcover) if scene.landcover else nullcontext()
        with label_reader as labels, lc_reader as landcover:
            yield image, labels, landcover


def _read_chip(
    image: raster.WindowReader, labels: Any, chip: ChipWindow, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image, valid, label) of one chip window; label None without a label raster."""
    pixels, valid = raster.read_window(image, chip.col_off, chip.row_off, size, size)
    if labels is None:
        return pixels, valid, None
    # a label raster's own nodata is unknown ground truth: ignored like image nodata
    label, label_valid = raster.read_window(labels, chip.col_off, chip.row_off, size, size)
    return pixels, valid & label_valid, label


def _read_landcover(
    landcover: raster.WindowReader, chip: ChipWindow, size: int, valid: np.ndarray
) -> np.ndarray:
    """One chip's land cover classes, ``LANDCOVER_UNKNOWN`` where the chip is not valid."""
    lc = raster.read_window(landcover, chip.col_off, chip.row_off, size, size)[0][0]
    return np.where(valid, lc, LANDCOVER_UNKNOWN).astype(np.uint8)


def tile_chips(
    scene: SceneSource,
    chips: list[ChipWindow],
    info: raster.RasterInfo,
    data: DataParams,
    tile: TileParams,
    plan: raster.BandPlan | None = None,
) -> ChipBatch:
    """Read, label and filter a run of chip windows of one scene (one task of the stage).

    ``plan`` says which image bands are data (default: ``scene_band_plan``).

    Chips whose nodata fraction passes ``tile.max_nodata_fraction`` are dropped; the rest
    come back in the order of ``chips``.
    """
    from pipeline import vectors

    size = tile.chip_size
    roads, loaded = scene_roads(scene, data, info) if scene.roads is not None else (None, False)
    negatives = scene_negatives(scene, data, info)
    plan = plan or scene_band_plan(scene, data)
    kept = _ChipCollector(scene.name, size, len(plan.bands))
    with _scene_readers(scene, plan) as (image_reader, labels, landcover):
        for chip in chips:
            image, valid, label = _read_chip(image_reader, labels, chip, size)
            nodata_fraction = 1.0 - float(valid.mean())
            if nodata_fraction > tile.max_nodata_fraction:
                continue
            win_transform = info.transform @ Affine.translation(chip.col_off, chip.row_off)
            if roads is not None:
                road = vectors.burn_mask(roads, win_transform, (size, size))
            else:
                road = (label[0] == 1).astype(np.uint8)
            mask = np.where(valid, road, MASK_NODATA).astype(np.uint8)
            if negatives is not None:
                negative = vectors.burn_mask(negatives, win_transform, (size, size)) > 0
                mask[negative & (mask == 0)] = MASK_NEGATIVE
            lc = _read_landcover(landcover, chip, size, valid) if landcover is not None else None
            kept.add(chip, image, mask, valid, lc, nodata_fraction, win_transform)
    return kept.batch(info.dtype, scene.landcover is not None, loaded)


def write_scene(
    scene: SceneSource,
    info: raster.RasterInfo,
    tile: TileParams,
    batches: Iterable[ChipBatch],
    n_bands: int | None = None,
) -> SceneTiles:
    """Append one scene's chip batches, in the order given, to its ``.npy`` arrays in
    ``tile.out_dir``; returns its index rows and train band sums (added chip by chip).
    ``n_bands``: bands per chip (default: the image's bands not flagged alpha)."""
    out = Path(tile.out_dir)
    size = tile.chip_size
    n_bands = n_bands or info.count
    streams = {
        "images": _NpyStream(
            out / f"{scene.name}.images.npy", (n_bands, size, size), np.dtype(info.dtype)
        ),
        "masks": _NpyStream(out / f"{scene.name}.masks.npy", (size, size), np.uint8),
    }
    if scene.landcover is not None:
        streams["landcover"] = _NpyStream(
            out / f"{scene.name}.landcover.npy", (size, size), np.uint8
        )
    result = SceneTiles(scene=scene.name, band_sum=np.zeros(n_bands), band_sumsq=np.zeros(n_bands))
    try:
        for batch in batches:
            offset = streams["masks"].n
            result.rows += [
                {**row, "array_index": offset + row["array_index"]} for row in batch.rows
            ]
            streams["images"].extend(batch.images)
            streams["masks"].extend(batch.masks)
            if "landcover" in streams:
                streams["landcover"].extend(batch.landcover)
            for band_sum, band_sumsq, count in batch.train_sums:
                result.band_sum += band_sum
                result.band_sumsq += band_sumsq
                result.band_count += count
            result.tasks += 1
            result.roads_loads += batch.roads_loaded
    except BaseException:
        for s in streams.values():
            s.abort()
        raise
    for s in streams.values():
        s.finish()
    result.digest = hashlib.sha256(
        "".join(s.hash.hexdigest() for s in streams.values()).encode()
    ).hexdigest()
    return result


def _window_bounds(transform: Affine, size: int) -> tuple[float, float, float, float]:
    x0, y0 = transform @ (0, 0)
    x1, y1 = transform @ (size, size)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


# ----------------------------------------------------------------------------- the stage
def task_chunks(chips: list[ChipWindow], chips_per_task: int) -> list[list[ChipWindow]]:
    """Consecutive runs of ``chips_per_task`` chip windows in plan order (neighbours inside
    a split block), the unit of work that spreads one large scene over all workers."""
    if chips_per_task < 1:
        raise ValueError(f"chips_per_task must be >= 1, got {chips_per_task}")
    return [chips[i : i + chips_per_task] for i in range(0, len(chips), chips_per_task)]


@dataclass(frozen=True)
class _TileInputs:
    """The scenes to tile (tile sets expanded into scenes) and what is known of each."""

    data: DataParams
    tileset_summaries: dict[str, dict]  # one per tile set, recorded in stats.json
    infos: dict[str, raster.RasterInfo]
    band_plans: dict[str, raster.BandPlan]
    # each scene's own band range, for models trained with normalisation: percentile
    percentiles: dict[str, list[tuple[float, float]]]
    gsd_m: float  # the model's pixel size: the chips'
    resampled: dict[str, float]  # {scene: its own pixel size} of scenes chipped at gsd_m


def _prepare_inputs(
    data: DataParams, tile: TileParams, workers: int, progress: bool
) -> _TileInputs:
    """Expand tile sets, check every scene, plan its bands and measure its band range."""
    from pipeline import tilesets

    data, tileset_summaries = tilesets.prepare(
        data, Path(tile.out_dir) / tilesets.PREPARED_DIR, workers=workers, progress=progress
    )
    infos = check_scenes(data)
    gsd = tile.pixel_size_m or _median_gsd(data, infos)
    resampled: dict[str, float] = {}
    if tile.resample:
        data, infos, resampled = resample_scenes(
            data, infos, gsd, Path(tile.out_dir) / RESAMPLED_DIR
        )
    else:  # chipped as they are: say which scenes' pixels are far from square
        for scene in data.scenes:
            _warn_if_stretched(scene.image, infos[scene.name])
    band_plans = {s.name: scene_band_plan(s, data) for s in data.scenes}
    for bp in band_plans.values():
        if bp.note:
            (log.warning if bp.warn else log.info)("%s", bp.note)
    percentiles = {  # the chips' stretch: transfer scenes give none
        s.name: raster.band_percentiles(s.image, band_plans[s.name])
        for s in data.scenes
        if not s.transfer
    }
    return _TileInputs(data, tileset_summaries, infos, band_plans, percentiles, gsd, resampled)


RESAMPLED_DIR = "resampled"  # under tile.out_dir: VRTs of scenes chipped at the model's size


def resample_scenes(
    data: DataParams, infos: dict[str, raster.RasterInfo], gsd_m: float, folder: Path
) -> tuple[DataParams, dict[str, raster.RasterInfo], dict[str, float]]:
    """The scenes with every chipped one whose pixels do not pass for ``gsd_m`` square ones
    (``ground.passes_for``: a side more than ``ground.GSD_TOLERANCE`` off, or pixels that much
    taller than wide) replaced by warped VRTs at ``gsd_m`` in ``folder`` (image, label raster
    and land cover; vectors are burned on the new grid), so chips of sources at 0.3 m and 1 m,
    or of an EPSG:4326 export, teach one scale, the one predict resamples rasters to; and
    {scene: its own pixel size} of those. Transfer scenes are left as they are: evaluate
    predicts them as predict would."""
    scenes, infos, resampled = list(data.scenes), dict(infos), {}
    for k, scene in enumerate(scenes):
        sizes = infos[scene.name].pixel_metres
        if scene.transfer or sizes is None or ground.passes_for(sizes, gsd_m):
            continue
        factor = (gsd_m / sizes[0], gsd_m / sizes[1])
        resampled[scene.name] = round(metres_per_pixel(infos[scene.name]), 4)
        update = {}
        for name, kind in (("image", "image"), ("labels", "labels"), ("landcover", "classes")):
            if getattr(scene, name) is not None:
                update[name] = raster.write_resampled_vrt(
                    getattr(scene, name), folder / f"{scene.name}.{name}.vrt", factor, kind
                )
        log.info(
            "tile: %s: pixels %.3g m wide and %.3g m tall, chipped resampled to %.3g m",
            scene.name, sizes[1], sizes[0], gsd_m,
        )  # fmt: skip
        scenes[k] = scene.model_copy(update=update)
        infos[scene.name] = raster.raster_info(update["image"])
    return data.model_copy(update={"scenes": scenes}), infos, resampled


def _tile_scenes(
    inputs: _TileInputs,
    tile: TileParams,
    plans: dict[str, list[ChipWindow]],
    *,
    workers: int,
    progress: bool,
    chips_per_task: int,
    max_in_flight: int | None,
) -> list[SceneTiles]:
    """Cut every scene's chips on Dask workers and write them here, scene after scene, in
    task order."""
    from pipeline.parallel import map_ordered

    scenes = inputs.data.scenes
    tasks = {
        s.name: [
            (s, chunk, inputs.infos[s.name], inputs.data, tile, inputs.band_plans[s.name])
            for chunk in task_chunks(plans[s.name], chips_per_task)
        ]
        for s in scenes
    }
    batches = map_ordered(
        tile_chips,
        [t for s in scenes for t in tasks[s.name]],
        workers=min(workers, sum(len(t) for t in tasks.values())),
        max_in_flight=max_in_flight,
        total=sum(len(p) for p in plans.values()),
        weight=lambda task: len(task[1]),
        desc="tile",
        unit="chip",
        progress=progress,
    )
    results: list[SceneTiles] = []
    try:
        with closing(batches):
            for scene in scenes:
                info, n_tasks = inputs.infos[scene.name], len(tasks[scene.name])
                res = write_scene(
                    scene, info, tile, islice(batches, n_tasks), len(inputs.data.bands)
                )
                log.debug(
                    "tile: %s: %d chips from %d tasks, roads built %d times",
                    scene.name,
                    len(res.rows),
                    res.tasks,
                    res.roads_loads,
                )
                results.append(res)
    finally:
        _ROADS.clear()  # in-process runs: do not keep the last scene's roads after the stage
    return results


def _band_mean_std(results: list[SceneTiles]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each band over all train pixels (from the scenes' exact sums)."""
    train_count = sum(r.band_count for r in results)
    if train_count == 0:
        raise TilingError(
            "no train chips: check data.scenes splits and tile.split fractions in params.yaml"
        )
    band_sum = sum(r.band_sum for r in results)
    band_sumsq = sum(r.band_sumsq for r in results)
    mean = band_sum / train_count
    std = np.sqrt(np.maximum(band_sumsq / train_count - mean**2, 1e-12))
    return mean, std


def _chip_index(results: list[SceneTiles], infos: dict[str, raster.RasterInfo], crs: Any) -> Any:
    """One GeoDataFrame of every chip's index row and footprint, in ``crs``."""
    import geopandas as gpd
    import pandas as pd
    from pyproj.exceptions import ProjError
    from shapely.geometry import box

    frames = []
    for res in results:
        if not res.rows:
            continue
        frames.append(
            gpd.GeoDataFrame(
                [{k: v for k, v in row.items() if k != "bounds"} for row in res.rows],
                geometry=[box(*row["bounds"]) for row in res.rows],
                crs=infos[res.scene].crs,
            )
        )
    try:
        frames = [f if f.crs == crs else f.to_crs(crs) for f in frames]
    except ProjError:
        # tiles on a local grid (no georeferencing) beside georeferenced scenes: no common CRS
        log.warning(
            "tile: the scenes' grids are not related (local tile grids beside georeferenced "
            "images): %s has each chip's footprint in its own scene's coordinates, no CRS",
            INDEX_FILE,
        )
        frames, crs = [f.set_crs(None, allow_override=True) for f in frames], None
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)


def _fingerprint(results: list[SceneTiles], index: Any) -> str:
    """SHA-256 of the chip arrays' digests and the index's attributes: the chips' identity."""
    return hashlib.sha256(
        "".join(r.digest for r in results).encode()
        + index.drop(columns="geometry").to_csv(index=False).encode()
    ).hexdigest()


def run_tile(
    data: DataParams,
    tile: TileParams,
    *,
    workers: int | None = None,
    progress: bool = True,
    chips_per_task: int = CHIPS_PER_TASK,
    max_in_flight: int | None = None,
) -> dict:
    """Tile every scene; write chip arrays, ``index.gpkg`` and ``stats.json``; return the stats.

    Tasks are runs of ``chips_per_task`` chips, scene after scene, on ``workers`` Dask worker
    processes (``tile.workers`` by default), at most ``max_in_flight`` (default twice the
    workers) submitted and not yet written at a time. This process writes their chips in task
    order, so the outputs are byte-identical whatever the workers, the task size or the order
    in which tasks finish.
    """
    workers = workers or tile.workers
    inputs = _prepare_inputs(data, tile, workers, progress)
    chipped = [s for s in inputs.data.scenes if not s.transfer] or inputs.data.scenes
    infos, first = inputs.infos, inputs.infos[chipped[0].name]
    plans = plan_chips(inputs.data, tile, infos)
    Path(tile.out_dir).mkdir(parents=True, exist_ok=True)
    results = _tile_scenes(
        inputs,
        tile,
        plans,
        workers=workers,
        progress=progress,
        chips_per_task=chips_per_task,
        max_in_flight=max_in_flight,
    )
    mean, std = _band_mean_std(results)
    index = _chip_index(results, infos, first.crs)
    write_index(index, tile.index_path)
    stats = dict(
        bands=list(inputs.data.bands),
        dtype=first.dtype,
        gsd_m=inputs.gsd_m,
        resampled=inputs.resampled,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        percentiles={name: [list(p) for p in bands] for name, bands in inputs.percentiles.items()},
        **stretched_stats(results, inputs.percentiles),
        chip_size=tile.chip_size,
        landcover_classes=_landcover_classes(inputs.data),
        scenes={s.name: s.split for s in data.scenes if isinstance(s, SceneSource)},
        tilesets=inputs.tileset_summaries,
        counts={split: int((index["split"] == split).sum()) for split in ("train", "val", "test")},
        fingerprint=_fingerprint(results, index),
    )
    write_text_atomic(tile.stats_path, json.dumps(stats, indent=2))
    log.info("tiled %d chips: %s", len(index), stats["counts"])
    return stats


def stretched_stats(
    results: list[SceneTiles], percentiles: dict[str, list[tuple[float, float]]]
) -> dict[str, list[float]]:
    """Mean and std of the train pixels after each scene's percentile stretch
    ``(x - low) / (high - low)``, pooled over scenes; exact, from each scene's raw band sums
    (the stretch is linear per scene)."""
    total = total_sq = 0.0
    count = 0
    for res in results:
        if not res.band_count:
            continue
        lo, hi = np.asarray(percentiles[res.scene], np.float64).T
        d, n = hi - lo, res.band_count
        total = total + (res.band_sum - n * lo) / d
        total_sq = total_sq + (res.band_sumsq - 2 * lo * res.band_sum + n * lo * lo) / (d * d)
        count += n
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return dict(percentile_mean=[float(m) for m in mean], percentile_std=[float(s) for s in std])


def write_index(index, path: Path) -> None:
    """Write the chip index GeoPackage atomically and reproducibly (fixed GeoPackage timestamp)."""
    import warnings

    from pipeline import vectors

    with warnings.catch_warnings():  # no CRS is what _chip_index means when it gives none
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        vectors.write_vectors(index, path, layer=INDEX_LAYER, reproducible=True)


def _median_gsd(data: DataParams, infos: dict[str, raster.RasterInfo]) -> float:
    """Median pixel size in metres of the scenes that give train/val chips (the model's GSD)."""
    sizes = [metres_per_pixel(infos[s.name]) for s in data.scenes if s.split != "test"]
    sizes = sizes or [metres_per_pixel(i) for i in infos.values()]
    return round(float(np.median(sizes)), 4)


def _landcover_classes(data: DataParams) -> list[str]:
    for scene in data.scenes:
        if scene.landcover is not None:
            return raster.landcover_classes(scene.landcover)
    return []
