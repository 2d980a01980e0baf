"""The tile stage: scenes -> chips (image, road mask, land cover), one chip index, band stats.

Each scene is read window by window (never whole); road masks are burned per chip from the
vectors (reprojected and buffered in metres once per scene); chips with too much nodata are
skipped; arrays are streamed to disk, so memory does not grow with the scene. The split is
spatial (pipeline/splits.py). Output format: docs/formats.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from affine import Affine

from pipeline import raster
from pipeline.config import DataParams, SceneSource, TileParams
from pipeline.splits import (
    ChipWindow,
    assign_blocks,
    block_grid,
    chips_in_blocks,
    whole_scene_chips,
)

log = logging.getLogger(__name__)

MASK_NODATA = 255
LANDCOVER_UNKNOWN = 255
INDEX_LAYER = "chips"


class TilingError(ValueError):
    """An input scene cannot be tiled; the message names the file."""


@dataclass
class SceneTiles:
    """What tiling one scene produced: index rows and the running sums for band statistics."""

    scene: str
    rows: list[dict] = field(default_factory=list)
    band_sum: np.ndarray | None = None
    band_sumsq: np.ndarray | None = None
    band_count: int = 0
    digest: str = ""


# ----------------------------------------------------------------------------- validation
def check_scenes(data: DataParams) -> dict[str, raster.RasterInfo]:
    """Validate every scene before any work: CRS present, same band count, label grids match."""
    infos: dict[str, raster.RasterInfo] = {}
    expected_bands = len(data.bands)
    for scene in data.scenes:
        info = raster.raster_info(scene.image)
        if info.crs is None:
            raise TilingError(f"{scene.image}: image has no CRS; georeference it (gdal_edit.py -a_srs) first")
        if info.count != expected_bands:
            raise TilingError(
                f"{scene.image}: {info.count} bands, but params data.bands lists {expected_bands} "
                f"({', '.join(data.bands)}); every scene must have the same bands"
            )
        for label_path in (scene.labels, scene.landcover):
            if label_path is None:
                continue
            linfo = raster.raster_info(label_path)
            if (linfo.width, linfo.height) != (info.width, info.height) or not _same_grid(linfo, info):
                raise TilingError(
                    f"{label_path}: label raster is on another grid than {scene.image} "
                    f"({linfo.width}x{linfo.height} {linfo.crs} vs {info.width}x{info.height} {info.crs}); "
                    "resample it onto the image grid (gdalwarp -te/-tr)"
                )
        infos[scene.name] = info
    return infos


def _same_grid(a: raster.RasterInfo, b: raster.RasterInfo) -> bool:
    return a.crs == b.crs and a.transform.almost_equals(b.transform, precision=1e-6)


def metres_per_pixel(info: raster.RasterInfo) -> float:
    """Pixel size in metres (approximate for geographic CRSs: 111,320 m per degree)."""
    res = info.res[0]
    if info.crs is not None and info.crs.is_geographic:
        return res * 111_320.0
    factor = info.crs.linear_units_factor[1] if info.crs is not None else 1.0
    return res * factor


# ----------------------------------------------------------------------------- chip layout
def plan_chips(data: DataParams, tile: TileParams, infos: dict[str, raster.RasterInfo]) -> dict[str, list[ChipWindow]]:
    """Chip windows and their split for every scene (pure: depends on grids and params only)."""
    block_keys: list[tuple[str, int, int]] = []
    block_px: dict[str, int] = {}
    for scene in data.scenes:
        if scene.split == "auto":
            info = infos[scene.name]
            mpp = metres_per_pixel(info)
            block_px[scene.name] = max(tile.chip_size, round(tile.split.block_size_m / mpp))
            block_keys += [(scene.name, r, c) for r, c in block_grid(info.height, info.width, block_px[scene.name])]
    assigned = assign_blocks(block_keys, tile.split.val_fraction, tile.split.test_fraction, tile.split.seed)

    plans: dict[str, list[ChipWindow]] = {}
    for scene in data.scenes:
        info = infos[scene.name]
        if scene.split != "auto":
            plans[scene.name] = whole_scene_chips(info.height, info.width, tile.chip_size, tile.stride, scene.split)
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
    return plans


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

    def append(self, row: np.ndarray) -> None:
        b = np.ascontiguousarray(row, dtype=self.dtype).tobytes()
        self.fh.write(b)
        self.hash.update(b)
        self.n += 1

    def finish(self) -> None:
        self.fh.close()
        tmp = self.path.with_name(f".{self.path.name}.part")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.n, *self.row_shape)}
        with open(tmp, "wb") as out, open(self.raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, length=1 << 22)
        os.replace(tmp, self.path)
        self.raw.unlink()

    def abort(self) -> None:
        self.fh.close()
        self.raw.unlink(missing_ok=True)


def tile_scene(
    scene: SceneSource,
    chips: list[ChipWindow],
    info: raster.RasterInfo,
    data: DataParams,
    tile: TileParams,
) -> SceneTiles:
    """Cut one scene's chips into ``tile.out_dir``; returns its index rows and train band sums."""
    out = Path(tile.out_dir)
    size = tile.chip_size
    roads = None
    if scene.roads is not None:
        from pipeline import vectors

        roads = vectors.load_scene_roads(scene, data, info)
    streams = {
        "images": _NpyStream(out / f"{scene.name}.images.npy", (info.count, size, size), np.dtype(info.dtype)),
        "masks": _NpyStream(out / f"{scene.name}.masks.npy", (size, size), np.uint8),
    }
    if scene.landcover is not None:
        streams["landcover"] = _NpyStream(out / f"{scene.name}.landcover.npy", (size, size), np.uint8)

    result = SceneTiles(scene=scene.name)
    result.band_sum = np.zeros(info.count, np.float64)
    result.band_sumsq = np.zeros(info.count, np.float64)
    try:
        with raster.open_reader(scene.image) as img_reader:
            label_reader = raster.open_reader(scene.labels) if scene.labels else nullcontext()
            lc_reader = raster.open_reader(scene.landcover) if scene.landcover else nullcontext()
            with label_reader as labels, lc_reader as landcover:
                for chip in chips:
                    image, valid = img_reader.read(chip.col_off, chip.row_off, size, size)
                    if labels is not None:
                        # a label raster's own nodata is unknown ground truth: ignored like image nodata
                        label, label_valid = labels.read(chip.col_off, chip.row_off, size, size)
                        valid &= label_valid
                    nodata_fraction = 1.0 - float(valid.mean())
                    if nodata_fraction > tile.max_nodata_fraction:
                        continue
                    win_transform = info.transform @ Affine.translation(chip.col_off, chip.row_off)
                    if roads is not None:
                        road = vectors.burn_mask(roads, win_transform, (size, size))
                    else:
                        road = (label[0] == 1).astype(np.uint8)
                    mask = np.where(valid, road, MASK_NODATA).astype(np.uint8)
                    streams["images"].append(image)
                    streams["masks"].append(mask)
                    if landcover is not None:
                        lc = landcover.read_band(1, chip.col_off, chip.row_off, size, size)
                        streams["landcover"].append(np.where(valid, lc, LANDCOVER_UNKNOWN))
                    if chip.split == "train":
                        px = image.reshape(info.count, -1)[:, valid.ravel()].astype(np.float64)
                        result.band_sum += px.sum(axis=1)
                        result.band_sumsq += (px * px).sum(axis=1)
                        result.band_count += px.shape[1]
                    n_valid = int(valid.sum())
                    result.rows.append(
                        dict(
                            chip_id=f"{scene.name}_{chip.row_off}_{chip.col_off}",
                            scene=scene.name,
                            array_index=streams["masks"].n - 1,
                            row_off=chip.row_off,
                            col_off=chip.col_off,
                            size=size,
                            split=chip.split,
                            road_fraction=float((mask == 1).sum()) / max(n_valid, 1),
                            nodata_fraction=nodata_fraction,
                            bounds=_window_bounds(win_transform, size),
                        )
                    )
    except BaseException:
        for s in streams.values():
            s.abort()
        raise
    for s in streams.values():
        s.finish()
    result.digest = hashlib.sha256("".join(s.hash.hexdigest() for s in streams.values()).encode()).hexdigest()
    return result


def _window_bounds(transform: Affine, size: int) -> tuple[float, float, float, float]:
    x0, y0 = transform @ (0, 0)
    x1, y1 = transform @ (size, size)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


# ----------------------------------------------------------------------------- the stage
def run_tile(data: DataParams, tile: TileParams, *, workers: int | None = None, progress: bool = True) -> dict:
    """Tile every scene; write chip arrays, ``index.gpkg`` and ``stats.json``; return the stats."""
    import geopandas as gpd
    import pandas as pd
    from shapely.geometry import box

    from pipeline.parallel import map_tasks

    infos = check_scenes(data)
    plans = plan_chips(data, tile, infos)
    out = Path(tile.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tasks = [(scene, plans[scene.name], infos[scene.name], data, tile) for scene in data.scenes]
    results: list[SceneTiles] = map_tasks(
        tile_scene, tasks, workers=workers or tile.workers, desc="tile", progress=progress
    )

    train_count = sum(r.band_count for r in results)
    if train_count == 0:
        raise TilingError("no train chips: check data.scenes splits and tile.split fractions in params.yaml")
    band_sum = sum(r.band_sum for r in results)
    band_sumsq = sum(r.band_sumsq for r in results)
    mean = band_sum / train_count
    std = np.sqrt(np.maximum(band_sumsq / train_count - mean**2, 1e-12))

    first_crs = infos[data.scenes[0].name].crs
    frames = []
    for res in results:
        if not res.rows:
            continue
        gdf = gpd.GeoDataFrame(
            [{k: v for k, v in row.items() if k != "bounds"} for row in res.rows],
            geometry=[box(*row["bounds"]) for row in res.rows],
            crs=infos[res.scene].crs,
        )
        frames.append(gdf.to_crs(first_crs))
    index = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=first_crs)
    write_index(index, tile.index_path)

    classes = _landcover_classes(data)
    fingerprint = hashlib.sha256(
        "".join(r.digest for r in results).encode() + index.drop(columns="geometry").to_csv(index=False).encode()
    ).hexdigest()
    stats = dict(
        bands=list(data.bands),
        dtype=infos[data.scenes[0].name].dtype,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        chip_size=tile.chip_size,
        landcover_classes=classes,
        scenes={s.name: s.split for s in data.scenes},
        counts={split: int((index["split"] == split).sum()) for split in ("train", "val", "test")},
        fingerprint=fingerprint,
    )
    tmp = tile.stats_path.with_name(f".{tile.stats_path.name}.part")
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, tile.stats_path)
    log.info("tiled %d chips: %s", len(index), stats["counts"])
    return stats


def write_index(index, path: Path) -> None:
    """Write the chip index GeoPackage atomically and reproducibly (fixed GeoPackage timestamp)."""
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    tmp.unlink(missing_ok=True)
    os.environ.setdefault("OGR_CURRENT_DATE", "2000-01-01T00:00:00.000Z")
    index.to_file(tmp, layer=INDEX_LAYER, driver="GPKG", engine="pyogrio")
    os.replace(tmp, path)


def _landcover_classes(data: DataParams) -> list[str]:
    for scene in data.scenes:
        if scene.landcover is not None:
            return raster.landcover_classes(scene.landcover)
    return []
