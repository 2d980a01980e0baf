"""Rasters that are not probabilities, as ``pipeline network`` inputs.

``pipeline network`` traces a probability raster. Two kinds of raster users bring to it are
not one as they ship:

- a road **label mask** (Massachusetts Roads' 0/255 TIFFs, DeepGlobe's white-on-black PNGs, a
  0/1 mask of one's own), whose truth network ``pipeline score-network`` scores a prediction
  against (DeepGlobe's APLS is scored on the skeleton of its masks): ``--labels`` reads its
  first band scaled by its largest value, road where that is at least one half;
- a tile **without georeferencing** whose pixel size is known (``--pixel-size``): the network's
  lengths and cleaning distances are then metres, as for predict's output of such a tile.

Each becomes a VRT beside the run (the source by absolute path, its pixels untouched) that
declares the scale and the pixel size; the network is built from it as from any raster.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import raster

LABEL_THRESHOLD = 0.5  # road where the mask is at least half its largest value


class LabelMaskError(ValueError):
    """A label mask that cannot be traced; the message names the file."""


def network_view(
    path: str | Path, folder: str | Path, *, labels: bool, pixel_size_m: float | None
) -> Path:
    """``path`` itself, or a VRT in ``folder`` that reads it as a probability raster: a label
    mask's band 1 scaled to 0..1 by its largest value (``labels``), a raster without a CRS
    with its ``pixel_size_m`` declared (the ``pixel_size_m`` tag predict writes). The VRT keeps
    the source's tags (predict's ``threshold``), band scale and offset (predict's 1/254) and
    dataset mask."""
    path = Path(path)
    info = raster.raster_info(path)
    declare = pixel_size_m is not None and info.crs is None
    if not labels and not declare:
        return path
    source = raster.band_scaling(path)
    scaling = (1.0 / _largest_label(path), 0.0) if labels else (source.scale, source.offset)
    tags = raster.raster_tags(path)
    if declare:
        tags["pixel_size_m"] = f"{pixel_size_m:g}"
    return raster.write_vrt(
        Path(folder) / f"{path.stem}.network-input.vrt",
        info,
        crs=info.crs,
        transform=info.transform,
        nodata=[info.nodata] if info.nodata is not None else None,
        bands=[1],
        scaling=scaling,
        tags=tags,
        source_mask=info.has_mask,
    )


def _largest_label(path: Path) -> float:
    """The largest value of a grey label mask's first band, the value of road."""
    if raster.is_colour(path):
        raise LabelMaskError(
            f"{path}: a colour mask (its bands differ): --labels reads grey masks, or white "
            "roads on black stored as RGB; for roads in a colour (red on white), name it as a "
            "tile set's labels convention and let the tile stage convert it"
        )
    largest = raster.band_maximum(path)
    if not largest > 0:
        raise LabelMaskError(f"{path}: no road in the mask (its largest value is {largest:g})")
    return largest
