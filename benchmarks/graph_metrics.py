"""Time APLS and TOPO on a ~1,000-edge road network (a perturbed grid city).

The truth is a 24 x 24 grid of junctions 100 m apart (1,104 streets), each junction moved up
to 10 m at random and 5 % of the streets removed. The proposal is the truth with every
junction moved up to 2 m more, another 5 % of the streets missing and 2 % spurious diagonal
streets, each street bent through a midpoint moved up to 1 m (so geometries are polylines).

    python benchmarks/graph_metrics.py [--side 24] [--repeat 1]
"""

from __future__ import annotations

import argparse
import time

import networkx as nx
import numpy as np
import shapely

from pipeline.config import GraphMetricsParams
from pipeline.graph_metrics import apls, topo
from pipeline.road_graph import metric_graph

CRS = "EPSG:32633"


def grid_city(side: int, seed: int) -> tuple[nx.MultiGraph, nx.MultiGraph]:
    rng = np.random.default_rng(seed)
    ij = [(i, j) for i in range(side) for j in range(side)]
    base = {n: np.array(n, dtype=float) * 100 + rng.uniform(-10, 10, 2) for n in ij}
    streets = [((i, j), (i + 1, j)) for i, j in ij if i + 1 < side]
    streets += [((i, j), (i, j + 1)) for i, j in ij if j + 1 < side]
    streets = [s for s in streets if rng.random() >= 0.05]
    truth = _graph(base, streets, rng, bend=0.0)
    moved = {n: p + rng.uniform(-2, 2, 2) for n, p in base.items()}
    kept = [s for s in streets if rng.random() >= 0.05]
    diagonals = [((i, j), (i + 1, j + 1)) for i, j in ij if i + 1 < side and j + 1 < side]
    extra = [diagonals[k] for k in rng.permutation(len(diagonals))[: len(streets) // 50]]
    return truth, _graph(moved, kept + extra, rng, bend=1.0)


def _graph(xy: dict, streets: list, rng: np.random.Generator, bend: float) -> nx.MultiGraph:
    graph = nx.MultiGraph(crs=CRS)
    for n, (x, y) in xy.items():
        graph.add_node(n, x=x, y=y)
    for u, v in streets:
        mid = (xy[u] + xy[v]) / 2 + rng.uniform(-bend, bend, 2)
        graph.add_edge(u, v, geometry=shapely.LineString([xy[u], mid, xy[v]]))
    return graph


def timed(fn, repeat: int) -> tuple[str, object]:
    """'wall s (CPU s)' of the fastest of ``repeat`` runs, and the result."""
    best, result = (np.inf, np.inf), None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return f"{best[0]:.2f} s wall ({best[1]:.2f} s CPU)", result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=24, help="junctions along a side")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    args = parser.parse_args()
    truth_graph, proposal_graph = grid_city(args.side, seed=0)
    print(
        f"truth: {truth_graph.number_of_edges()} edges, proposal: "
        f"{proposal_graph.number_of_edges()} edges"
    )
    params = GraphMetricsParams()
    t_prep, (truth, proposal) = timed(
        lambda: (metric_graph(truth_graph), metric_graph(proposal_graph)), args.repeat
    )
    print(f"graphs to metres + simplify: {t_prep}")
    apls_text = (
        "APLS {apls:.4f} (gt->prop {apls_gt_onto_prop:.4f}, prop->gt {apls_prop_onto_gt:.4f})"
    )
    topo_text = "F1 {topo_f1:.4f} (precision {topo_precision:.4f}, recall {topo_recall:.4f})"
    runs = [
        ("APLS, all control points", apls, {}, apls_text),
        ("APLS, 500 sampled sources", apls, {"apls_max_sources": 500}, apls_text),
        ("TOPO, all seeds", topo, {}, topo_text),
        ("TOPO, 500 sampled seeds", topo, {"topo_max_seeds": 500}, topo_text),
    ]
    for label, metric, update, text in runs:
        p = params.model_copy(update=update)
        t, scores = timed(lambda m=metric, p=p: m(truth, proposal, p), args.repeat)
        print(f"{label}: {t}  {text.format(**scores)}")


if __name__ == "__main__":
    main()
