"""Score the road network of a predicted scene against the scene's road vectors (evaluate).

The truth network comes from the scene's road centrelines, reprojected to the image's CRS,
clipped to the image's valid area (roads where the image has no pixels cannot be found) and
noded where lines cross (``road_graph.graph_from_lines``). The proposal is the network
``pipeline network`` builds from the stitched prediction with ``params.yaml`` ``network``
settings, and, for reference, the raw skeleton graph (``repair: false``). Both are scored with
``graph_metrics.score_networks``: APLS as SpaceNet defines it (CosmiQ ``apls.py``) and TOPO.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import networkx as nx
import pyproj

from pipeline import raster
from pipeline.config import GraphMetricsParams, NetworkParams, SceneSource
from pipeline.graph_metrics import score_networks
from pipeline.network import build_network
from pipeline.network_io import network_frames
from pipeline.road_graph import graph_from_lines, graph_from_network

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


def truth_network(scene: SceneSource) -> nx.MultiGraph:
    """The scene's road vectors as a graph in the image's CRS, inside its valid area."""
    info = raster.raster_info(scene.image)
    crs = pyproj.CRS.from_user_input(info.crs.to_wkt()) if info.crs else None
    roads = gpd.read_file(scene.roads)
    if crs is not None and roads.crs is not None:
        roads = roads.to_crs(crs)
    roads = roads[roads.geometry.notna() & ~roads.geometry.is_empty]
    clipped = roads.clip(raster.valid_footprint(scene.image))
    lines = clipped[clipped.geom_type.isin(["LineString", "MultiLineString"])]
    return graph_from_lines(lines)


def proposal_network(prediction: Path, params: NetworkParams, threshold: float) -> nx.MultiGraph:
    """The network ``pipeline network`` builds from a probability raster, as a graph."""
    network = build_network(prediction, params, threshold)
    edges, nodes = network_frames(network, params.simplify_m)
    return graph_from_network(edges, nodes)


def score_scene_network(
    scene: SceneSource,
    prediction: Path,
    params: NetworkParams,
    threshold: float,
    metrics: GraphMetricsParams | None = None,
) -> dict[str, float]:
    """APLS and TOPO of the repaired network, ``apls_raw`` of the raw skeleton graph; none
    (an empty dict, with a warning) when the scene has no road in its valid area."""
    metrics = metrics or GraphMetricsParams()
    truth = truth_network(scene)
    if truth.number_of_edges() == 0:
        log.warning(
            "evaluate: %s has no road vectors in its valid area; no network metrics", scene.name
        )
        return {}
    scores = score_networks(truth, proposal_network(prediction, params, threshold), metrics)
    out = {k: float(scores[k]) for k in NETWORK_METRICS}
    raw_params = NetworkParams.model_validate({**params.model_dump(), "repair": False})
    raw = score_networks(truth, proposal_network(prediction, raw_params, threshold), metrics)
    out["apls_raw"] = float(raw["apls"])
    return out
