"""Painting reflectance, from the ground up: land-cover textures, fields, dry river beds,
railways, paved surfaces, roads (from the label polygons) with their markings, cars,
building shadows and roofs; trees last (``trees.py``)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely

from pipeline.synth.geometry import dashes, line_parts
from pipeline.synth.grid import hash01
from pipeline.synth.landcover import field_parcels
from pipeline.synth.materials import (
    BALLAST,
    BARRIER,
    CARS,
    CONCRETE,
    CROP_P,
    CROP_STRIPES,
    CROPS,
    GRASS,
    GROUND_TEX,
    PAINT,
    PAVED,
    ROAD_SURFACES,
    RUTS,
    SIDEWALK,
    SKYLIGHT,
    STEEL,
    SURFACE_P,
    VERGE,
    draw_palette,
)
from pipeline.synth.objects import Objects
from pipeline.synth.roads import ROAD_WIDTH_M
from pipeline.synth.state import Scene, timed_step
from pipeline.synth.trees import paint_trees
from pipeline.synth.types import CROPLAND, WATER


def paint_scene(rng: np.random.Generator, sc: Scene, obj: Objects) -> None:
    """Reflectance of every pixel, from the ground up to the tree tops."""
    sc.palette = draw_palette(rng)
    with timed_step("ground"):
        sc.img = _ground(sc)
        _cropland(sc)
        _dry_bed(sc)
    road = sc.label.astype(bool)
    with timed_step("features"):
        rails = _railway_paint(sc)
        paved = _paved(sc, obj, road)
        roofs = _building_mask(sc, obj, road)
    with timed_step("roads"):
        _roads(rng, sc, road)
        _cars(sc, obj, road, paved)
    with timed_step("buildings"):
        _shadows(sc, obj, roofs)
        _roofs(sc, obj, road)
    sc.blocked = road | roofs | paved | rails | (sc.lc == WATER)
    with timed_step("trees"):
        paint_trees(rng, sc)


def _ground(sc: Scene) -> np.ndarray:
    """Two end members per class mixed by noise, brightness varied per cell and by noise."""
    lc, nz = sc.lc, sc.noise
    tex = [GROUND_TEX[:, k][lc] for k in range(6)]
    bright = 1.0 + tex[0] * nz.low + tex[1] * nz.mid + tex[2] * nz.fine + sc.cells.bright[sc.cell]
    mix = np.clip(tex[5] + tex[3] * nz.low + tex[4] * nz.mid + sc.cells.mix[sc.cell], 0.0, 1.0)
    img = np.empty((4,) + lc.shape, np.float32)
    for b in range(4):
        a = sc.palette.ground_a[:, b][lc]
        img[b] = (a + (sc.palette.ground_b[:, b][lc] - a) * mix) * bright
    return img


def _cropland(sc: Scene) -> None:
    """Fields: one crop per parcel, tillage stripes along it, grassy margins between parcels."""
    rows, cols = np.nonzero(sc.lc == CROPLAND)
    if not rows.size:
        return
    cid = sc.cell[rows, cols]
    gsd = sc.grid.gsd
    i, j, edge, across = field_parcels(sc.cells, cid, (cols + 0.5) * gsd, -(rows + 0.5) * gsd)
    salt = sc.cells.salt
    crop = np.minimum(np.searchsorted(np.cumsum(CROP_P), hash01(salt, cid, i, j)), len(CROPS) - 1)
    tone = (0.85 + 0.3 * hash01(salt + 1, cid, i, j)).astype(np.float32)
    period = (5.0 + 10.0 * hash01(salt + 2, cid, i, j)).astype(np.float32)
    stripes = np.cos((2 * np.pi) * across / period).astype(np.float32)
    mod = tone * (
        1
        + CROP_STRIPES[crop] * stripes
        + 0.05 * sc.noise.fine[rows, cols]
        + 0.07 * sc.noise.mid[rows, cols]
    )
    verge = np.clip(1.6 - edge / 1.0, 0.0, 1.0).astype(np.float32)  # ~1.5 m grass margins
    for b in range(4):
        field = sc.palette.crops[crop, b] * mod
        sc.img[b, rows, cols] = (
            field + (VERGE[0, b] * (1 + 0.1 * sc.noise.mid[rows, cols]) - field) * verge
        )


def _dry_bed(sc: Scene) -> None:
    """Gravel and sand of a dry river bed, with damp channels and patches of scrub."""
    if sc.layout.dry_bed.is_empty:
        return
    m = sc.grid.burn([sc.layout.dry_bed]).astype(bool)
    mid, fine = sc.noise.mid[m], sc.noise.fine[m]
    colour = sc.palette.riverbed[:, None] * (1 + 0.08 * fine) * np.where(mid < -0.9, 0.7, 1.0)
    scrub = np.clip(mid - 1.0, 0, 1)
    _blend(sc.img, m, colour * (1 - scrub) + GRASS[:, None] * scrub, 1.0)


def _railway_paint(sc: Scene) -> np.ndarray:
    """Ballast beds with two dark rails each; returns the ballast mask."""
    rails = np.array(sc.layout.rails, dtype=object)
    if not len(rails):
        return np.zeros(sc.grid.shape, bool)
    ballast = sc.grid.burn(shapely.buffer(rails, 1.7, cap_style="flat")).astype(bool)
    _blend(sc.img, ballast, BALLAST[:, None] * (1 + 0.1 * sc.noise.fine[ballast]), 1.0)
    steel = line_parts(
        shapely.offset_curve(np.concatenate([rails, rails]), np.repeat([-0.72, 0.72], len(rails)))
    )
    _paint_lines(sc, np.array(steel, dtype=object), 0.3, STEEL, ballast)
    return ballast


def _paved(sc: Scene, obj: Objects, road: np.ndarray) -> np.ndarray:
    """Driveways, lots, yards and sidewalks: road materials that are not road."""
    sidewalks = _sidewalks(sc, road)
    _blend(sc.img, sidewalks, SIDEWALK[:, None] * (1 + 0.06 * sc.noise.fine[sidewalks]), 1.0)
    kind = (
        sc.grid.burn(obj.paved, values=obj.paved_kind + 1)
        if len(obj.paved)
        else np.zeros(sc.grid.shape, np.uint8)
    )
    m = (kind > 0) & ~road
    colour = PAVED[kind[m] - 1].T * (1 + 0.08 * sc.noise.fine[m] + 0.06 * sc.noise.mid[m])
    _blend(sc.img, m, colour, 1.0)
    _paint_lines(sc, obj.stall_lines, 0.12, PAINT, m)
    return m | sidewalks


def _sidewalks(sc: Scene, road: np.ndarray) -> np.ndarray:
    roads = sc.layout.roads
    towns = [t for t in sc.layout.towns if t.sidewalks]
    sel = roads.road_class.isin(["residential", "secondary"]).to_numpy()
    if not towns or not sel.any():
        return np.zeros(sc.grid.shape, bool)
    area = shapely.union_all([t.polygon for t in towns])
    lines = shapely.intersection(roads.geometry.to_numpy()[sel], area)
    walks = shapely.buffer(lines, roads.width_m.to_numpy()[sel] / 2 + 1.8, cap_style="flat")
    return sc.grid.burn(walks).astype(bool) & ~road


def _building_mask(sc: Scene, obj: Objects, road: np.ndarray) -> np.ndarray:
    if not len(obj.roofs):
        return np.zeros(sc.grid.shape, bool)
    return sc.grid.burn(obj.footprints).astype(bool) & ~road


def _roads(rng: np.random.Generator, sc: Scene, road: np.ndarray) -> None:
    """Road surfaces from the label polygons, then markings, ruts and bridge parapets."""
    polys = sc.polygons
    if not road.any():
        return
    # wide roads on top; at equal width, a road's bridge piece below its other pieces
    order = np.lexsort((~polys.bridge.to_numpy(bool), polys.width_m.to_numpy()))
    ids = sc.grid.burn(
        polys.geometry.to_numpy()[order], values=np.arange(1, len(order) + 1), dtype="int32"
    )
    surface, tone, blend = _surfaces(rng, polys.iloc[order])
    rid = ids[road]
    rid[rid == 0] = 1  # a label pixel no single polygon claims (edge case): any road
    material = surface[rid - 1]
    material[_bridge_decks(sc)[road]] = CONCRETE
    colour = (sc.palette.roads[material] * tone[rid - 1]).T
    colour *= 1 + 0.06 * sc.noise.fine[road] + 0.08 * sc.noise.mid[road]
    colour *= np.where(sc.noise.mid[road] > 1.3, 0.85, 1.0)  # patched asphalt
    alpha = np.where(material == CONCRETE, 1.0, blend[rid - 1])  # tracks fade into the ground
    sc.img[:, road] = sc.img[:, road] * (1 - alpha) + colour * alpha
    for lines, width, paint in _markings(rng, sc.layout.roads):
        _paint_lines(sc, lines, width, paint, road)


def _bridge_decks(sc: Scene) -> np.ndarray:
    """Bridge decks with square ends (the label polygons of bridge pieces have round caps)."""
    roads = sc.layout.roads[sc.layout.roads.bridge.to_numpy(bool)]
    if not len(roads):
        return np.zeros(sc.grid.shape, bool)
    decks = shapely.buffer(
        roads.geometry.to_numpy(), roads.width_m.to_numpy() / 2, cap_style="flat"
    )
    return sc.grid.burn(decks).astype(bool)


def _surfaces(
    rng: np.random.Generator, polys: gpd.GeoDataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per road piece: surface material, tone (per band: each scene has its own asphalt)
    and opacity (unpaved tracks are faint). Pieces of one road (split at bridges) share class
    and width, and so their look: the choices are hashed from those."""
    cls = polys.road_class.to_numpy()
    kind = np.array([list(ROAD_WIDTH_M).index(c) if c in ROAD_WIDTH_M else 3 for c in cls])
    width = np.rint(polys.width_m.to_numpy(float) * 10)
    salt = int(rng.integers(2**62))
    pick, shade, fade = (hash01(salt + k, kind, width) for k in range(3))
    cum = np.cumsum([SURFACE_P[c] for c in ROAD_WIDTH_M], axis=1)[kind]
    surface = np.minimum((cum < pick[:, None]).sum(axis=1), len(ROAD_SURFACES) - 1)
    tone = ((0.75 + 0.55 * shade)[:, None] * rng.uniform(0.93, 1.07, (1, 4))).astype(np.float32)
    blend = np.where(cls == "track", 0.45 + 0.4 * fade, 1.0).astype(np.float32)
    return surface, tone, blend


def _markings(rng: np.random.Generator, roads: gpd.GeoDataFrame) -> list[tuple]:
    """(lines, width_m, colour) of lane markings, barriers, track ruts and bridge parapets."""
    geoms = roads.geometry.to_numpy()
    width = roads.width_m.to_numpy()
    cls = roads.road_class.to_numpy()

    def offset(sel: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.array(line_parts(shapely.offset_curve(geoms[sel], d)), dtype=object)

    out = []
    mw, pr = cls == "motorway", cls == "primary"
    sec = (cls == "secondary") & (rng.random(len(cls)) < 0.6)
    tr, br = cls == "track", roads.bridge.to_numpy(bool)
    out.append((geoms[mw], 0.8, BARRIER))
    for sign in (-1, 1):
        out.append((dashes(offset(mw, sign * 0.25 * width[mw]), 6.0, 12.0, rng), 0.2, PAINT))
        out.append((offset(mw, sign * (width[mw] / 2 - 1.0)), 0.25, PAINT))
        out.append((offset(pr, sign * (width[pr] / 2 - 0.4)), 0.15, PAINT))
        out.append((offset(tr, sign * 0.75), 0.35, RUTS))
        out.append((offset(br, sign * (width[br] / 2 - 0.3)), 0.5, BARRIER))
    out.append((dashes(geoms[pr], 3.0, 6.0, rng), 0.15, PAINT))
    out.append((dashes(geoms[sec], 3.0, 9.0, rng), 0.12, PAINT))
    out.append((geoms[tr], 0.6, GRASS))
    return out


def _cars(sc: Scene, obj: Objects, road: np.ndarray, paved: np.ndarray) -> None:
    if not len(obj.cars):
        return
    ids = sc.grid.burn(obj.cars, values=np.arange(1, len(obj.cars) + 1), dtype="int32")
    m = (ids > 0) & (road | paved)
    colour = CARS[obj.car_colour[ids[m] - 1]].T * (1 + 0.05 * sc.noise.fine[m])
    _blend(sc.img, m, colour, 0.9)


def _shadows(sc: Scene, obj: Objects, roofs: np.ndarray) -> None:
    """Cast shadows (lit by the bluish sky only) of buildings, and of bridge decks on water."""
    shade = np.zeros(sc.grid.shape, bool)
    if len(obj.footprints):
        corners = shapely.get_coordinates(obj.footprints).reshape(len(obj.footprints), 5, 2)[:, :4]
        tip = np.stack([sc.shadow_offset(h) for h in obj.heights])[:, None, :]
        hulls = shapely.convex_hull(
            shapely.multipoints(np.concatenate([corners, corners + tip], axis=1))
        )
        shade |= sc.grid.burn(hulls).astype(bool) & ~roofs
    bridges = sc.polygons[sc.polygons.bridge.to_numpy(bool)]
    if len(bridges):
        offset = sc.shadow_offset(6.0)
        moved = shapely.transform(bridges.geometry.to_numpy(), lambda c: c + offset)
        shade |= sc.grid.burn(moved).astype(bool) & (sc.lc == WATER) & ~sc.label.astype(bool)
    sc.img[:, shade] *= SKYLIGHT[:, None]


def _roofs(sc: Scene, obj: Objects, road: np.ndarray) -> None:
    if not len(obj.roofs):
        return
    ids = sc.grid.burn(obj.roofs, values=np.arange(1, len(obj.roofs) + 1), dtype="int32")
    m = (ids > 0) & ~road
    colour = obj.roof_colour[ids[m] - 1].T * (1 + 0.04 * sc.noise.fine[m] + 0.05 * sc.noise.mid[m])
    _blend(sc.img, m, colour, 1.0)


def _blend(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float) -> None:
    """img[:, mask] <- (1 - alpha) img + alpha colour; colour is (4, 1) or (4, n)."""
    if not mask.any():
        return
    img[:, mask] = (
        img[:, mask] * (1 - alpha) + np.asarray(colour, np.float32).reshape(4, -1) * alpha
    )


def _paint_lines(
    sc: Scene, lines: np.ndarray, width_m: float, colour: np.ndarray, within: np.ndarray
) -> None:
    """Thin lines: buffered when wider than a pixel, else one pixel at ``width / gsd`` opacity."""
    if not len(lines):
        return
    gsd = sc.grid.gsd
    if width_m >= 1.2 * gsd:
        mask, alpha = sc.grid.burn(shapely.buffer(lines, width_m / 2, cap_style="flat")), 1.0
    else:
        mask, alpha = sc.grid.burn(lines), width_m / gsd
    _blend(sc.img, mask.astype(bool) & within, colour[:, None], alpha)
