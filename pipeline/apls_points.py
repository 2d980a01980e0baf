"""Where a road network loses APLS: the control points of both directions as point layers.

APLS is one number; a mapping team fixing a network, or comparing two, needs to see where it
is lost. ``pipeline score-network --points out.gpkg`` writes every control point of the truth
(``truth_points``: scored onto the proposal) and of the proposal (``proposal_points``: scored
onto the truth) in the CRS the networks were measured in, with:

- ``snapped``: the other network passes within the snap distance (4 m); a missing point costs
  d = 1 for every pair it starts or ends (a road not found, or a spurious one);
- ``pairs``: the pairs counted from the point (0: left out of a ``--max-sources`` sample,
  or no other point 10 m or more away along the roads from it);
- ``mean_d``: the mean path-length difference of those pairs, 0 (every path kept) to 1
  (missing, or cut off from the rest of the other network); null without pairs (not drawn).

One minus the mean of ``mean_d`` weighted by ``pairs`` is that direction's score. QGIS opens
both layers styled green (kept) to red (missing or cut off).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import CRS

from pipeline.atomic import atomic_path
from pipeline.graph_metrics import ControlPoints
from pipeline.raster import PIXEL_GRID_WKT, quiet_without_crs
from pipeline.vectors import GPKG_FIXED_DATE, fixed_gpkg_timestamp

LAYERS = ("truth_points", "proposal_points")
PIXEL_GRID = CRS.from_wkt(PIXEL_GRID_WKT)


def control_point_frame(points: ControlPoints, crs: Any) -> gpd.GeoDataFrame:
    """One direction's control points as a point layer (module docstring)."""
    mean_d = points.mean_d
    return gpd.GeoDataFrame(
        {
            "snapped": points.snapped.astype(bool),
            "pairs": points.pairs.astype(np.int64),
            "mean_d": pd.array(np.round(mean_d, 6), dtype="Float64"),  # NaN: NULL
        },
        geometry=gpd.points_from_xy(points.xy[:, 0], points.xy[:, 1]),
        crs=crs,
    )


def write_control_points(
    path: str | Path,
    gt_onto_prop: ControlPoints,
    prop_onto_gt: ControlPoints,
    crs: Any,
    *,
    overwrite: bool = False,
    pixel_size_m: float | None = None,
) -> Path:
    """Both directions' control points into one GeoPackage, written beside ``path`` and
    renamed into place, with their default QGIS styles. Without ``crs`` (graphs given
    without one, taken to be in metres) the layers have none; on the pixel grid of networks
    read with ``pixel_size_m`` (``raster.PIXEL_GRID_WKT``) they go back to those networks'
    pixels, without a CRS, so that they overlay them."""
    from pipeline.styles import add_apls_point_styles

    if crs is not None and pixel_size_m and CRS.from_user_input(crs) == PIXEL_GRID:
        gt_onto_prop, prop_onto_gt = (
            dataclasses.replace(p, xy=p.xy / pixel_size_m) for p in (gt_onto_prop, prop_onto_gt)
        )
        crs = None

    with (
        atomic_path(Path(path), overwrite=overwrite) as tmp,
        quiet_without_crs(crs is not None),
        fixed_gpkg_timestamp(),  # the same scores, the same bytes: DVC sees the same output
    ):
        for i, (layer, points) in enumerate(zip(LAYERS, (gt_onto_prop, prop_onto_gt), strict=True)):
            frame = control_point_frame(points, crs)
            frame.to_file(
                tmp, layer=layer, driver="GPKG", geometry_type="Point", mode="a" if i else "w"
            )
        add_apls_point_styles(tmp, LAYERS, stamp=GPKG_FIXED_DATE)
    return Path(path)
