"""Tile sets: many image/label tiles named by one ``data.scenes`` entry, expanded to scenes.

A public road data set (Massachusetts Roads, DeepGlobe) ships as hundreds to thousands of
PNG/JPEG/TIFF tiles without georeferencing, with label images in their own convention; SpaceNet
ships georeferenced chips, each with a GeoJSON of its road centrelines. The tile stage expands
such an entry (``TileSetSource``) into one scene per tile, named ``<set>_<stem>``, and prepares
each tile once, one at a time (memory does not grow with the set):

- ``<stem>.vrt``: the image on its own grid, or for an image without CRS on a local grid of the
  declared pixel size (``raster.LOCAL_GRID_WKT``), with the fill colour as nodata; for a set
  with ``pansharpen``, the panchromatic image fused with the tile's multispectral bands
  (``pipeline.pansharpen``);
- ``<stem>.labels.tif`` (label images): road = 1, background = 0, 255 (nodata) where the image
  is fill, converted from the declared label convention (a colour outside it is an error);
- ``<stem>.centrelines.tif`` (a set with ``centrelines``, RoadNet's ``centerline.png``): the
  same for the tile's centreline image, evaluate's truth network;
- road vectors (``roads``) are not converted: the tile's scene names its road file, burned by
  the tile stage and scored by evaluate as any scene's roads.

Whole tiles go to train/val/test (``assign_splits``): the same files and seed give the same
split. Every later stage sees ordinary georeferenced scenes (``expand``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import raster
from pipeline.chip_format import MASK_NODATA, read_stats
from pipeline.config import (
    DataParams,
    LabelConvention,
    SceneSource,
    TileSetSource,
    TileSetSplit,
)

log = logging.getLogger(__name__)

PREPARED_DIR = "tilesets"  # below tile.out_dir: <set>/<stem>.vrt (and <stem>.labels.tif)
SPLITS = ("train", "val", "test")


class TileSetError(ValueError):
    """A tile set cannot be used; the message names the file or the params entry."""


# ----------------------------------------------------------------------------- finding tiles
def find_tiles(ts: TileSetSource) -> list[tuple[str, Path, Path]]:
    """(stem, image, truth) of every image matching ``ts.images``, sorted by stem: the truth
    is the tile's label image, or its road vectors for a set with ``roads``."""
    root = Path(ts.root)
    if not root.is_dir():
        raise TileSetError(f"{root}: tile set {ts.name!r}: folder not found (data.scenes root)")
    prefix, suffix = Path(ts.images).name.split("*")
    tiles: dict[str, tuple[Path, Path]] = {}
    image_of: dict[Path, Path] = {}  # label image -> the image it was matched to
    for image in sorted(root.glob(ts.images)):
        stem = image.name[len(prefix) : len(image.name) - len(suffix)]
        label = root / ts.truth.format(stem=stem, dir=_dir(root, image))
        if not label.is_file():
            what = "label image" if ts.labels is not None else "road file"
            field = "labels" if ts.labels is not None else "roads"
            raise TileSetError(
                f"{image}: no {what} {label} (tile set {ts.name!r}, {field} {ts.truth!r})"
            )
        if ts.centrelines is not None and not _centreline_path(ts, stem, image).is_file():
            raise TileSetError(
                f"{image}: no centreline image {_centreline_path(ts, stem, image)} (tile set "
                f"{ts.name!r}, centrelines {ts.centrelines!r})"
            )
        if ts.pansharpen is not None and not _mul_path(ts, stem, image).is_file():
            raise TileSetError(
                f"{image}: no multispectral image {_mul_path(ts, stem, image)} (tile set "
                f"{ts.name!r}, pansharpen.mul {ts.pansharpen.mul!r})"
            )
        if stem in tiles:
            raise TileSetError(f"{image}: tile name {stem!r} also names {tiles[stem][0]}")
        # one label image for two images: a stray copy of a tile beside its original would put
        # the same truth in two splits (road files may be shared: each tile takes its bounds)
        if ts.labels is not None and label in image_of:
            raise TileSetError(
                f"{image}: its truth {label} is also that of {image_of[label]} (tile set "
                f"{ts.name!r}): remove the extra image or narrow images"
            )
        image_of[label] = image
        tiles[stem] = (image, label)
    if not tiles:
        raise TileSetError(f"{root}: no image matches {ts.images!r} (tile set {ts.name!r})")
    return [(stem, image, label) for stem, (image, label) in sorted(tiles.items())]


def _warn_of_unmatched_case(ts: TileSetSource, matched: set[Path]) -> None:
    """Files the images pattern misses only by case (b.PNG beside a.png, .TIF among .tif):
    left out of the set, said once with examples."""
    root, pattern = Path(ts.root), Path(ts.images)
    missed = sorted(
        p
        for p in root.glob(str(pattern.parent / "*"))
        if p not in matched and fnmatch.fnmatchcase(p.name.lower(), pattern.name.lower())
    )
    if missed:
        log.warning(
            "tile set %s: %d file(s) differ from images %r only in case and are left out, "
            "e.g. %s; rename them or widen the pattern",
            ts.name,
            len(missed),
            ts.images,
            ", ".join(str(p) for p in missed[:3]),
        )


def _dir(root: Path, image: Path) -> str:
    """The folder of ``image`` below ``root``, as ``{dir}`` in a pattern ('.' at the root)."""
    return image.parent.relative_to(root).as_posix()


def _mul_path(ts: TileSetSource, stem: str, image: Path) -> Path:
    """The multispectral image of a pansharpened tile set's tile."""
    assert ts.pansharpen is not None
    root = Path(ts.root)
    return root / ts.pansharpen.mul.format(stem=stem, dir=_dir(root, image))


def _centreline_path(ts: TileSetSource, stem: str, image: Path) -> Path:
    """The centreline image of a tile of a set with ``centrelines``."""
    assert ts.centrelines is not None
    root = Path(ts.root)
    return root / ts.centrelines.format(stem=stem, dir=_dir(root, image))


def assign_splits(stems: list[str], split: TileSetSplit) -> dict[str, str]:
    """Split of each tile: the named ones, then ``round(fraction * tiles)`` test and val tiles
    drawn in the order of a seeded hash of their names, the rest train."""
    unknown = sorted(set(split.val + split.test) - set(stems))
    if unknown:
        raise TileSetError(f"split names tiles that the tile set does not have: {unknown}")
    assigned = {s: "val" for s in split.val} | {s: "test" for s in split.test}
    rest = sorted(
        (s for s in stems if s not in assigned),
        key=lambda s: hashlib.sha256(f"{split.seed}:{s}".encode()).hexdigest(),
    )
    n_test = max(0, round(split.test_fraction * len(stems)) - len(split.test))
    n_val = max(0, round(split.val_fraction * len(stems)) - len(split.val))
    for i, stem in enumerate(rest):
        assigned[stem] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assigned


def _warn_of_empty_splits(split: TileSetSplit, splits: dict[str, str]) -> None:
    """Say when a val or test fraction is too small to give one tile (a few tiles at 0.1)."""
    for name, fraction in (("val", split.val_fraction), ("test", split.test_fraction)):
        if fraction > 0 and name not in splits.values():
            log.warning(
                "%d tiles: %s_fraction %g gives no %s tile (round(%g x %d) = 0); name one in "
                "split.%s",
                len(splits),
                name,
                fraction,
                name,
                fraction,
                len(splits),
                name,
            )


def tile_scenes(ts: TileSetSource, prepared_dir: Path) -> list[SceneSource]:
    """The scenes of a tile set, pointing at its prepared files below ``prepared_dir``."""
    tiles = find_tiles(ts)
    splits = tile_splits(ts, [stem for stem, _, _ in tiles])
    folder = Path(prepared_dir) / ts.name
    return [
        SceneSource(
            name=f"{ts.name}_{stem}",
            image=folder / f"{stem}.vrt",
            split=splits[stem],
            transfer=ts.transfer,
            **(
                {"labels": folder / f"{stem}.labels.tif"}
                if ts.labels is not None
                else {"roads": truth, "label_offset_m": ts.label_offset_m}
            ),
            **(
                {"centrelines": folder / f"{stem}.centrelines.tif"}
                if ts.centrelines is not None
                else {}
            ),
        )
        for stem, _, truth in tiles
    ]


def tile_splits(ts: TileSetSource, stems: list[str]) -> dict[str, str]:
    """Split of each tile: every tile ``test`` for a transfer set, else ``assign_splits``."""
    if ts.transfer:
        return dict.fromkeys(stems, "test")
    return assign_splits(stems, ts.split)


def entry_scene_names(entry: SceneSource | TileSetSource) -> list[str]:
    """The scene names a ``data.scenes`` entry becomes (a tile set: one per tile)."""
    if isinstance(entry, TileSetSource):
        return [f"{entry.name}_{stem}" for stem, _, _ in find_tiles(entry)]
    return [entry.name]


def expand(data: DataParams, prepared_dir: Path, *, check_prepared: bool = True) -> DataParams:
    """``data`` with every tile set replaced by its tiles' scenes (prepared by the tile stage:
    with ``check_prepared``, a missing prepared file is an error that says so)."""
    scenes: list[SceneSource] = []
    for entry in data.scenes:
        if not isinstance(entry, TileSetSource):
            scenes.append(entry)
            continue
        for scene in tile_scenes(entry, prepared_dir):
            prepared = [scene.image, scene.labels, scene.centrelines]
            missing = [p for p in prepared if p is not None and not p.exists()]
            if check_prepared and missing:
                raise TileSetError(
                    f"{missing[0]}: tile set {entry.name!r} is not prepared; run `pipeline tile`"
                )
            scenes.append(scene)
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise TileSetError(f"scene names clash after expanding tile sets: {dup[:5]}")
    return data.model_copy(update={"scenes": scenes})


def has_tilesets(data: DataParams) -> bool:
    return any(isinstance(e, TileSetSource) for e in data.scenes)


# ----------------------------------------------------------------------------- labels
LABEL_HINT = "set the tile set's label (road, background, edge_threshold) in params.yaml"


def road_mask(
    label: np.ndarray,
    conv: LabelConvention,
    valid: np.ndarray,
    path: Path,
    hint: str = LABEL_HINT,
    where: str = "",
) -> np.ndarray:
    """uint8 (H, W), 1 where ``label`` (C, H, W) shows road in convention ``conv``, else 0.

    A valid pixel whose colour is neither road nor background (nor, with an edge threshold,
    between the two) raises TileSetError naming ``path`` (and ``where``: the part of it
    ``label`` is, e.g. "rows 0-1023"), the colours found and ``hint``.
    """
    k = len(conv.road)
    if k > 1 and label.shape[0] < k:
        raise TileSetError(
            f"{path}: {label.shape[0]} band(s), but the label convention gives {k} values "
            f"(road {conv.road}), one value is for a single-band label; {hint}"
        )
    bands = label[:k] if k > 1 else label[:1]
    road = np.asarray(conv.road, np.float32)[:, None, None]
    back = np.asarray(conv.background, np.float32)[:, None, None]
    if conv.edge_threshold is None:
        is_road = (bands == road).all(axis=0)
        known = is_road | (bands == back).all(axis=0)
    else:
        d = road - back
        offset = bands.astype(np.float32) - back
        t = (offset * d).sum(axis=0) / float((d * d).sum())
        off_line = np.sqrt(((offset - t * d) ** 2).sum(axis=0)) > 0.25 * math.sqrt((d * d).sum())
        known = ~off_line & (t > -0.05) & (t < 1.05)
        is_road = t >= conv.edge_threshold
    if k == 1 and label.shape[0] > 1:
        same = (label[1:] == label[:1]).all(axis=0)
        known &= same  # a grey convention on a colour label: every band must agree
    bad = valid & ~known
    if bad.any():
        colours = np.unique(label[:, bad].T, axis=0)[:5].tolist()
        raise TileSetError(
            f"{path}{f' ({where})' if where else ''}: {int(bad.sum())} pixels "
            f"({100 * bad.mean():.2f} %{f' of {where}' if where else ''}) have label colours "
            f"outside the declared convention (road {conv.road}, background {conv.background}"
            f"{'' if conv.edge_threshold is None else ', edges between'}), e.g. {colours}; "
            f"{hint}"
        )
    return is_road.astype(np.uint8)


# ----------------------------------------------------------------------------- preparing
def prepare_tile(
    ts: TileSetSource, stem: str, image: Path, truth: Path, out: Path, osm: Any = None
) -> dict:
    """Write ``<stem>.vrt`` (and, from a label image, ``<stem>.labels.tif``, and the
    ``<stem>.centrelines.tif`` of a set with ``centrelines``) of one tile into
    ``out``; return its area in km², its pixel and valid pixel counts, and its road pixels
    (from a label image) or road km (from road vectors, under the OSM rules ``osm``, the
    ``data.osm`` the tile stage burns them with)."""
    info = raster.raster_info(image)
    crs, transform = _grid(ts, image, info)
    fill = _fill_colour(ts, image, info)
    valid = _tile_validity(image, info, fill)
    if ts.labels is not None:
        masks = {"labels": _label_tile(ts, image, info, truth, valid)}
        roads = dict(road_px=int((masks["labels"] == 1).sum()))
        if ts.centrelines is not None:
            centres = _centreline_path(ts, stem, image)
            masks["centrelines"] = _label_tile(ts, image, info, centres, valid, "centrelines")
        for kind, mask in masks.items():
            raster.write_geotiff(
                out / f"{stem}.{kind}.tif", mask, crs=crs, transform=transform, nodata=MASK_NODATA
            )
    else:
        roads = dict(road_km=_road_km(truth, info, osm, ts.label_offset_m))
    if ts.pansharpen is not None:  # the fused bands, on the panchromatic grid
        from pipeline.pansharpen import pansharpen

        pansharpen(
            image,
            _mul_path(ts, stem, image),
            out / f"{stem}.vrt",
            bands=ts.pansharpen.bands,
            nodata=fill[0] if fill is not None else None,
            overwrite=True,
        )
    else:
        own_nodata = [info.nodata] * info.count if info.nodata is not None else None
        raster.write_vrt(
            out / f"{stem}.vrt",
            info,
            crs=crs,
            transform=transform,
            nodata=fill or own_nodata,
            source_mask=info.has_mask and fill is None,
        )
    mpp = info.metres_per_pixel if info.crs is not None else ts.pixel_size_m
    return dict(
        area_km2=info.width * info.height * (mpp or 0.0) ** 2 / 1e6,
        pixels=info.width * info.height,
        valid_px=int(valid.sum()),
        **roads,
    )


def _grid(ts: TileSetSource, image: Path, info: raster.RasterInfo) -> tuple[Any, Any]:
    """(CRS, transform) of a tile: its own, or a local grid of the declared pixel size for an
    image without georeferencing (which road vectors cannot be placed on)."""
    if info.crs is not None:
        return info.crs, info.transform
    if ts.pansharpen is not None:
        raise TileSetError(
            f"{image}: no CRS; a panchromatic image is fused with its multispectral image on "
            f"the ground (tile set {ts.name!r})"
        )
    if ts.roads is not None:
        raise TileSetError(
            f"{image}: no georeferencing, so the road vectors of tile set {ts.name!r} cannot be "
            "placed on it; give the tiles a CRS (gdal_translate -a_srs -a_ullr) or labels"
        )
    if ts.pixel_size_m is None:
        raise TileSetError(
            f"{image}: no georeferencing; give the tile set {ts.name!r} a pixel_size_m"
        )
    return raster.local_grid(ts.pixel_size_m, info.height)


def _tile_validity(image: Path, info: raster.RasterInfo, fill: list[int] | None) -> np.ndarray:
    """A tile's valid pixels: its own (nodata, an alpha band, a mask) and, with the tile
    set's ``fill``, those not of the fill colour. A tile whose own validity leaves pixels out
    and a fill is refused: the prepared VRT carries one of them (an opaque alpha is no
    matter)."""
    own = raster.read_valid_mask(image)
    if fill is None:
        return own
    pixels = raster.read_all(image)[: info.count]  # an alpha band left out
    is_fill = (pixels == np.asarray(fill, pixels.dtype)[:, None, None]).all(axis=0)
    if (~own & ~is_fill).any():  # its own nodata the fill colour (SpaceNet's 0) is no matter
        what = f"nodata {info.nodata:g}" if info.nodata is not None else "alpha band or mask"
        raise TileSetError(
            f"{image}: its {what} leaves out pixels that are not of the fill colour {fill}: "
            "drop the tile set's `fill` (the tile's own validity is used) or the tile's own"
        )
    return ~is_fill


def _fill_colour(ts: TileSetSource, image: Path, info: raster.RasterInfo) -> list[int] | None:
    """The tile set's fill colour, one value per band of ``image`` (None: no fill)."""
    if ts.fill is None:
        return None
    if len(ts.fill) not in (1, info.count):
        raise TileSetError(
            f"{image}: {info.count} bands, but fill {ts.fill} gives {len(ts.fill)} values"
        )
    return ts.fill * info.count if len(ts.fill) == 1 else list(ts.fill)


def _label_tile(
    ts: TileSetSource,
    image: Path,
    info: raster.RasterInfo,
    label: Path,
    valid: np.ndarray,
    kind: str = "labels",
) -> np.ndarray:
    """The tile's labels (or its centrelines, ``kind``): road 1, background 0, nodata where
    the image is fill."""
    linfo = raster.raster_info(label)
    if (linfo.width, linfo.height) != (info.width, info.height):
        what = "label" if kind == "labels" else "centreline image"
        raise TileSetError(
            f"{label}: {what} is {linfo.width}x{linfo.height}, its image {image} is "
            f"{info.width}x{info.height}"
        )
    road = road_mask(raster.read_colours(label), ts.label, valid, label)
    return np.where(valid, road, MASK_NODATA).astype(np.uint8)


def _road_km(
    roads: Path, info: raster.RasterInfo, osm: Any, offset_m: tuple[float, float] | None
) -> float:
    """Kilometres of road centreline inside the tile, read as the tile stage reads them (0 for
    an empty road file: a tile without roads, as SpaceNet ships them)."""
    from shapely.geometry import box

    from pipeline import vectors
    from pipeline.ground import ground_lengths

    if vectors.is_empty(roads):  # an unreadable file: load_road_lines names it
        return 0.0
    lines = vectors.load_road_lines(
        roads, info.crs.to_wkt(), bounds=info.bounds, osm=osm, offset_m=offset_m
    )
    inside = lines.geometry.intersection(box(*info.bounds))
    inside = inside[~inside.is_empty]
    return round(sum(ground_lengths(list(inside), info.crs)) / 1000.0, 6)


def prepare(
    data: DataParams, prepared_dir: Path, *, workers: int = 1, progress: bool = True
) -> tuple[DataParams, dict[str, dict]]:
    """Prepare every tile of every tile set (in parallel, a tile per task, in bounded memory);
    return ``data`` expanded to scenes and a summary per tile set (``summary``)."""
    from pipeline.parallel import map_ordered

    summaries: dict[str, dict] = {}
    for ts in (e for e in data.scenes if isinstance(e, TileSetSource)):
        out = Path(prepared_dir) / ts.name
        out.mkdir(parents=True, exist_ok=True)
        tiles = find_tiles(ts)
        splits = tile_splits(ts, [stem for stem, _, _ in tiles])
        # said once, by the tile stage (find_tiles and tile_splits run in every stage)
        _warn_of_unmatched_case(ts, {image for _, image, _ in tiles})
        if not ts.transfer:
            _warn_of_empty_splits(ts.split, splits)
        results = map_ordered(
            prepare_tile,
            [(ts, stem, image, label, out, data.osm) for stem, image, label in tiles],
            workers=min(workers, len(tiles)),
            total=len(tiles),
            desc=f"prepare {ts.name}",
            unit="tile",
            progress=progress,
        )
        per_tile = [(splits[stem], r) for (stem, _, _), r in zip(tiles, results, strict=True)]
        summaries[ts.name] = summary(ts, per_tile)
        _remove_removed_tiles(out, {stem for stem, _, _ in tiles})
    return expand(data, prepared_dir), summaries


PREPARED_SUFFIXES = (".vrt", ".labels.tif", ".centrelines.tif")  # what prepare_tile writes


def _remove_removed_tiles(out: Path, stems: set[str]) -> None:
    """The prepared files of tiles no longer in the set (removed from its folder since the
    last ``pipeline tile``), which a ``predict <set>/*.vrt`` would still pick up."""
    for path in out.iterdir():
        suffix = next((x for x in PREPARED_SUFFIXES if path.name.endswith(x)), None)
        if suffix is not None and path.name[: -len(suffix)] not in stems:
            path.unlink()


def summary(ts: TileSetSource, per_tile: list[tuple[str, dict[str, Any]]]) -> dict:
    """What the model card, the MLflow run and stats.json say of a tile set (not every tile)."""
    valid = sum(r["valid_px"] for _, r in per_tile)
    return dict(
        root=str(ts.root),
        images=ts.images,
        **({"labels": ts.labels} if ts.labels is not None else {"roads": ts.roads}),
        **({"pansharpen": ts.pansharpen.model_dump()} if ts.pansharpen is not None else {}),
        tiles=len(per_tile),
        area_km2=round(sum(r["area_km2"] for _, r in per_tile), 6),
        splits={s: sum(1 for split, _ in per_tile if split == s) for s in SPLITS},
        nodata_fraction=round(1 - valid / max(sum(r["pixels"] for _, r in per_tile), 1), 4),
        **(
            {"road_km": round(sum(r["road_km"] for _, r in per_tile), 3)}
            if ts.roads is not None
            else {"road_fraction": round(sum(r["road_px"] for _, r in per_tile) / max(valid, 1), 4)}
        ),
    )


def read_summaries(stats_path: Path) -> dict[str, dict]:
    """The tile set summaries in the tile stage's stats.json ({} when there is none)."""
    return read_stats(Path(stats_path).parent, required=False).get("tilesets", {})


def describe(data: DataParams, tilesets: dict[str, dict] | None = None) -> list[str]:
    """One line per ``data.scenes`` entry: a scene's name and split, or a tile set's summary
    (from ``tilesets``, the tile stage's stats.json, else counted from the file names)."""
    lines = []
    for entry in data.scenes:
        if not isinstance(entry, TileSetSource):
            centres = f", truth network from {entry.centrelines}" if entry.centrelines else ""
            lines.append(f"{entry.name} ({'transfer' if entry.transfer else entry.split}){centres}")
            continue
        s = (tilesets or {}).get(entry.name)
        if s is None:
            stems = [stem for stem, _, _ in find_tiles(entry)]
            splits = tile_splits(entry, stems)
            s = {"tiles": len(stems), "splits": {k: list(splits.values()).count(k) for k in SPLITS}}
        area = f", {s['area_km2']:g} km²" if "area_km2" in s else ""
        if "road_km" in s:
            area += f", {s['road_km']:g} km of road"
        if entry.pansharpen is not None:
            mul = ", ".join(f"{k}={v}" for k, v in entry.pansharpen.bands.items())
            area += f", pansharpened ({mul} of {entry.pansharpen.mul})"
        if entry.centrelines is not None:  # what its APLS and TOPO are scored against
            area += f", truth networks from {entry.centrelines}"
        counts = " / ".join(f"{s['splits'][k]} {k}" for k in SPLITS)
        if entry.transfer:
            counts = "all held out: transfer"
        lines.append(
            f"{entry.name}: tile set {Path(entry.root) / entry.images}, {s['tiles']} tiles{area} "
            f"({counts})"
        )
    return lines
