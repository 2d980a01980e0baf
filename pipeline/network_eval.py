"""Score the road network of a predicted scene against the scene's truth (evaluate).

The truth network of a scene with road vectors comes from its centrelines, reprojected to the
image's CRS, clipped to the image's valid area (roads where the image has no pixels cannot be
found) and noded where lines cross (``road_graph.graph_from_lines``). A scene scored against a
label raster (a tile set: Massachusetts Roads, DeepGlobe) has no centrelines: its truth network
is traced from the road mask evaluate scores pixels against (the labels inside the image's
valid area) as ``pipeline network`` traces a probability raster, with the default cleaning
settings whatever the ``network`` section says (so that a sweep of them meets one truth), as
DeepGlobe's road networks are scored on the skeleton of the ground-truth mask; a scene that
ships a centreline raster (``centrelines``: RoadNet's ``centerline.png``) is traced from that
instead, the dataset's own centrelines. The proposal
is the network ``pipeline network`` builds from the stitched prediction with ``params.yaml``
``network`` settings, and, for reference, the raw skeleton graph (``repair: false``). Both
are scored with ``graph_metrics.score_networks``: APLS as SpaceNet defines it (CosmiQ
``apls.py``) and TOPO.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import networkx as nx
import numpy as np
import pyproj

from pipeline import raster, vectors
from pipeline.apls_points import write_control_points
from pipeline.config import (
    DataParams,
    GraphMetricsParams,
    NetworkParams,
    OsmParams,
    SceneSource,
)
from pipeline.graph_metrics import score_networks
from pipeline.network import build_network, repair_network, trace_network
from pipeline.network_io import RoadNetwork, network_frames
from pipeline.road_graph import graph_from_lines, graph_from_network
from pipeline.scene_truth import SceneWindows, TruthError
from pipeline.windows import Rect, blocks

log = logging.getLogger(__name__)

# metrics evaluate reports for a network, as graph_metrics names them
NETWORK_METRICS = (
    "apls",
    "apls_gt_onto_prop",
    "apls_prop_onto_gt",
    "topo_precision",
    "topo_recall",
    "topo_f1",
)
MASK_THRESHOLD = 0.5  # the truth mask written for a label raster is 0 / 1
MASK_NODATA = 255
MASK_BLOCK = 2048  # pixels a side of the truth mask written at a time
# what of the `network` settings a truth mask is traced with: how it is computed, never how it
# is cleaned, so that every proposal of a sweep of the cleaning settings meets the same truth
TRACING_SETTINGS = ("block_size", "skeleton_tile", "skeleton_halo_px", "workers", "seam_margin_px")


def truth_network(scene: SceneSource, data: DataParams | None = None) -> nx.MultiGraph:
    """The scene's road vectors as a graph in the image's CRS, inside its valid area (none for
    an empty road file: a scene without roads). They are read as the pixel truth reads them
    (``vectors.load_road_lines``): the roads layer (an OSM extract's ``lines``), ``data``'s
    OSM rules (default ones without ``data``) and the scene's ``label_offset_m``."""
    if vectors.is_empty(scene.roads):
        return nx.MultiGraph()
    info = raster.raster_info(scene.image)
    if info.crs is None:
        raise vectors.VectorError(f"{scene.image}: no CRS; its road vectors cannot be placed on it")
    roads = vectors.load_road_lines(
        scene.roads,
        pyproj.CRS.from_user_input(info.crs.to_wkt()),
        bounds=info.bounds,
        osm=data.osm if data is not None else OsmParams(),
        offset_m=scene.label_offset_m,
    )
    clipped = roads.clip(raster.valid_footprint(scene.image))
    lines = clipped[clipped.geom_type.isin(["LineString", "MultiLineString"])]
    return graph_from_lines(lines)


def write_truth_mask(scene: SceneSource, data: DataParams, path: Path) -> Path:
    """The scene's pixel truth as evaluate scores it (road 1, background 0, 255 where the image
    or the labels have no data), written block by block as a GeoTIFF on the image's grid; for
    a scene with ``centrelines``, its centreline raster (road = 1) there instead."""
    with contextlib.ExitStack() as stack:
        windows = stack.enter_context(SceneWindows(scene, data))
        info = windows.info
        centres = None
        if scene.centrelines is not None:
            check_centrelines(scene)
            centres = stack.enter_context(raster.open_reader(scene.centrelines))
        out = stack.enter_context(
            raster.stream_cog(
                path, width=info.width, height=info.height, crs=info.crs,
                transform=info.transform, dtype="uint8", nodata=MASK_NODATA, overwrite=True,
            )
        )  # fmt: skip
        for b in blocks(info.height, info.width, MASK_BLOCK):
            _, valid, truth = windows.read(b.col_off, b.row_off, b.width, b.height)
            if centres is not None:
                truth, valid = _centreline_block(centres, b, valid)
            out.write(np.where(valid, truth, MASK_NODATA).astype(np.uint8), b.row_off, b.col_off)
    return path


def check_centrelines(scene: SceneSource) -> None:
    """Refuse a scene's centreline raster that is not one band on its image's grid (size, CRS,
    transform): read pixel for pixel, it would be a wrong truth network without a word."""
    assert scene.centrelines is not None
    image, centres = raster.raster_info(scene.image), raster.raster_info(scene.centrelines)
    if not raster.same_grid(centres, image):
        raise TruthError(
            f"{scene.centrelines}: centreline raster is on another grid than {scene.image} "
            f"({raster.grid_difference(centres, image)}); resample it onto the image grid"
        )
    if centres.count != 1:
        raise TruthError(
            f"{scene.centrelines}: {centres.count} bands; a scene's centreline raster is one "
            "band, road = 1 (a tile set's `centrelines` reads colour images under its label "
            "convention)"
        )


def _centreline_block(
    centres: raster.WindowReader, block: Rect, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(road 0/1, valid) of a block of a centreline raster; values other than 0 and 1 (a
    0/255 mask) are refused, not read as no road."""
    values, known = raster.read_window(
        centres, block.col_off, block.row_off, block.width, block.height
    )
    road = values[0]
    if (known & (road > 1)).any():
        raise TruthError(
            f"{centres.path}: values other than 0 and 1 (e.g. {int(road[known & (road > 1)][0])}); "
            "a centreline raster marks road with 1 (gdal_calc.py --calc 'A>0')"
        )
    return road.astype(np.uint8), valid & known


def label_truth_network(
    scene: SceneSource, data: DataParams, params: NetworkParams, workdir: Path
) -> nx.MultiGraph:
    """The network of a scene scored against a label raster: its truth mask traced and cleaned
    as ``pipeline network`` does with the default cleaning settings (gaps in a 0 / 1 mask are
    never bridged), ``params`` giving only the block and worker settings."""
    mask = write_truth_mask(scene, data, Path(workdir) / f"{scene.name}.truth-mask.tif")
    tracing = NetworkParams.model_validate({k: getattr(params, k) for k in TRACING_SETTINGS})
    try:
        return proposal_network(mask, tracing, MASK_THRESHOLD)
    finally:
        mask.unlink(missing_ok=True)


def proposal_network(prediction: Path, params: NetworkParams, threshold: float) -> nx.MultiGraph:
    """The network ``pipeline network`` builds from a probability raster, as a graph."""
    return _as_graph(build_network(prediction, params, threshold), params)


def _as_graph(network: RoadNetwork, params: NetworkParams) -> nx.MultiGraph:
    """A network as ``pipeline network`` writes it (simplified edges), as a graph to score."""
    edges, nodes = network_frames(network, params.simplify_m)
    return graph_from_network(edges, nodes)


def score_scene_network(
    scene: SceneSource,
    prediction: Path,
    params: NetworkParams,
    threshold: float,
    data: DataParams | None = None,
    metrics: GraphMetricsParams | None = None,
    points: Path | None = None,
) -> dict[str, float]:
    """APLS and TOPO of the repaired network, ``apls_raw`` of the raw skeleton graph; none
    (an empty dict, with a warning) when the scene has no road in its valid area. The truth of
    a scene without road vectors is traced from its label raster beside ``prediction``, its
    image read with ``data``'s bands. With ``points``, the repaired network's APLS control
    points (:mod:`pipeline.apls_points`) are written there."""
    metrics = metrics or GraphMetricsParams()
    if scene.roads is not None:
        truth = truth_network(scene, data)
    elif data is None:
        raise TypeError(f"scene {scene.name} is scored against its labels: pass data (its bands)")
    else:
        truth = label_truth_network(scene, data, params, Path(prediction).parent)
    if truth.number_of_edges() == 0:
        log.warning("evaluate: %s has no road in its valid area; no network metrics", scene.name)
        return {}
    sink = functools.partial(write_control_points, points, overwrite=True) if points else None
    network = trace_network(prediction, params, threshold)
    raw_points = None if params.repair else sink
    raw_scores = score_networks(truth, _as_graph(network, params), metrics, points=raw_points)
    scores = raw_scores
    if params.repair:  # in place, after the raw graph was scored
        repair_network(network, prediction, params)
        scores = score_networks(truth, _as_graph(network, params), metrics, points=sink)
    out = {k: float(scores[k]) for k in NETWORK_METRICS}
    out["apls_raw"] = float(raw_scores["apls"])
    return out
