"""Road probability raster -> road centrelines (LineStrings) in a GeoPackage.

The CRESI recipe (``04_skeletonize.py``): threshold, skeletonise (scikit-image), build a graph
of skeleton pixels, prune short spurs, merge through degree-2 nodes, simplify. Pure numpy /
scikit-image / shapely here; pixels come through ``raster.py`` tile by tile (with a halo, so
skeletons agree across tile edges), so only the sparse skeleton is ever held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path, refuse_existing
from pipeline.styles import add_roads_style

# neighbour offsets (row, col): 4-neighbours first, then diagonals
_OFFSETS = np.array([(-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)])


def skeletonize_mask(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide skeleton (bool) of a binary road mask."""
    from skimage.morphology import skeletonize

    return skeletonize(mask.astype(bool))


def neighbour_table(pixels: np.ndarray) -> np.ndarray:
    """(N, 8) index of each skeleton pixel's neighbours (-1: none), order as ``_OFFSETS``.

    A diagonal neighbour is ignored when a 4-neighbour already links the two pixels (the
    staircase corners thinning leaves), so a plain line has degree 2 everywhere.
    """
    n = len(pixels)
    if n == 0:
        return np.zeros((0, 8), np.int64)
    rc = pixels.astype(np.int64) + 1  # keep neighbour keys non-negative
    width = int(rc[:, 1].max()) + 2
    keys = rc[:, 0] * width + rc[:, 1]
    order = np.argsort(keys)
    sorted_keys = keys[order]
    table = np.full((n, 8), -1, np.int64)
    for k, (dr, dc) in enumerate(_OFFSETS):
        target = (rc[:, 0] + dr) * width + (rc[:, 1] + dc)
        pos = np.clip(np.searchsorted(sorted_keys, target), 0, n - 1)
        hit = sorted_keys[pos] == target
        table[hit, k] = order[pos[hit]]
    # diagonal (dr, dc) is redundant if (dr, 0) or (0, dc) is present
    four = {(-1, 0): 0, (0, -1): 1, (0, 1): 2, (1, 0): 3}
    for k in range(4, 8):
        dr, dc = _OFFSETS[k]
        redundant = (table[:, four[(dr, 0)]] >= 0) | (table[:, four[(0, dc)]] >= 0)
        table[redundant, k] = -1
    return table


def _clusters(table: np.ndarray, is_junction: np.ndarray) -> np.ndarray:
    """Label 8-connected groups of junction pixels (one node each); -1 elsewhere."""
    n = len(table)
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for p in np.flatnonzero(is_junction):
        for q in table[p]:
            if q >= 0 and is_junction[q]:
                ra, rb = find(p), find(int(q))
                if ra != rb:
                    parent[rb] = ra
    labels = np.full(n, -1, np.int64)
    roots: dict[int, int] = {}
    for p in np.flatnonzero(is_junction):
        labels[p] = roots.setdefault(find(p), len(roots))
    return labels


def _skeleton_nodes(
    pixels: np.ndarray, table: np.ndarray, degree: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(node of each pixel, -1 for path pixels; (N, 2) row/col centre of each node): touching
    junction pixels form one node, each endpoint its own."""
    junction = degree >= 3
    labels = _clusters(table, junction)
    n_junction = int(labels.max()) + 1 if junction.any() else 0
    node = labels.copy()
    ends = np.flatnonzero(degree == 1)
    node[ends] = n_junction + np.arange(len(ends))
    n_nodes = n_junction + len(ends)
    centre = np.zeros((n_nodes, 2))
    counts = np.zeros(n_nodes)
    is_node = node >= 0
    np.add.at(centre, node[is_node], pixels[is_node].astype(float))
    np.add.at(counts, node[is_node], 1)
    centre /= np.maximum(counts, 1)[:, None]
    return node, centre


def _walk(
    table: np.ndarray, node: np.ndarray, visited: np.ndarray, start: int, first: int
) -> tuple[list[int], int]:
    """Follow path pixels from node pixel ``start`` through ``first`` to the next node; the
    path pixels and the node reached (-1: a dead end or a pixel already walked)."""
    path, prev, cur = [first], start, first
    visited[cur] = True
    while True:
        nxt = [int(t) for t in table[cur] if t >= 0 and t != prev]
        if not nxt:  # cannot happen for degree 2, but never loop forever
            return path, -1
        t = nxt[0]
        if node[t] >= 0:
            return path, int(node[t])
        if visited[t]:
            return path, -1
        visited[t] = True
        path.append(t)
        prev, cur = cur, t


def _node_edges(
    pixels: np.ndarray, table: np.ndarray, node: np.ndarray, centre: np.ndarray, visited: np.ndarray
) -> list[tuple[int, int, np.ndarray]]:
    """Edges that start at a node: between touching nodes, and along each path of pixels
    leaving a node (marked in ``visited``)."""
    edges: list[tuple[int, int, np.ndarray]] = []
    seen_direct: set[tuple[int, int]] = set()
    for p in np.flatnonzero(node >= 0):
        for q in table[p]:
            if q < 0:
                continue
            if node[q] >= 0:
                a, b = sorted((int(node[p]), int(node[q])))
                if a != b and (a, b) not in seen_direct:
                    seen_direct.add((a, b))
                    edges.append((a, b, np.stack([centre[a], centre[b]])))
                continue
            if visited[q]:
                continue
            path, end = _walk(table, node, visited, p, int(q))
            a = int(node[p])
            coords = [centre[a], *pixels[path].astype(float)]
            if end >= 0:
                coords.append(centre[end])
            if end == a and len(path) <= 2:
                continue  # a pixel hugging its own junction: no road
            edges.append((a, end, np.stack(coords)))
    return edges


def _loop_edges(
    pixels: np.ndarray, table: np.ndarray, degree: np.ndarray, visited: np.ndarray
) -> list[tuple[int, int, np.ndarray]]:
    """Closed loops made only of degree-2 pixels (not walked from a node), ends at node -1."""
    edges: list[tuple[int, int, np.ndarray]] = []
    for p in np.flatnonzero((degree == 2) & ~visited):
        if visited[p]:
            continue
        path, prev, cur = [int(p)], -1, int(p)
        visited[cur] = True
        while True:
            nxt = [int(t) for t in table[cur] if t >= 0 and t != prev and not visited[t]]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            visited[cur] = True
            path.append(cur)
        coords = pixels[path].astype(float)
        if len(path) > 2:
            coords = np.vstack([coords, coords[:1]])
        edges.append((-1, -1, coords))
    return edges


def trace_edges(pixels: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Split a skeleton into edges between nodes: [(node_a, node_b, (K, 2) float row/col path)].

    Nodes are endpoints (degree 1) and junctions (degree >= 3; touching junction pixels form
    one node, placed at their centroid). Closed loops without nodes come back with both ends
    at node -1. Isolated pixels are dropped.
    """
    pixels = np.asarray(pixels, np.int64).reshape(-1, 2)
    table = neighbour_table(pixels)
    degree = (table >= 0).sum(axis=1)
    node, centre = _skeleton_nodes(pixels, table, degree)
    visited = np.zeros(len(pixels), bool)
    edges = _node_edges(pixels, table, node, centre, visited)
    return edges + _loop_edges(pixels, table, degree, visited)


def _length(coords: np.ndarray) -> float:
    return float(np.hypot(*np.diff(coords, axis=0).T).sum()) if len(coords) > 1 else 0.0


def prune_spurs(
    edges: list[tuple[int, int, np.ndarray]], min_length: float
) -> list[tuple[int, int, np.ndarray]]:
    """Drop spurs (an endpoint joined to a junction) and isolated pieces shorter than
    ``min_length`` pixels; repeated until nothing changes (pruning can expose new spurs)."""
    edges = list(edges)
    while True:
        degree: dict[int, int] = {}
        for a, b, _ in edges:
            for v in (a, b):
                if v >= 0:
                    degree[v] = degree.get(v, 0) + 1
        keep = []
        for a, b, coords in edges:
            da, db = degree.get(a, 0), degree.get(b, 0)
            short = _length(coords) < min_length
            spur = short and ((da == 1 and db >= 3) or (db == 1 and da >= 3))
            isolated = short and da <= 1 and db <= 1 and not (a == b == -1 and len(coords) > 3)
            if not (spur or isolated):
                keep.append((a, b, coords))
        if len(keep) == len(edges):
            return keep
        edges = keep


def skeleton_lines(pixels: np.ndarray, min_spur_px: float = 10.0, simplify_px: float = 1.0) -> list:
    """Skeleton pixel coordinates (row, col) -> merged, simplified shapely LineStrings in
    pixel space (x = col + 0.5, y = row + 0.5)."""
    import shapely

    edges = prune_spurs(trace_edges(pixels), min_spur_px)
    parts = [
        shapely.LineString(coords[:, ::-1] + 0.5) for _, _, coords in edges if len(coords) >= 2
    ]
    if not parts:
        return []
    merged = shapely.line_merge(shapely.MultiLineString(parts))
    lines = list(merged.geoms) if hasattr(merged, "geoms") else [merged]
    if simplify_px > 0:
        lines = [shapely.simplify(g, simplify_px) for g in lines]
    return [g for g in lines if not g.is_empty and g.length > 0]


def _tiles(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    for r in range(0, height, tile):
        for c in range(0, width, tile):
            yield r, c, min(tile, height - r), min(tile, width - c)


def skeleton_pixels(
    prob_path: Path, threshold: float, tile: int = 2048, halo: int = 64
) -> np.ndarray:
    """(N, 2) row/col of skeleton pixels of ``probability >= threshold``, read tile by tile.

    Each tile is skeletonised with a ``halo`` of context and only its core is kept, so the
    skeleton matches a whole-raster one away from the halo's outer edge.
    """
    from pipeline import raster
    from pipeline.stitching import decode

    info = raster.raster_info(prob_path)
    found = []
    with raster.gdal_cache_limit(), raster.open_reader(prob_path) as reader:
        for r, c, h, w in _tiles(info.height, info.width, tile):
            r0, c0 = r - halo, c - halo
            values = reader.read_band(1, c0, r0, w + 2 * halo, h + 2 * halo)
            prob = decode(values)
            rows_in = (r0 + np.arange(prob.shape[0]) >= 0) & (
                r0 + np.arange(prob.shape[0]) < info.height
            )
            cols_in = (c0 + np.arange(prob.shape[1]) >= 0) & (
                c0 + np.arange(prob.shape[1]) < info.width
            )
            inside = rows_in[:, None] & cols_in[None, :]
            with np.errstate(invalid="ignore"):
                mask = (prob >= threshold) & inside
            skel = skeletonize_mask(mask)[halo : halo + h, halo : halo + w]
            rows, cols = np.nonzero(skel)
            found.append(np.stack([rows + r, cols + c], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def vectorize_raster(
    prob_path: Path,
    out_path: Path,
    *,
    threshold: float,
    min_spur_m: float = 10.0,
    simplify_m: float = 1.0,
    overwrite: bool = False,
    tile: int = 2048,
) -> Path:
    """Write road centrelines of a probability raster (predict's output) to a GeoPackage.

    Layer ``roads``: LineStrings in the raster's CRS with ``length_m`` (``ground.ground_lengths``:
    geodesic metres for a geographic CRS or a Mercator, the CRS's units in metres otherwise;
    without a CRS, metres by the ``pixel_size_m`` tag predict writes for a declared
    ``--pixel-size``, else the transform's units). Dead-end branches shorter than
    ``min_spur_m`` are pruned and lines simplified by ``simplify_m``, both in metres on the
    ground, so the result does not depend on the pixel size (a raster without CRS or
    declared size: pixels). The layer's default QGIS style is stored in the GeoPackage
    (``styles.add_roads_style``). Written to a temporary file and renamed.
    """
    import geopandas as gpd
    import pyproj
    from shapely import affinity

    from pipeline import raster
    from pipeline.ground import ground_lengths

    out_path = Path(out_path)
    refuse_existing(out_path, overwrite)
    info = raster.raster_info(prob_path)
    size = raster.ground_pixel_size(info)  # the CRS's on the ground, else --pixel-size's
    mpp = size or 1.0  # neither: pixels
    lines = skeleton_lines(
        skeleton_pixels(prob_path, threshold, tile), min_spur_m / mpp, simplify_m / mpp
    )
    t = info.transform
    geoms = [affinity.affine_transform(g, [t.a, t.b, t.d, t.e, t.c, t.f]) for g in lines]
    crs = pyproj.CRS.from_user_input(info.crs.to_wkt()) if info.crs else None
    factor = 1.0 if info.crs else raster.metres_per_unit_without_crs(info, size)
    lengths = [length * factor for length in ground_lengths(geoms, info.crs)]
    frame = gpd.GeoDataFrame({"length_m": np.asarray(lengths, float)}, geometry=geoms, crs=crs)
    with atomic_path(out_path) as tmp, raster.quiet_without_crs(crs is not None):
        frame.to_file(tmp, layer="roads", driver="GPKG", geometry_type="LineString")
        add_roads_style(tmp)  # QGIS opens the layer styled
    return out_path
