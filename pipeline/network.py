"""Road probability raster -> road network (GeoPackage with ``edges`` and ``nodes``).

How a raster of any size becomes one network, block by block:

1. **Skeleton.** ``probability >= threshold`` is thinned (scikit-image) on a fixed grid of
   ``skeleton_tile`` pixel tiles, each with ``skeleton_halo_px`` of context, read a block at a
   time (a block per thread, a few threads). The tile grid, not the block, decides the skeleton, so it is the same whatever the
   block size. Only skeleton pixels (and their probability) are kept.
2. **Trace.** Each block's skeleton, with ``seam_margin_px`` of its neighbours' around it, is
   turned into paths between nodes by skan. A block keeps the pixel steps it owns (a step
   belongs to the block holding its first pixel in row-major order), cut where ownership
   changes, so every step of the whole skeleton is kept exactly once. Blocks are traced on
   threads (or the cluster's workers), a few ahead of the join.
3. **Join.** The pieces meet at pixels; merging the two edges at every degree-two node gives
   the graph skan would give for the whole skeleton at once: a road crossing a seam is one
   edge.
4. **Repair** (``network_repair``): junction clusters merged, gaps bridged where the
   probability says a road continues, spurs pruned, small pieces dropped; then edges are
   simplified, all in metres.

Memory holds one block of pixels plus the skeleton pixels and the network (both grow with
the length of road, not with the raster's area).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from pipeline import ground, parallel, raster, windows
from pipeline.atomic import refuse_existing
from pipeline.config import NetworkParams
from pipeline.network_io import RoadNetwork, write_network
from pipeline.network_repair import RepairSettings, add_edge, canonical_rings, contract, repair

log = logging.getLogger(__name__)

_RANGE_SLACK = 1e-3  # probabilities may overshoot [0, 1] by this much (float rounding)
# threads that thin blocks in this process: 1.7x on 2 cores (16384^2: 9.8 -> 5.7 s); beyond
# a few, the GIL held between the C calls and one block of memory per thread cost more
MAX_THINNING_THREADS = 4


class NetworkError(ValueError):
    """A probability raster a network cannot be built from; the message says why."""


# ----------------------------------------------------------------------------- the grid
def metres_per_pixel(info: raster.RasterInfo) -> tuple[float, float]:
    """(metres per row, metres per column) at the raster's centre; geodesic for a geographic
    CRS or a Mercator (EPSG:3857). Without a CRS: the ``pixel_size_m`` tag predict writes for
    a raster declared with ``--pixel-size``, else (1, 1), i.e. pixels."""
    if info.crs is None:
        size = raster.ground_pixel_size(info) or 1.0
        return (size, size)
    return ground.pixel_metres(info.crs, info.transform, info.width, info.height)


def _blocks(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    """``windows.blocks`` as (row0, col0, row1, col1) corners, the shape blocks travel in."""
    return [
        (b.row_off, b.col_off, b.row_end, b.col_end) for b in windows.blocks(height, width, size)
    ]


# -------------------------------------------------------------------------- 1. skeleton
@dataclass
class Skeleton:
    """Skeleton pixels of the whole raster, sorted row-major, with their probability."""

    rows: np.ndarray  # int32
    cols: np.ndarray
    probs: np.ndarray  # float32
    width: int

    def window(self, r0: int, c0: int, r1: int, c1: int) -> tuple[np.ndarray, ...]:
        """Rows, cols and probabilities of the pixels in rows r0..r1-1, cols c0..c1-1."""
        lo, hi = np.searchsorted(self.rows, [r0, r1])
        rows, cols, probs = self.rows[lo:hi], self.cols[lo:hi], self.probs[lo:hi]
        inside = (cols >= c0) & (cols < c1)
        return rows[inside], cols[inside], probs[inside]


def _check_range(prob: np.ndarray, path: Path) -> None:
    with np.errstate(invalid="ignore"):
        low, high = np.nanmin(prob, initial=0.0), np.nanmax(prob, initial=0.0)
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise NetworkError(
            f"{path}: values from {low:g} to {high:g} after the file's scale and offset, not "
            "probabilities in 0..1; for a road label mask (0/255, 0/1) pass --labels, else "
            "declare the scale (e.g. for 0..255: gdal_edit.py -scale 0.00392157 FILE)"
        )


@dataclass(frozen=True)
class _BlockJob:
    """What a worker needs to thin one block (it travels to Dask workers)."""

    path: str
    threshold: float
    hole_px: int
    tile: int
    halo: int


def skeleton_block(job: _BlockJob, block: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    """Rows, cols and probabilities of one block's skeleton pixels (module docstring, step 1).

    Holes in the mask up to ``hole_px`` are filled first: a speckle inside a road would become
    a loop of skeleton."""
    from skimage.morphology import remove_small_holes, skeletonize

    r0, c0, r1, c1 = block
    halo = job.halo
    with raster.gdal_cache_limit(), raster.open_reader(job.path) as reader:
        scaling = raster.band_scaling(job.path)
        prob = raster.read_scaled(
            reader, scaling, c0 - halo, r0 - halo, c1 - c0 + 2 * halo, r1 - r0 + 2 * halo
        )
    _check_range(prob, Path(job.path))
    with np.errstate(invalid="ignore"):
        mask = prob >= job.threshold
    found = []
    for tr0, tc0, tr1, tc1 in _blocks(r1 - r0, c1 - c0, job.tile):
        sub = mask[tr0 : tr1 + 2 * halo, tc0 : tc1 + 2 * halo]
        if job.hole_px > 0:
            sub = remove_small_holes(sub, max_size=job.hole_px)
        skel = skeletonize(sub)[halo : halo + tr1 - tr0, halo : halo + tc1 - tc0]
        rows, cols = np.nonzero(skel)
        found.append((rows + tr0 + r0, cols + tc0 + c0, prob[rows + tr0 + halo, cols + tc0 + halo]))
    return tuple(np.concatenate([f[k] for f in found]) for k in range(3))


def skeleton_of(
    path: Path, threshold: float, params: NetworkParams, client: Any = None
) -> Skeleton:
    """Skeleton pixels of the whole raster, block by block (on ``client``'s cluster if given)."""
    info = raster.raster_info(path)
    my, mx = metres_per_pixel(info)
    job = _BlockJob(
        str(path),
        threshold,
        int(params.hole_max_m2 / (my * mx)),
        params.skeleton_tile,
        params.skeleton_halo_px,
    )
    tasks = ((job, b) for b in _blocks(info.height, info.width, params.block_size))
    if client is None:
        # thinning and hole filling release the GIL: threads use the cores without a cluster
        found = list(parallel.map_ordered_on_threads(skeleton_block, tasks, _threads()))
    else:
        found = list(parallel.map_ordered(skeleton_block, tasks, client=client, progress=False))
    rows = np.concatenate([f[0] for f in found]).astype(np.int32)
    cols = np.concatenate([f[1] for f in found]).astype(np.int32)
    probs = np.concatenate([f[2] for f in found]).astype(np.float32)
    order = np.argsort(rows.astype(np.int64) * info.width + cols, kind="stable")
    return Skeleton(rows[order], cols[order], probs[order], info.width)


# ----------------------------------------------------------------------------- 2. trace
Piece = tuple[np.ndarray, np.ndarray]  # (K, 2) int row/col path, (K,) float32 probabilities


def _drop_isolated(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Clear pixels (at ``rows``, ``cols``) with no 8-neighbour: no road, and skan cannot
    take them."""
    padded = np.pad(image, 1)
    count = sum(
        padded[rows + 1 + dr, cols + 1 + dc].astype(np.int8)
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
        if dr or dc
    )
    lonely = count == 0
    image[rows[lonely], cols[lonely]] = False


@dataclass(frozen=True)
class _View:
    """A block and the skeleton pixels around it (it travels to Dask workers)."""

    block: tuple[int, int, int, int]
    origin: tuple[int, int]
    shape: tuple[int, int]
    rows: np.ndarray  # relative to origin
    cols: np.ndarray
    probs: np.ndarray


def block_view(
    skeleton: Skeleton, block: tuple[int, int, int, int], margin: int, shape: tuple[int, int]
) -> _View:
    """The block with ``margin`` pixels of skeleton around it, cut at the raster's edges."""
    r0, c0, r1, c1 = block
    vr0, vc0 = max(0, r0 - margin), max(0, c0 - margin)
    vr1, vc1 = min(shape[0], r1 + margin), min(shape[1], c1 + margin)
    rows, cols, probs = skeleton.window(vr0, vc0, vr1, vc1)
    return _View(block, (vr0, vc0), (vr1 - vr0, vc1 - vc0), rows - vr0, cols - vc0, probs)


def trace_block(view: _View) -> list[Piece]:
    """The pieces of skeleton path whose pixel steps this block owns (module docstring, 2)."""
    from skan import Skeleton as SkanSkeleton

    r0, c0, r1, c1 = view.block
    vr0, vc0 = view.origin
    rows, cols = view.rows.astype(np.int64), view.cols.astype(np.int64)
    image = np.zeros(view.shape, bool)
    image[rows, cols] = True
    _drop_isolated(image, rows, cols)
    if not image.any():
        return []
    prob_image = np.zeros(image.shape, np.float32)
    prob_image[rows, cols] = view.probs
    skan = SkanSkeleton(image)
    # every path's pixels end to end (skan's CSR rows), each pixel step judged at once: a
    # step is owned when its row-major first pixel lies in the block, and never spans two paths
    order = np.asarray(skan.paths.indices)
    if len(order) < 2:
        return []
    local = np.asarray(skan.coordinates).astype(np.int64)[order]
    path = local + (vr0, vc0)
    probs = prob_image[local[:, 0], local[:, 1]]
    first = np.where(_before(path[:-1], path[1:])[:, None], path[:-1], path[1:])
    own = (first[:, 0] >= r0) & (first[:, 0] < r1) & (first[:, 1] >= c0) & (first[:, 1] < c1)
    own[np.asarray(skan.paths.indptr)[1:-1] - 1] = False  # last pixel of a path -> next path
    return [(path[a : b + 2], probs[a : b + 2]) for a, b in _runs(own)]


def _before(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-major order of pixel pairs: p before q."""
    return (p[:, 0] < q[:, 0]) | ((p[:, 0] == q[:, 0]) & (p[:, 1] < q[:, 1]))


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) indexes of each run of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(change[::2], change[1::2], strict=True)]


# ------------------------------------------------------------------------------ 3. join
def join_pieces(pieces: Iterable[Piece]) -> nx.MultiGraph:
    """One graph from every block's pieces: nodes at pixels, degree-two nodes merged."""
    graph = nx.MultiGraph()
    for path, probs in pieces:
        a = (float(path[0, 0]), float(path[0, 1]))
        b = (float(path[-1, 0]), float(path[-1, 1]))
        add_edge(graph, a, b, path.astype(float), probs)
    contract(graph)
    canonical_rings(graph)
    return graph


def warm_up() -> None:
    """Compile skan's numba code (~8 s on a quiet 2-core VM, once per process) on a tiny
    skeleton and import the GeoPackage writer; predict runs this on a thread while the model
    works, so that the network step after it costs only its own work."""
    import geopandas  # noqa: F401  (the writer's import, ~1 s)
    from skan import Skeleton as SkanSkeleton

    image = np.zeros((8, 8), bool)
    image[4, 1:7] = True
    image[1:7, 3] = True
    SkanSkeleton(image).path(0)


# ----------------------------------------------------------------------------- the whole
def resolve_threshold(path: Path, threshold: float | None, fallback: float | None = None) -> float:
    """The threshold given, else the raster's ``threshold`` tag, else ``fallback``."""
    if threshold is not None:
        return float(threshold)
    tag = raster.raster_tags(path).get("threshold")
    if tag is not None:
        try:
            return float(tag)
        except ValueError:
            raise NetworkError(f"{path}: its threshold tag {tag!r} is not a number") from None
    if fallback is not None:
        return float(fallback)
    raise NetworkError(
        f"{path}: no threshold: the raster has no `threshold` tag (predict writes the model's); "
        "pass --threshold (--labels for a road label mask) or set network.threshold in "
        "params.yaml"
    )


def build_network(
    path: str | Path, params: NetworkParams, threshold: float | None = None
) -> RoadNetwork:
    """The road network of a probability raster (module docstring): traced, then repaired
    when ``params.repair``."""
    network = trace_network(path, params, threshold)
    if params.repair:
        repair_network(network, path, params)
    return network


def trace_network(
    path: str | Path, params: NetworkParams, threshold: float | None = None
) -> RoadNetwork:
    """The raw skeleton graph of a probability raster (module docstring, steps 1-3)."""
    path = Path(path)
    info = raster.raster_info(path)
    threshold = resolve_threshold(path, threshold if threshold is not None else params.threshold)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        client = None
        if params.workers > 1:
            client = stack.enter_context(parallel.local_cluster(params.workers, "cpu"))
        skeleton = skeleton_of(path, threshold, params, client)
        t1 = time.perf_counter()
        shape = (info.height, info.width)
        views = (
            (block_view(skeleton, block, params.seam_margin_px, shape),)
            for block in _blocks(info.height, info.width, params.block_size)
        )
        if client is None:  # skan's heaviest numba steps release the GIL: a block is traced
            # while the graph takes the pieces of the one before
            traced = parallel.map_ordered_on_threads(trace_block, views, _threads())
        else:
            traced = parallel.map_ordered(trace_block, views, client=client, progress=False)
        # pieces go into the graph block by block, in block order: never all of them at once
        graph = join_pieces(piece for pieces in traced for piece in pieces)
        del skeleton
    timings = {"skeleton": t1 - t0, "trace_join": time.perf_counter() - t1, "repair": 0.0}
    return RoadNetwork(graph, info, metres_per_pixel(info), threshold, timings)


def _threads() -> int:
    """Threads for thinning and tracing without a cluster."""
    return min(parallel.available_cores(), MAX_THINNING_THREADS)


def repair_network(network: RoadNetwork, path: str | Path, params: NetworkParams) -> None:
    """Repair ``network`` (traced from the probability raster ``path``) in place with
    ``params``' cleaning settings (module docstring, step 4)."""
    t0 = time.perf_counter()
    threshold = network.threshold
    settings = RepairSettings(
        params.junction_merge_m,
        params.spur_min_m,
        params.min_component_m,
        params.bridge_max_m,
        params.bridge_min_fraction * threshold,
        params.bridge_min_detour,
        params.extend_ends_m,
        threshold,
    )
    with raster.open_reader(path) as reader:
        repair(network.graph, network.scale, settings, _Sampler(reader, raster.band_scaling(path)))
    network.timings["repair"] = time.perf_counter() - t0


class _Sampler:
    """Probability at integer (row, col) points, read in tiles of ``TILE`` pixels kept in a
    least-recently-used cache as the file stores them (repair samples loose ends in row-major
    order: a band of tiles two tiles high across the raster is in use at a time).

    The tiles keep the file's values and validity, scaled only at the sampled points: a float
    copy of every tile would cost four times the memory for the few points sampled."""

    TILE = 512
    KEEP = 96  # tiles held: 48 MiB of uint8 values and masks (more for wider sample types)

    def __init__(self, reader: raster.WindowReader, scaling: raster.BandScaling) -> None:
        self.reader, self.scaling = reader, scaling
        self.tiles: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _tile(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        tile = self.tiles.get(key)
        if tile is not None:
            self.tiles.move_to_end(key)
            return tile
        if len(self.tiles) >= self.KEEP:
            self.tiles.popitem(last=False)
        tile = raster.read_raw(self.reader, key[1] * self.TILE, key[0] * self.TILE, self.TILE)
        self.tiles[key] = tile
        return tile

    def __call__(self, points: np.ndarray) -> np.ndarray:
        pts = points.astype(np.int64)
        keys = pts // self.TILE
        local = pts - keys * self.TILE
        out = np.full(len(pts), np.nan, np.float32)
        for key, sel in _by_tile(keys):
            values, valid = self._tile(key)
            if not values.size:
                continue  # outside the raster: no probability
            r, c = local[sel, 0], local[sel, 1]
            inside = (r >= 0) & (c >= 0) & (r < values.shape[0]) & (c < values.shape[1])
            r, c = np.where(inside, r, 0), np.where(inside, c, 0)
            ok = inside & valid[r, c]
            scaled = values[r, c].astype(np.float32) * np.float32(self.scaling.scale)
            out[sel] = np.where(ok, scaled + np.float32(self.scaling.offset), np.nan)
        return out


def _by_tile(keys: np.ndarray) -> list[tuple[tuple[int, int], Any]]:
    """(tile key, the points' indexes in that tile) for (N, 2) tile keys, tiles row-major."""
    if not len(keys):
        return []
    if (keys == keys[0]).all():  # the usual case for a few points: one tile
        return [((int(keys[0, 0]), int(keys[0, 1])), slice(None))]
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    ordered = keys[order]
    cuts = np.flatnonzero((np.diff(ordered, axis=0) != 0).any(axis=1)) + 1
    return [((int(keys[g[0], 0]), int(keys[g[0], 1])), g) for g in np.split(order, cuts)]


def network_raster(
    prob_path: str | Path,
    out_path: str | Path,
    params: NetworkParams,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
) -> Path:
    """``pipeline network``: build the network of ``prob_path``, write it to ``out_path``."""
    out_path = Path(out_path)
    refuse_existing(out_path, overwrite)
    network = build_network(prob_path, params, threshold)
    t0 = time.perf_counter()
    write_network(network, out_path, params.simplify_m, overwrite=overwrite)
    network.timings["write"] = time.perf_counter() - t0
    log.info(
        "network %s: %d edges, %d nodes (%s)",
        out_path,
        network.graph.number_of_edges(),
        network.graph.number_of_nodes(),
        ", ".join(f"{k} {v:.2f} s" for k, v in network.timings.items()),
    )
    return out_path
