"""Pan-sharpening: multispectral bands (MUL) sharpened onto the grid of their panchromatic band
(PAN) with GDAL's pansharpening (weighted Brovey, a ``VRTPansharpenedDataset``).

Very-high-resolution satellite imagery ships as a PAN band (WorldView-3: 0.3 m) and MUL bands
four times coarser (1.24 m); SpaceNet ships both, and a road model trained on 0.3-0.5 m aerial
or pan-sharpened imagery needs them fused. ``pipeline pansharpen PAN MUL -o out.tif`` writes the
chosen MUL bands on the PAN grid, named (band descriptions and colour interpretation) so that
the tile stage and predict pick them by name: a Cloud Optimised GeoTIFF, or the VRT itself
(``-o out.vrt``: computed as it is read, no copy). GDAL does the work block by block, so
memory stays flat in the image size.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from pipeline import raster
from pipeline.atomic import atomic_path

# the bands a road model reads, as the tile stage and predict name them
DEFAULT_BANDS = ("red", "green", "blue")
_COLOUR_INTERP = {"red": "Red", "green": "Green", "blue": "Blue"}
_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}


class PansharpenError(ValueError):
    """PAN and MUL that cannot be fused; the message names the file and the problem."""


def pick_bands(mul: Path, bands: list[int] | dict[str, int] | None) -> dict[str, int]:
    """Name -> 1-based MUL band: as declared (``red=5,green=3,blue=2``; a plain list takes the
    bands' own names), else red, green and blue found by name in the file (descriptions, or a
    colour interpretation GDAL did not make up: ``raster.band_names``)."""
    names = raster.band_names(mul)
    if isinstance(bands, dict):
        picked = dict(bands)
    elif bands:
        picked = {names[i - 1] if 0 < i <= len(names) and names[i - 1] else f"band{i}": i
                  for i in bands}  # fmt: skip
    else:
        picked = {n: names.index(n) + 1 for n in DEFAULT_BANDS if n in names}
        if len(picked) < len(DEFAULT_BANDS):
            raise PansharpenError(
                f"{mul}: its bands do not say which are red, green and blue ("
                + ", ".join(f"{i}={n or '?'}" for i, n in enumerate(names, start=1))
                + "); name them, e.g. --bands red=5,green=3,blue=2 (WorldView-3's 8 bands)"
            )
    asked = len(bands) if bands else len(DEFAULT_BANDS)
    if len(picked) < asked:
        raise PansharpenError(
            f"{mul}: bands {bands} give {len(picked)} distinct names for {asked} bands; name "
            "each once (red=5,green=3,blue=2)"
        )
    bad = {n: i for n, i in picked.items() if not 0 < i <= len(names)}
    if bad:
        raise PansharpenError(f"{mul}: has {len(names)} bands, no band {bad}")
    return picked


def check_pair(pan: Path, mul: Path) -> tuple[raster.RasterInfo, raster.RasterInfo]:
    """The PAN and MUL rasters' descriptions, or a PansharpenError naming the file that cannot
    be used: a PAN of several bands, either without CRS, CRSs that differ, a PAN not finer
    than the MUL, footprints that do not overlap."""
    p, m = raster.raster_info(pan), raster.raster_info(mul)
    if p.count != 1:
        raise PansharpenError(f"{pan}: {p.count} bands; the panchromatic image has one")
    for info in (p, m):
        if info.crs is None:
            raise PansharpenError(f"{info.path}: no CRS; PAN and MUL are fused on the ground")
    if p.crs != m.crs:
        raise PansharpenError(
            f"{mul}: CRS {m.crs} differs from the panchromatic {pan}'s {p.crs}; warp one first"
        )
    if p.res[0] >= m.res[0]:
        raise PansharpenError(
            f"{pan}: pixel {p.res[0]:g} is not finer than the MUL's {m.res[0]:g} ({mul}): "
            "PAN and MUL swapped?"
        )
    pl, pb, pr, pt = p.bounds
    ml, mb, mr, mt = m.bounds
    if pl >= mr or ml >= pr or pb >= mt or mb >= pt:
        raise PansharpenError(f"{mul}: does not overlap the panchromatic {pan}")
    return p, m


def brovey_weights(names: list[str]) -> list[float]:
    """The weights of the pseudo-panchromatic band Brovey divides by: red, green and blue
    alike when any is kept, so that keeping an extra band (nir) leaves their colours as they
    are; else every band alike."""
    visible = [n in _COLOUR_INTERP for n in names]
    if not any(visible):
        return [1.0 / len(names)] * len(names)
    return [1.0 / sum(visible) if v else 0.0 for v in visible]


def pansharpen_vrt(
    pan: Path, mul: Path, bands: dict[str, int], dtype: str, nodata: float | None
) -> str:
    """The ``VRTPansharpenedDataset`` XML of ``bands`` of ``mul`` on ``pan``'s grid, each
    output band named (description, colour interpretation) and with ``nodata``."""
    gdal_type = _GDAL_TYPES.get(dtype)
    if gdal_type is None:
        raise PansharpenError(f"{mul}: sample type {dtype} (pansharpen takes {list(_GDAL_TYPES)})")
    if nodata is not None and dtype != "float32" and not float(nodata).is_integer():
        raise PansharpenError(
            f"{pan}: nodata {nodata} cannot mark {dtype} pixels; give --nodata (e.g. 0)"
        )
    nodata_xml = "" if nodata is None else f"<NoDataValue>{nodata:g}</NoDataValue>"

    def source(path: Path, band: int) -> str:
        name = escape(str(Path(path).resolve()))
        return (
            f'<SourceFilename relativeToVRT="0">{name}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
        )

    out_bands, spectral = [], []
    for i, (name, band) in enumerate(bands.items(), start=1):
        colour = _COLOUR_INTERP.get(name)
        out_bands.append(
            f'  <VRTRasterBand dataType="{gdal_type}" band="{i}" '
            f'subClass="VRTPansharpenedRasterBand"><Description>{escape(name)}</Description>'
            + (f"<ColorInterp>{colour}</ColorInterp>" if colour else "")
            + f"{nodata_xml}</VRTRasterBand>"
        )
        spectral.append(f'    <SpectralBand dstBand="{i}">{source(mul, band)}</SpectralBand>')
    weights = ",".join(f"{w:.10g}" for w in brovey_weights(list(bands)))
    options = (["    <NoData>" + f"{nodata:g}" + "</NoData>"] if nodata is not None else []) + [
        f"    <AlgorithmOptions><Weights>{weights}</Weights></AlgorithmOptions>",
        f"    <PanchroBand>{source(pan, 1)}</PanchroBand>",
        *spectral,
    ]
    return "\n".join(
        [
            '<VRTDataset subClass="VRTPansharpenedDataset">',
            *out_bands,
            "  <PansharpeningOptions>",
            *options,
            "  </PansharpeningOptions>",
            "</VRTDataset>",
            "",
        ]
    )


def pansharpen(
    pan: str | Path,
    mul: str | Path,
    out: str | Path,
    *,
    bands: list[int] | dict[str, int] | None = None,
    nodata: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``mul``'s ``bands`` (``pick_bands``) sharpened onto ``pan``'s grid to ``out``: a
    COG, or the VRT for a ``.vrt`` name. ``nodata`` (default: PAN's) marks pixels outside the
    imagery. Nothing appears at ``out`` unless the whole output was written."""
    pan, mul, out = Path(pan), Path(mul), Path(out)
    if out.suffix.lower() not in (".tif", ".tiff", ".vrt"):
        raise PansharpenError(f"{out}: write a .tif (a COG) or a .vrt")
    p, m = check_pair(pan, mul)
    picked = pick_bands(mul, bands)
    xml = pansharpen_vrt(pan, mul, picked, m.dtype, nodata if nodata is not None else p.nodata)
    with atomic_path(out, overwrite=overwrite) as tmp:
        if out.suffix.lower() == ".vrt":
            tmp.write_text(xml)
        else:
            _write_cog(xml, tmp)
    return out


def _write_cog(xml: str, out: Path) -> None:
    """Copy the pansharpened VRT (its XML, which GDAL opens as it is) into a COG at ``out``."""
    with raster.gdal_cache_limit():
        try:
            raster.copy_to_cog(xml, out)
        except OSError as e:  # rasterio's RasterioIOError is one
            raise raster.write_error(out, e) from e
