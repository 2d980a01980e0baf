"""Clean a raw skeleton graph into a road network: pure graph work on networkx, no I/O.

The graph (a ``networkx.MultiGraph``) is in pixel space: a node's key is its (row, col)
position; an edge carries ``path`` ((K, 2) float (row, col), from node ``start`` to the other
end), ``probs`` ((K,) float32 probability at each path point) and is measured in metres
through ``scale`` = (metres per row, metres per column). Every function visits nodes and
edges in sorted order, so the result depends only on the graph, never on how it was built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.spatial import cKDTree

Node = tuple[float, float]
Sampler = Callable[[np.ndarray], np.ndarray]  # (N, 2) row/col -> (N,) probability (NaN: none)


@dataclass(frozen=True)
class RepairSettings:
    """The cleaning steps' distances in metres (see ``config.NetworkParams``)."""

    junction_merge_m: float
    spur_min_m: float
    min_component_m: float
    bridge_max_m: float
    bridge_min_prob: float
    bridge_min_detour: float
    extend_ends_m: float = 0.0
    threshold: float = 0.5


# ------------------------------------------------------------------------------------- basics
def add_edge(graph: nx.MultiGraph, a: Node, b: Node, path: np.ndarray, probs: np.ndarray) -> None:
    graph.add_edge(a, b, path=np.asarray(path, float), probs=np.asarray(probs, np.float32), start=a)


def oriented(data: dict, start: Node) -> tuple[np.ndarray, np.ndarray]:
    """An edge's path and probabilities running from ``start``."""
    if data["start"] == start:
        return data["path"], data["probs"]
    return data["path"][::-1], data["probs"][::-1]


def path_length(path: np.ndarray, scale: tuple[float, float]) -> float:
    """Length in metres of a (K, 2) row/col path."""
    if len(path) < 2:
        return 0.0
    return float(np.hypot(*(np.diff(path, axis=0) * scale).T).sum())


def edge_length(data: dict, scale: tuple[float, float]) -> float:
    """An edge's length in metres, measured once (an edge's path never changes: the steps
    replace edges, they do not edit them)."""
    length = data.get("length_m")
    if length is None:
        length = data["length_m"] = path_length(data["path"], scale)
    return length


def sorted_edges(graph: nx.MultiGraph) -> list[tuple[Node, Node, int, dict]]:
    """Edges in an order that depends only on their geometry."""
    edges = list(graph.edges(keys=True, data=True))
    return sorted(edges, key=lambda e: (min(e[0], e[1]), max(e[0], e[1]), _fingerprint(e[3])))


def _fingerprint(data: dict) -> tuple:
    path = data["path"]
    ends = sorted([tuple(path[len(path) // 2]), tuple(path[(len(path) - 1) // 2])])
    return (len(path), *ends)


def contract(graph: nx.MultiGraph) -> None:
    """Merge the two edges at every node of degree two (not a lone ring's own node)."""
    # merging at a node leaves the degrees of the others as they were
    for node in sorted(n for n, degree in graph.degree if degree == 2):
        edges = list(graph.edges(node, keys=True, data=True))
        if len(edges) != 2:
            continue  # a self-loop: a ring with nothing else on it
        (_, a, ka, da), (_, b, kb, db) = edges
        p1, q1 = oriented(da, a)
        p2, q2 = oriented(db, node)
        graph.remove_node(node)
        add_edge(graph, a, b, np.vstack([p1, p2[1:]]), np.concatenate([q1, q2[1:]]))
    canonical_rings(graph)


def canonical_rings(graph: nx.MultiGraph) -> None:
    """A ring with no other edge starts and ends at its smallest (row, col) point."""
    for node in sorted(n for n, degree in graph.degree if degree == 2):
        edges = list(graph.edges(node, keys=True, data=True))
        if len(edges) != 1 or edges[0][1] != node:
            continue
        data = edges[0][3]
        path, probs = data["path"][:-1], data["probs"][:-1]
        first = min(range(len(path)), key=lambda i: tuple(path[i]))
        path, probs = np.roll(path, -first, axis=0), np.roll(probs, -first)
        if len(path) > 2 and tuple(path[-1]) < tuple(path[1]):
            path = np.vstack([path[:1], path[1:][::-1]])
            probs = np.concatenate([probs[:1], probs[1:][::-1]])
        key = tuple(float(v) for v in path[0])
        graph.remove_node(node)
        add_edge(graph, key, key, np.vstack([path, path[:1]]), np.append(probs, probs[0]))


# ----------------------------------------------------------------------------- the steps
def repair(
    graph: nx.MultiGraph, scale: tuple[float, float], settings: RepairSettings, sample: Sampler
) -> None:
    """All cleaning steps, in place: junction clusters merged, gaps bridged, spurs pruned,
    small pieces dropped (edges stay at pixel resolution; simplify when writing)."""
    contract(graph)
    merge_junctions(graph, scale, settings.junction_merge_m)
    contract(graph)
    if settings.bridge_max_m > 0:
        bridge_gaps(graph, scale, settings, sample)
        contract(graph)
    prune_spurs(graph, scale, settings.spur_min_m)
    drop_small_components(graph, scale, settings.min_component_m)
    if settings.extend_ends_m > 0:
        extend_ends(graph, scale, settings.extend_ends_m, settings.threshold, sample)


def merge_junctions(graph: nx.MultiGraph, scale: tuple[float, float], distance_m: float) -> None:
    """Junctions (degree >= 3) joined by an edge shorter than ``distance_m`` become one node at
    their mean position (the knots thinning leaves where roads meet); edges between them
    shorter than twice the distance go, longer ones become loops."""
    if distance_m <= 0:
        return
    clusters = nx.Graph()  # its components are sorted below: the edges' order does not matter
    for u, v, data in graph.edges(data=True):
        if (
            u != v
            and graph.degree(u) >= 3
            and graph.degree(v) >= 3
            and edge_length(data, scale) < distance_m
        ):
            clusters.add_edge(u, v)
    for members in sorted(sorted(c) for c in nx.connected_components(clusters)):
        centre = tuple(float(v) for v in np.mean(members, axis=0))
        inside = set(members)
        edges = sorted(
            {
                (min(u, v), max(u, v), k): d
                for u, v, k, d in graph.edges(members, keys=True, data=True)
            }.items(),
            key=lambda item: (item[0][0], item[0][1], _fingerprint(item[1])),
        )
        graph.remove_nodes_from(members)
        for (u, v, _), data in edges:
            path, probs = oriented(data, u)
            path = path.copy()
            if u in inside:
                path[0] = centre
            if v in inside:
                path[-1] = centre
            if u in inside and v in inside and path_length(path, scale) < 2 * distance_m:
                continue
            add_edge(graph, centre if u in inside else u, centre if v in inside else v, path, probs)


def prune_spurs(graph: nx.MultiGraph, scale: tuple[float, float], min_m: float) -> None:
    """Remove dead ends shorter than ``min_m`` that hang off a junction, until none is left
    (merging at the junctions left with two edges can expose a new spur)."""
    while min_m > 0:
        degree = dict(graph.degree)
        # the set of spurs, not their order, decides what is removed
        spurs = {
            (u, v, k) if u <= v else (v, u, k)
            for end in [n for n, d in degree.items() if d == 1]
            for u, v, k, d in graph.edges(end, keys=True, data=True)
            if max(degree[u], degree[v]) >= 3 and edge_length(d, scale) < min_m
        }
        if not spurs:
            return
        graph.remove_edges_from(spurs)
        graph.remove_nodes_from([n for n in list(graph.nodes) if graph.degree(n) == 0])
        contract(graph)


def drop_small_components(graph: nx.MultiGraph, scale: tuple[float, float], min_m: float) -> None:
    """Drop connected pieces whose edges add up to less than ``min_m``."""
    components = list(nx.connected_components(graph))
    component = {node: i for i, nodes in enumerate(components) for node in nodes}
    total = np.zeros(len(components))
    for u, _, d in graph.edges(data=True):
        total[component[u]] += edge_length(d, scale)
    for nodes, length in zip(components, total, strict=True):
        if length < min_m:
            graph.remove_nodes_from(nodes)


def extend_ends(
    graph: nx.MultiGraph,
    scale: tuple[float, float],
    max_m: float,
    threshold: float,
    sample: Sampler,
) -> None:
    """Carry each dead end on, in the direction of its last ``max_m``, for as long as the
    probability stays at or above ``threshold``, at most ``max_m``: thinning stops a road's
    centreline about half a road width short of where the road ends (the raster's edge, the
    edge of the data, a cul-de-sac).

    The points ahead of every end are sampled in one call; the ends whose edge an earlier
    extension replaced (both ends of one short edge) are planned and sampled again, together,
    once the others are done (only the edge's two ends touch it, so the order is the same
    network's)."""
    ends = sorted(n for n in graph.nodes if graph.degree(n) == 1)
    while ends:
        ends = _extend_ends_once(graph, ends, scale, max_m, threshold, sample)


def _extend_ends_once(
    graph: nx.MultiGraph,
    ends: list[Node],
    scale: tuple[float, float],
    max_m: float,
    threshold: float,
    sample: Sampler,
) -> list[Node]:
    """Extend ``ends`` from one sampling of all their plans; return the ends whose plan an
    extension of another end made stale."""
    plans = [_extension(graph, end, scale, max_m) for end in ends]
    ahead = [plan.ahead for plan in plans if plan.ahead is not None]
    sampled = sample(np.rint(np.vstack(ahead))) if ahead else np.zeros(0, np.float32)
    values = iter(np.split(sampled, np.cumsum([len(a) for a in ahead])[:-1]) if ahead else [])
    stale = []
    for end, plan in zip(ends, plans, strict=True):
        planned = next(values) if plan.ahead is not None else None
        if not (end in graph and graph.degree(end) == 1):
            continue
        if graph.get_edge_data(plan.other, end, plan.key) is not plan.data:
            stale.append(end)
        elif planned is not None:
            _extend(graph, end, plan, np.nan_to_num(planned, nan=-1.0), threshold)
    return stale


@dataclass(frozen=True)
class _Extension:
    """A dead end's edge and the points one metre apart ahead of it (None: no direction)."""

    other: Node
    key: int
    data: dict
    path: np.ndarray  # running into the end
    probs: np.ndarray
    ahead: np.ndarray | None


def _extension(
    graph: nx.MultiGraph, end: Node, scale: tuple[float, float], max_m: float
) -> _Extension:
    ((_, other, key, data),) = graph.edges(end, keys=True, data=True)
    path, probs = oriented(data, other)
    direction = (path[-1] - _point_back(path, scale, max_m)) * scale
    norm = float(np.hypot(*direction))
    if norm == 0:
        return _Extension(other, key, data, path, probs, None)
    step = direction / norm / scale  # one metre, in pixels
    ahead = path[-1] + np.arange(1, int(max_m) + 1)[:, None] * step
    return _Extension(other, key, data, path, probs, ahead)


def _extend(
    graph: nx.MultiGraph, end: Node, plan: _Extension, values: np.ndarray, threshold: float
) -> None:
    """Move ``end`` along ``plan.ahead`` while ``values`` (the probability there) stay at or
    above ``threshold``."""
    count = len(values)
    keep = int(np.argmin(values >= threshold)) if (values < threshold).any() else count
    if keep == 0:
        return
    new_end = tuple(float(v) for v in plan.ahead[keep - 1])
    if new_end in graph:
        return
    graph.remove_edge(end, plan.other, plan.key)
    graph.remove_node(end)
    add_edge(
        graph,
        plan.other,
        new_end,
        np.vstack([plan.path, plan.ahead[:keep]]),
        np.concatenate([plan.probs, values[:keep].astype(np.float32)]),
    )


def _point_back(path: np.ndarray, scale: tuple[float, float], distance_m: float) -> np.ndarray:
    """The path point about ``distance_m`` back from its last point (or its first point)."""
    steps = np.hypot(*(np.diff(path[::-1], axis=0) * scale).T)
    far = np.flatnonzero(np.cumsum(steps) >= distance_m)
    return path[::-1][far[0] + 1] if len(far) else path[0]


# ----------------------------------------------------------------------------------- bridging
@dataclass(frozen=True)
class _Bridge:
    length_m: float
    end: Node
    target: Node  # the node it joins, or the path point where an edge is split
    edge: int  # index into the edge snapshot when an edge is split there, else -1
    vertex: int
    line: np.ndarray  # (K, 2) row/col points along the straight line, end to target
    probs: np.ndarray


def bridge_gaps(
    graph: nx.MultiGraph, scale: tuple[float, float], settings: RepairSettings, sample: Sampler
) -> None:
    """Join loose ends (degree 1) to the nearest other end or edge point within
    ``bridge_max_m`` when the probability along the straight line stays at or above
    ``bridge_min_prob`` and the network does not already link the two within
    ``bridge_min_detour`` times the gap. Shortest bridges first; each end is used once."""
    ends = sorted(n for n in graph.nodes if graph.degree(n) == 1)
    if not ends:
        return
    edges = sorted_edges(graph)
    ends_m = np.array(ends) * scale
    vertices = _Vertices(edges, scale, ends_m, settings.bridge_max_m)
    for _, _, _, data in edges:
        edge_length(data, scale)  # Dijkstra's weight, "length_m"
    nearby = vertices.tree.query_ball_point(ends_m, settings.bridge_max_m)
    chosen = []
    for i in range(0, len(ends), _ENDS_AT_ONCE):  # row-major chunks: their lines share tiles
        chunk = slice(i, i + _ENDS_AT_ONCE)
        chosen += _bridges_of(graph, ends[chunk], nearby[chunk], vertices, scale, settings, sample)
    used: set[Node] = set()
    splits: dict[int, set[int]] = {}
    accepted = []
    for bridge in sorted(chosen, key=lambda b: (b.length_m, b.end, b.target)):
        if bridge.end in used:
            continue
        used.add(bridge.end)
        if bridge.edge < 0 and graph.degree(bridge.target) == 1:
            used.add(bridge.target)
        if bridge.edge >= 0:
            splits.setdefault(bridge.edge, set()).add(bridge.vertex)
        accepted.append(bridge)
    for e, vertices in sorted(splits.items()):
        _split_edge(graph, edges[e], sorted(vertices))
    for b in accepted:
        add_edge(graph, b.end, b.target, b.line, b.probs)


class _Vertices:
    """Every path point of every edge, with its edge, index and distance along the edge."""

    def __init__(
        self, edges: list, scale: tuple[float, float], ends_m: np.ndarray, radius_m: float
    ) -> None:
        self.edges = edges
        paths = [d["path"] for _, _, _, d in edges]
        sizes = np.array([len(p) for p in paths])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        points = np.vstack(paths)
        owner = np.repeat(np.arange(len(paths)), sizes)
        # every path's steps at once: the step into each path's first point is zero
        steps = np.hypot(*(np.diff(points, axis=0, prepend=points[:1]) * scale).T)
        steps[starts] = 0.0
        along = np.cumsum(steps)
        along -= np.repeat(along[starts], sizes)
        self.length = along[starts + sizes - 1]
        self.first = [d["start"] for _, _, _, d in edges]
        self.last = [tuple(p[-1]) for p in paths]
        # only the points that some loose end could reach are kept (memory)
        reach = cKDTree(ends_m)
        near = np.isfinite(reach.query(points * scale, distance_upper_bound=radius_m)[0])
        self.points = points[near]
        self.owner = owner[near]
        self.index = (np.arange(len(points)) - np.repeat(starts, sizes))[near]
        self.along = along[near]
        self.tree = cKDTree(self.points * scale)


_ENDS_AT_ONCE = 2048  # loose ends whose candidate lines are sampled in one call


def _bridges_of(
    graph: nx.MultiGraph,
    ends: list[Node],
    nearby: list[list[int]],
    vx: _Vertices,
    scale: tuple[float, float],
    settings: RepairSettings,
    sample: Sampler,
) -> list[_Bridge]:
    """For each end, the shortest bridge to one of the path points ``nearby`` it (indexes
    into ``vx``) that passes the detour and probability tests; the candidates' lines of all
    the ends are drawn and sampled together."""
    targets, gaps, counts = _candidates(graph, ends, nearby, vx, scale, settings)
    if not counts.sum():
        return []
    starts = np.repeat(np.array(ends, float), counts, axis=0)
    lines, offsets = _lines(starts, vx.points[targets])
    probs = sample(np.rint(lines))
    probs = np.where(np.isnan(probs), np.float32(-1.0), probs).astype(np.float32)
    passed = np.logical_and.reduceat(probs >= settings.bridge_min_prob, offsets[:-1])
    first = np.concatenate([[0], np.cumsum(counts)])
    bridges = []
    for k, end in enumerate(ends):
        ok = np.flatnonzero(passed[first[k] : first[k + 1]])
        if not len(ok):
            continue
        c = first[k] + int(ok[0])  # candidates come nearest first
        i = int(targets[c])
        j, e = int(vx.index[i]), int(vx.owner[i])
        on_node = j in (0, len(vx.edges[e][3]["path"]) - 1)
        target = tuple(float(x) for x in vx.points[i])
        line, line_probs = lines[offsets[c] : offsets[c + 1]], probs[offsets[c] : offsets[c + 1]]
        bridges.append(
            _Bridge(float(gaps[c]), end, target, -1 if on_node else e, j, line, line_probs)
        )
    return bridges


def _candidates(
    graph: nx.MultiGraph,
    ends: list[Node],
    nearby: list[list[int]],
    vx: _Vertices,
    scale: tuple[float, float],
    settings: RepairSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a bridge from each end may go, nearest first, how long it would be, and how many
    places each end has: of the path points ``nearby`` an end, the nearest of each edge among
    those the network does not already link to the end within ``bridge_min_detour`` times the
    gap. All the ends at once; only the network distances are found end by end."""
    sizes = np.array([len(near) for near in nearby], np.int64)
    near = np.fromiter((i for n in nearby for i in n), np.int64, int(sizes.sum()))
    k = np.repeat(np.arange(len(ends)), sizes)
    gap = np.hypot(*((vx.points[near] - np.array(ends, float)[k]) * scale).T)
    near, gap, k = near[gap > 0], gap[gap > 0], k[gap > 0]
    edge = vx.owner[near]
    # network distance from each end to both ends of each edge it might bridge to
    # one int64 key per (end, edge): sorting it is the pairs' lexicographic order, far cheaper
    # than np.unique(axis=0) over rows
    keys, which = np.unique(k * len(vx.edges) + edge, return_inverse=True)
    pairs = np.stack(np.divmod(keys, len(vx.edges)), axis=1)
    to_first, to_last = np.full(len(pairs), np.inf), np.full(len(pairs), np.inf)
    cutoff = settings.bridge_min_detour * settings.bridge_max_m
    searched, reach = -1, {}
    for p, (end, e) in enumerate(pairs.tolist()):
        if end != searched:  # pairs come sorted by end: one search per end
            searched = end
            reach = nx.single_source_dijkstra_path_length(
                graph, ends[end], cutoff=cutoff, weight="length_m"
            )
        to_first[p] = reach.get(vx.first[e], np.inf)
        to_last[p] = reach.get(vx.last[e], np.inf)
    which = which.reshape(-1)
    via_first = to_first[which] + vx.along[near]
    via_last = to_last[which] + (vx.length[edge] - vx.along[near])
    ok = np.minimum(via_first, via_last) >= settings.bridge_min_detour * gap
    near, gap, edge, k = near[ok], gap[ok], edge[ok], k[ok]
    order = np.lexsort((near, gap, k))
    # the nearest point per end and edge, in the order end, gap
    _, first = np.unique(k[order] * len(vx.edges) + edge[order], return_index=True)
    chosen = order[np.sort(first)]
    return near[chosen], gap[chosen], np.bincount(k[chosen], minlength=len(ends))


def _lines(starts: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points about a pixel apart on the straight line from each start to its target (both
    ends included), one line after another, and where each starts (plus the total)."""
    delta = targets - starts
    counts = np.maximum(2, np.ceil(np.hypot(*delta.T)).astype(np.int64) + 1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    line = np.repeat(np.arange(len(targets)), counts)
    step = np.arange(offsets[-1]) - offsets[line]
    fraction = step / (counts[line] - 1)
    return starts[line] + fraction[:, None] * delta[line], offsets


def _split_edge(graph: nx.MultiGraph, edge: tuple, vertices: list[int]) -> None:
    """Cut an edge into pieces at the given path points (each becomes a node)."""
    u, v, k, data = edge
    graph.remove_edge(u, v, k)
    path, probs = data["path"], data["probs"]
    cuts = [0, *vertices, len(path) - 1]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        add_edge(
            graph,
            tuple(float(x) for x in path[a]),
            tuple(float(x) for x in path[b]),
            path[a : b + 1],
            probs[a : b + 1],
        )
