"""Objects placed on the layout: houses with gable roofs and driveways, farmsteads, industrial
halls and lots, parking lots with stalls, and cars on the roads. Most are road-like
distractors (paved surfaces, flat roofs) that the labels leave out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely

from pipeline.synth.geometry import frames, ragged_arange, rects
from pipeline.synth.materials import CAR_P, CARS, FLAT_ROOFS, ROOFS
from pipeline.synth.state import Scene
from pipeline.synth.types import BARE_SOIL, CROPLAND, GRASSLAND, INDUSTRIAL, RESIDENTIAL, Town


@dataclass
class Objects:
    roofs: np.ndarray  # roof polygons (gable halves), local metres
    roof_colour: np.ndarray  # (n, 4) reflectance including sun shading
    footprints: np.ndarray  # building footprints
    heights: np.ndarray  # m
    paved: np.ndarray  # driveways, parking lots, yards
    paved_kind: np.ndarray  # index into PAVED
    cars: np.ndarray
    car_colour: np.ndarray  # index into CARS
    stall_lines: np.ndarray  # parking stall markings (lines)


def place_objects(rng: np.random.Generator, sc: Scene) -> Objects:
    obstacles = _obstacles(sc)
    parts = [_houses(rng, sc, obstacles), _farmsteads(rng, sc, obstacles)]
    for town in sc.layout.towns:
        lots = _industrial_lots(rng, sc, town, obstacles)
        parts.append(lots)
        parts.extend(_parking(rng, lot) for lot in lots["parking"])
    parts.append(_road_cars(rng, sc))

    def cat(key: str, dtype: type = object) -> np.ndarray:
        items = [np.asarray(p[key], dtype=dtype) for p in parts if key in p and len(p[key])]
        return np.concatenate(items) if items else np.empty(0, dtype=dtype)

    return Objects(
        roofs=cat("roofs"),
        roof_colour=cat("roof_colour", np.float32).reshape(-1, 4),
        footprints=cat("footprints"),
        heights=cat("heights", float),
        paved=cat("paved"),
        paved_kind=cat("paved_kind", np.intp),
        cars=cat("cars"),
        car_colour=cat("car_colour", np.intp),
        stall_lines=cat("stall_lines"),
    )


def _obstacles(sc: Scene) -> shapely.STRtree:
    """Where buildings may not go: roads (plus a margin), railways, water."""
    geoms = list(shapely.buffer(sc.polygons.geometry.to_numpy(), 1.5))
    geoms += [shapely.buffer(r, 4.0) for r in sc.layout.rails]
    if not sc.layout.water.is_empty:
        geoms.append(sc.layout.water)
    return shapely.STRtree(geoms)


def _free(candidates: np.ndarray, obstacles: shapely.STRtree) -> np.ndarray:
    """Mask of candidates that touch no obstacle and no earlier kept candidate."""
    ok = np.ones(len(candidates), bool)
    if not len(candidates):
        return ok
    hit, _ = obstacles.query(candidates, predicate="intersects")
    ok[hit] = False
    a, b = shapely.STRtree(candidates).query(candidates, predicate="intersects")
    for i, j in zip(a[a < b], b[a < b], strict=True):
        if ok[i] and ok[j]:
            ok[j] = False
    return ok


def _houses(rng: np.random.Generator, sc: Scene, obstacles: shapely.STRtree) -> dict:
    """Houses along streets in residential areas, gable roofs, most with a driveway."""
    roads = sc.layout.roads[
        sc.layout.roads.road_class.isin(["residential", "secondary", "primary"])
    ]
    lines = roads.geometry.to_numpy()
    width = roads.width_m.to_numpy()
    spacing = 17.0
    counts = (
        (shapely.length(lines) // spacing).astype(np.intp) if len(lines) else np.zeros(0, np.intp)
    )
    idx = np.repeat(np.arange(len(lines)), 2 * counts)
    n = len(idx)
    dist = spacing * (0.5 + ragged_arange(2 * counts) // 2) + rng.uniform(-2.5, 2.5, n)
    side = np.where(ragged_arange(2 * counts) % 2 == 0, 1.0, -1.0)[:, None]
    p, t, nrm = frames(lines[idx], dist)
    along, depth = rng.uniform(9, 17, n), rng.uniform(8, 13, n)
    setback = rng.uniform(3, 8, n)
    centre = p + side * nrm * (width[idx] / 2 + setback + depth / 2)[:, None]
    footprint = rects(centre, t, nrm, along, depth)
    row, col = sc.grid.pixel(centre)
    keep = (
        (sc.lc[row, col] == RESIDENTIAL) & _free(footprint, obstacles) if n else np.zeros(0, bool)
    )
    return _house_parts(
        rng,
        sc,
        centre[keep],
        t[keep],
        nrm[keep] * side[keep],
        along[keep],
        depth[keep],
        footprint[keep],
        setback[keep],
    )


def _house_parts(
    rng: np.random.Generator,
    sc: Scene,
    centre: np.ndarray,
    t: np.ndarray,
    towards_house: np.ndarray,
    along: np.ndarray,
    depth: np.ndarray,
    footprint: np.ndarray,
    setback: np.ndarray,
) -> dict:
    """Gable roofs with colours by town style, driveways to the street."""
    n = len(centre)
    towns = sc.layout.towns
    style = np.zeros(n, np.intp)
    for k, town in enumerate(towns):
        inside = (
            shapely.contains_xy(town.polygon, centre[:, 0], centre[:, 1])
            if n
            else np.zeros(0, bool)
        )
        style[inside] = k
    palette = (
        np.array([t.roof_p for t in towns]) if towns else np.ones((1, len(ROOFS))) / len(ROOFS)
    )
    roofs, colour = _gable_roofs(rng, sc, centre, t, towards_house, along, depth, palette[style])
    has_drive = rng.random(n) < 0.6
    shift = rng.uniform(-0.3, 0.3, n) * along
    start = centre - towards_house * (depth / 2)[:, None] + t * shift[:, None]
    mid = start - towards_house * (setback / 2)[:, None]  # from the house front to the road edge
    drives = rects(
        mid[has_drive],
        towards_house[has_drive],
        t[has_drive],
        setback[has_drive] + 1.0,
        np.full(int(has_drive.sum()), 3.0),
    )
    return dict(
        roofs=roofs,
        roof_colour=colour,
        footprints=footprint,
        heights=rng.uniform(3.5, 6.5, n),
        paved=drives,
        paved_kind=rng.choice([0, 1, 2, 3], int(has_drive.sum()), p=[0.4, 0.3, 0.2, 0.1]),
    )


def _gable_roofs(
    rng: np.random.Generator,
    sc: Scene,
    centre: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    palette: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Two roof planes per building (``a`` along ``u``, ``b`` along ``v``), ridge along the
    longer side, each plane lit by the sun; colours drawn per building from ``palette`` rows."""
    n = len(centre)
    long_u = a >= b
    e1 = np.where(long_u[:, None], u, v)
    e2 = np.where(long_u[:, None], v, u)
    la, lb = np.where(long_u, a, b), np.where(long_u, b, a)
    halves = np.concatenate(
        [rects(centre, e1, e2, la, lb, 0.0, 0.5), rects(centre, e1, e2, la, lb, -0.5, 0.0)]
    )
    pitch = math.radians(35)
    sun = sc.sun_vector
    shade = []
    for sign in (1.0, -1.0):
        normal = np.concatenate(
            [sign * e2 * math.sin(pitch), np.full((n, 1), math.cos(pitch))], axis=1
        )
        shade.append(np.clip(normal @ sun / sun[2], 0.35, 1.5))
    cum = np.cumsum(palette, axis=1) if n else np.zeros((0, len(ROOFS)))
    kind = np.minimum((cum < rng.random(n)[:, None]).sum(axis=1), len(ROOFS) - 1)
    base = ROOFS[kind] * rng.uniform(0.85, 1.15, (n, 1)).astype(np.float32)
    colour = np.concatenate([base * shade[0][:, None], base * shade[1][:, None]]).astype(np.float32)
    return halves, colour


def _farmsteads(rng: np.random.Generator, sc: Scene, obstacles: shapely.STRtree) -> dict:
    """Farms beside rural roads: a concrete or gravel yard, a driveway and a few large barns."""
    roads = sc.layout.roads[sc.layout.roads.road_class.isin(["primary", "secondary", "track"])]
    wanted = int(rng.poisson(2.5 * (sc.grid.extent / 1000) ** 2))
    roofs, colours, footprints, heights, paved, kinds = [], [], [], [], [], []
    palette = np.array([[0.3, 0.25, 0.15, 0.2, 0.1]])
    for _ in range(wanted if len(roads) else 0):
        k = int(rng.integers(len(roads)))
        line, width = roads.geometry.iloc[k], float(roads.width_m.iloc[k])
        p, t, nrm = frames(np.array([line]), rng.uniform(0, line.length, 1))
        nrm = nrm * rng.choice([-1.0, 1.0])
        a, b = rng.uniform(35, 70), rng.uniform(30, 55)
        centre = p + nrm * (width / 2 + 6 + b / 2)
        yard = rects(centre, t, nrm, [a], [b])
        row, col = sc.grid.pixel(centre)
        if (
            sc.lc[row[0], col[0]] not in (CROPLAND, GRASSLAND, BARE_SOIL)
            or not _free(yard, obstacles).all()
        ):
            continue
        drive = rects(p + nrm * (width / 2 + 3.5), nrm, t, [8.0], [5.0])
        n = int(rng.integers(2, 5))
        along, depth = rng.uniform(12, 30, n), rng.uniform(9, 16, n)
        slots = rng.permutation(3)[:n] if n <= 3 else np.array([0, 1, 2, 0])
        # barns stand along the back and the sides of the yard
        u_off = np.where(
            slots == 1, -a / 2 + depth / 2 + 1, np.where(slots == 2, a / 2 - depth / 2 - 1, 0.0)
        )
        v_off = np.where(slots == 0, b / 2 - depth / 2 - 1, rng.uniform(-b / 4, b / 4, n))
        u_axis = np.where((slots == 0)[:, None], t, nrm)
        v_axis = np.where((slots == 0)[:, None], nrm, t)
        bc = centre + t * u_off[:, None] + nrm * v_off[:, None]
        barns = rects(bc, u_axis, v_axis, np.minimum(along, np.where(slots == 0, a, b) - 4), depth)
        keep = _free(barns, shapely.STRtree([]))
        r, c = _gable_roofs(
            rng,
            sc,
            bc[keep],
            u_axis[keep],
            v_axis[keep],
            np.minimum(along, np.where(slots == 0, a, b) - 4)[keep],
            depth[keep],
            np.repeat(palette, int(keep.sum()), axis=0),
        )
        roofs.extend(r)
        colours.append(c)
        footprints.extend(barns[keep])
        heights.extend(rng.uniform(5, 9, int(keep.sum())))
        paved.extend([yard[0], drive[0]])
        kinds.extend([int(rng.choice([1, 3])), 3])
    return dict(
        roofs=np.array(roofs, dtype=object),
        roof_colour=np.concatenate(colours) if colours else np.empty((0, 4), np.float32),
        footprints=np.array(footprints, dtype=object),
        heights=np.array(heights),
        paved=np.array(paved, dtype=object),
        paved_kind=np.array(kinds, np.intp),
    )


def _industrial_lots(
    rng: np.random.Generator, sc: Scene, town: Town, obstacles: shapely.STRtree
) -> dict:
    """Blocks of the street grid in industrial cells: halls, parking lots, concrete yards."""
    e1, e2 = town.axes
    halls, heights, colours, paved, kinds, parking = [], [], [], [], [], []
    for i in range(len(town.xs) - 1):
        for j in range(len(town.ys) - 1):
            mid = np.array([(town.xs[i] + town.xs[i + 1]) / 2, (town.ys[j] + town.ys[j + 1]) / 2])
            centre = town.to_local(mid[None])
            row, col = sc.grid.pixel(centre)
            if sc.lc[row[0], col[0]] != INDUSTRIAL:
                continue
            a = town.xs[i + 1] - town.xs[i] - rng.uniform(12, 18)
            b = town.ys[j + 1] - town.ys[j] - rng.uniform(12, 18)
            lot = rects(centre, e1[None], e2[None], [a], [b])
            if a < 15 or b < 15 or not _free(lot, obstacles).all():
                continue
            kind = rng.choice(3, p=[0.55, 0.25, 0.20])
            if kind == 0:
                scale = rng.uniform(0.6, 0.95, 2)
                halls.append(rects(centre, e1[None], e2[None], [a * scale[0]], [b * scale[1]])[0])
                heights.append(rng.uniform(7, 15))
                colours.append(FLAT_ROOFS[rng.choice(len(FLAT_ROOFS))] * rng.uniform(0.9, 1.1))
                paved.append(lot[0])
                kinds.append(1)
            elif kind == 1:
                paved.append(lot[0])
                kinds.append(0)
                parking.append((centre[0], e1, e2, a, b))
            else:
                paved.append(lot[0])
                kinds.append(int(rng.choice([1, 3])))
    return dict(
        roofs=np.array(halls, dtype=object),
        footprints=np.array(halls, dtype=object),
        heights=np.array(heights),
        roof_colour=np.array(colours, np.float32).reshape(-1, 4),
        paved=np.array(paved, dtype=object),
        paved_kind=np.array(kinds, np.intp),
        parking=parking,
    )


def _parking(rng: np.random.Generator, lot: tuple) -> dict:
    """Stall rows (5 m deep, 2.5 m wide) facing 6.5 m aisles; cars in some stalls."""
    centre, e1, e2, a, b = lot
    row_v = []
    v = -b / 2 + 1.0
    while v + 5.0 <= b / 2:
        row_v.append(v + 2.5)
        v += 5.0 if len(row_v) % 2 else 11.5  # stall rows back to back, then an aisle
    n_across = int((a - 2) // 2.5)
    if not row_v or n_across < 1:
        return {}
    us = -a / 2 + 1.0 + 2.5 * (np.arange(n_across) + 0.5)
    uu, vv = np.meshgrid(us, np.array(row_v))
    stall = centre + uu.reshape(-1, 1) * e1 + vv.reshape(-1, 1) * e2
    occupied = rng.random(len(stall)) < rng.uniform(0.3, 0.9)
    k = int(occupied.sum())
    cars = rects(
        stall[occupied],
        np.tile(e2, (k, 1)),
        np.tile(e1, (k, 1)),
        rng.uniform(4.2, 4.8, k),
        np.full(k, 1.85),
    )
    edges = stall - 1.25 * e1
    lines = shapely.linestrings(np.stack([edges - 2.5 * e2, edges + 2.5 * e2], axis=1))
    return dict(cars=cars, car_colour=rng.choice(len(CARS), k, p=CAR_P), stall_lines=lines)


def _road_cars(rng: np.random.Generator, sc: Scene) -> dict:
    """Cars in lanes (parked at the kerb in residential streets), aligned with the road."""
    per_m = {
        "motorway": 1 / 35,
        "primary": 1 / 50,
        "secondary": 1 / 90,
        "residential": 1 / 45,
        "track": 1 / 3000,
    }
    roads = sc.layout.roads
    lines = roads.geometry.to_numpy()
    if not len(lines):
        return {}
    density = roads.road_class.map(per_m).to_numpy(float)
    counts = rng.poisson(shapely.length(lines) * density)
    idx = np.repeat(np.arange(len(lines)), counts)
    n = len(idx)
    p, t, nrm = frames(lines[idx], rng.uniform(0, 1, n) * shapely.length(lines[idx]))
    w = roads.width_m.to_numpy()[idx]
    cls = roads.road_class.to_numpy()[idx]
    lane = np.where(cls == "motorway", rng.choice([0.15, 0.35], n), 0.25) * w
    lane = np.where(cls == "residential", w / 2 - 1.1, lane) * rng.choice([-1.0, 1.0], n)
    truck = rng.random(n) < np.where(np.isin(cls, ["motorway", "primary"]), 0.15, 0.02)
    length = np.where(truck, rng.uniform(10, 16, n), rng.uniform(4.2, 4.9, n))
    cars = rects(p + nrm * lane[:, None], t, nrm, length, np.where(truck, 2.5, 1.85))
    return dict(cars=cars, car_colour=rng.choice(len(CARS), n, p=CAR_P))
