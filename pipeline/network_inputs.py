"""Rasters that are not probabilities, as ``pipeline network`` inputs.

``pipeline network`` traces a probability raster. Two kinds of raster users bring to it are
not one as they ship:

- a road **label mask** (Massachusetts Roads' 0/255 TIFFs, DeepGlobe's white-on-black PNGs, a
  0/1 mask of one's own), whose truth network ``pipeline score-network`` scores a prediction
  against (DeepGlobe's APLS is scored on the skeleton of its masks): ``--labels`` reads its
  first band scaled by its largest value, road where that is at least one half; a mask that
  marks road in a **colour** (RoadNet's red on white) is read under a ``LabelConvention``, as
  the tile stage reads a tile set's labels (``--road-colour``);
- a tile **without georeferencing** whose pixel size is known (``--pixel-size``): the network's
  lengths and cleaning distances are then metres, as for predict's output of such a tile.

Each becomes a VRT beside the run (the source by absolute path, its pixels untouched) that
declares the scale and the pixel size, or, for a colour mask, a 0/1 GeoTIFF of its road; the
network is built from it as from any raster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import raster
from pipeline.config import LabelConvention
from pipeline.tilesets import TileSetError, road_mask

LABEL_THRESHOLD = 0.5  # road where the mask is at least half its largest value
COLOUR_STRIP_ROWS = 1024  # rows of a colour mask converted at once: ~0.5 GB at 10k px wide


COLOUR_HINT = (
    "give the mask's colours: --road-colour and --background-colour (one value for a one-band "
    "mask, R,G,B for a colour or JPEG one)"
)


class LabelMaskError(ValueError):
    """A label mask that cannot be traced; the message names the file."""


def network_view(
    path: str | Path,
    folder: str | Path,
    *,
    labels: bool,
    pixel_size_m: float | None,
    colours: LabelConvention | None = None,
    grid_of: str | Path | None = None,
) -> Path:
    """``path`` itself, or a VRT in ``folder`` that reads it as a probability raster: a label
    mask's band 1 scaled to 0..1 by its largest value (``labels``), a raster without a CRS
    with its ``pixel_size_m`` declared (the ``pixel_size_m`` tag predict writes), a mask placed
    on the grid of the image it was drawn on (``grid_of``: RoadNet's PNG masks beside their
    GeoTIFF). The VRT keeps the source's tags (predict's ``threshold``), band scale and offset
    (predict's 1/254) and dataset mask. A mask whose road is a colour (``colours``) becomes a
    0/1 GeoTIFF instead."""
    path = Path(path)
    info = raster.raster_info(path)
    if grid_of is not None and pixel_size_m is not None:
        raise LabelMaskError(
            f"{path}: --grid-of gives it the image's grid and pixel size; --pixel-size is for "
            "a raster left without one: pass one of them"
        )
    crs, transform = _grid(path, info, grid_of)
    declare = pixel_size_m is not None and crs is None
    size_tag = {"pixel_size_m": f"{pixel_size_m:g}"} if declare else {}
    if colours is not None:
        return _colour_mask_view(path, Path(folder), info, colours, (crs, transform), size_tag)
    if not labels and not size_tag and grid_of is None:
        return path
    source = raster.band_scaling(path)
    scaling = (1.0 / _largest_label(path), 0.0) if labels else (source.scale, source.offset)
    return raster.write_vrt(
        Path(folder) / f"{path.stem}.network-input.vrt",
        info,
        crs=crs,
        transform=transform,
        nodata=[info.nodata] if info.nodata is not None else None,
        bands=[1],
        scaling=scaling,
        tags={**raster.raster_tags(path), **size_tag},
        source_mask=info.has_mask,
    )


def _grid(path: Path, info: raster.RasterInfo, grid_of: str | Path | None) -> tuple[Any, Any]:
    """(CRS, transform) the raster is read on: its own, or those of ``grid_of``, a raster of
    the same size."""
    if grid_of is None:
        return info.crs, info.transform
    if info.crs is not None:
        raise LabelMaskError(f"{path}: has a CRS of its own; --grid-of places rasters without one")
    grid = raster.raster_info(grid_of)
    if grid.crs is None:
        raise LabelMaskError(f"{grid_of} (--grid-of): no CRS of its own to place {path} on")
    if (grid.width, grid.height) != (info.width, info.height):
        raise LabelMaskError(
            f"{path}: {info.width}x{info.height} pixels, but {grid_of} (--grid-of) is "
            f"{grid.width}x{grid.height}: a mask is placed on the grid of an image of its size"
        )
    return grid.crs, grid.transform


def _largest_label(path: Path) -> float:
    """The largest value of a grey label mask's first band, the value of road."""
    if raster.is_colour(path):
        raise LabelMaskError(
            f"{path}: a colour mask (its bands differ): --labels reads grey masks, or white "
            "roads on black stored as RGB; for roads in a colour, name it: --road-colour "
            "255,0,0 (red on white)"
        )
    largest = raster.band_maximum(path)
    if not largest > 0:
        raise LabelMaskError(f"{path}: no road in the mask (its largest value is {largest:g})")
    return largest


def _colour_mask_view(
    path: Path,
    folder: Path,
    info: raster.RasterInfo,
    colours: LabelConvention,
    grid: tuple[Any, Any],
    tags: dict[str, str],
) -> Path:
    """A 0/1 uint8 GeoTIFF in ``folder`` of where ``path`` shows road under ``colours`` (its
    anti-aliased edges cut at the convention's edge threshold), on ``grid`` (CRS, transform).
    Read and written ``COLOUR_STRIP_ROWS`` rows at a time, so memory stays flat in the mask's
    size (a mosaicked mask of 10k x 10k px too); its alpha band is left out (it is the dataset
    mask); a colour outside the convention is refused by name, with the rows it was found in."""
    out = folder / f"{path.stem}.network-input.tif"
    found = False
    with (
        raster.quiet_without_crs(grid[0] is not None),
        raster.open_reader(path) as reader,
        raster.block_geotiff(
            out, width=info.width, height=info.height, dtype="uint8", crs=grid[0],
            transform=grid[1], tags=tags,
        ) as writer,
    ):  # fmt: skip
        for row in range(0, info.height, COLOUR_STRIP_ROWS):
            rows = min(COLOUR_STRIP_ROWS, info.height - row)
            bands, valid = raster.read_window(reader, 0, row, info.width, rows)
            strip = f"rows {row}-{row + rows - 1}" if rows < info.height else ""
            try:
                road = road_mask(bands, colours, valid, path, hint=COLOUR_HINT, where=strip)
            except TileSetError as e:
                raise LabelMaskError(str(e)) from None
            road[~valid] = 0
            found = found or bool(road.any())
            writer.write(road, row, 0)
        if not found:
            raise LabelMaskError(f"{path}: no pixel of the road colour {colours.road}")
    return out
