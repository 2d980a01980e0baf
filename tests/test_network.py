"""Road networks from probability rasters: real GeoTIFFs with roads of known geometry."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import pytest
from affine import Affine

from pipeline import raster
from pipeline.cli import main
from pipeline.config import NetworkParams
from pipeline.network import NetworkError, build_network, metres_per_pixel, network_raster
from pipeline.network_io import network_frames, simplify_paths

UTM = "EPSG:32632"
# small grids so that a 200 px raster spans several blocks and skeleton tiles
SMALL = dict(block_size=64, skeleton_tile=32, skeleton_halo_px=16, seam_margin_px=16)


def draw(shape, segments, width=4.0):
    """Probability raster with roads: segments (row0, col0, row1, col1, probability)."""
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    out = np.zeros(shape, np.float32)
    for r0, c0, r1, c1, value in segments:
        d = np.array([r1 - r0, c1 - c0], float)
        length = float(np.hypot(*d))
        d /= length
        t = np.clip((rr - r0) * d[0] + (cc - c0) * d[1], 0, length)
        dist = np.hypot(rr - (r0 + t * d[0]), cc - (c0 + t * d[1]))
        out = np.where(dist <= width / 2, np.maximum(out, value), out)
    return out


def write_prob(path, prob, crs=UTM, transform=None, threshold=0.5):
    """As predict writes it: a uint8 COG, p = value / 254, 255 = nodata, threshold tag."""
    transform = transform or Affine(1.0, 0, 500000.0, 0, -1.0, 5400000.0)
    values = np.rint(np.nan_to_num(prob, nan=255 / 254) * 254).astype(np.uint8)
    with raster.stream_cog(
        path,
        width=prob.shape[1],
        height=prob.shape[0],
        crs=crs,
        transform=transform,
        dtype="uint8",
        nodata=255,
        scale=1 / 254,
        tags={"threshold": threshold},
    ) as writer:
        writer.write(values, 0, 0)
    return path


def layers(path):
    return gpd.read_file(path, layer="edges"), gpd.read_file(path, layer="nodes")


def test_cross_is_one_junction_of_degree_four(tmp_path):
    prob = draw((200, 200), [(100, 5, 100, 195, 0.9), (5, 100, 195, 100, 0.9)])
    out = network_raster(
        write_prob(tmp_path / "p.tif", prob), tmp_path / "net.gpkg", NetworkParams(**SMALL)
    )
    edges, nodes = layers(out)
    assert sorted(nodes.degree) == [1, 1, 1, 1, 4]
    assert len(edges) == 4
    assert edges.crs == pyproj.CRS(UTM)
    junction = nodes[nodes.degree == 4].geometry.iloc[0]
    assert junction.distance(gpd.points_from_xy([500100.5], [5399899.5])[0]) < 2.0
    # each arm runs from the centre to about 5 px from the edge: ~95 m at 1 m pixels
    assert np.allclose(edges.length_m, 95, atol=4)
    assert np.allclose(edges.length_m, edges.length)  # metres = CRS units here
    assert set(edges.u) | set(edges.v) == set(nodes.node_id)
    assert np.allclose(edges.mean_prob, 0.9, atol=0.01)
    assert (edges.min_prob <= edges.mean_prob).all()


@pytest.mark.parametrize(("gap_prob", "bridged"), [(0.3, True), (0.0, False)])
def test_gap_bridged_only_where_probability_says_road(tmp_path, gap_prob, bridged):
    prob = draw((120, 200), [(60, 5, 60, 195, 0.9)])
    prob[:, 97:103] = np.where(prob[:, 97:103] > 0, gap_prob, 0)  # a 6 m gap: tree, shadow
    path = write_prob(tmp_path / "p.tif", prob)
    edges, _ = network_frames(build_network(path, NetworkParams(**SMALL)), 1.0)
    assert len(edges) == (1 if bridged else 2)
    if bridged:
        assert edges.length_m.iloc[0] == pytest.approx(190, abs=4)
        assert edges.min_prob.iloc[0] == pytest.approx(0.3, abs=0.01)
    raw, _ = network_frames(build_network(path, NetworkParams(**SMALL, repair=False)), 1.0)
    assert len(raw) == 2  # without repair the gap stays


def test_short_spur_pruned_long_branch_kept(tmp_path):
    roads = [(60, 5, 60, 195, 0.9), (60, 60, 68, 60, 0.9), (60, 140, 115, 140, 0.9)]
    path = write_prob(tmp_path / "p.tif", draw((120, 200), roads))
    edges, nodes = network_frames(build_network(path, NetworkParams(**SMALL, spur_min_m=12)), 1)
    assert len(edges) == 3  # the 40 m branch makes a junction; the ~8 m stub is gone
    assert sorted(nodes.degree) == [1, 1, 1, 3]
    raw, _ = network_frames(build_network(path, NetworkParams(**SMALL, repair=False)), 1.0)
    assert len(raw) == 5


def test_road_crossing_block_seams_is_one_edge(tmp_path):
    # a diagonal road through blocks of 64 px: it crosses 5 seams
    path = write_prob(tmp_path / "p.tif", draw((200, 200), [(10, 20, 190, 170, 0.9)]))
    for params in (NetworkParams(**SMALL), NetworkParams(**{**SMALL, "block_size": 256})):
        edges, nodes = network_frames(build_network(path, params), 1.0)
        assert len(edges) == 1
        assert sorted(nodes.degree) == [1, 1]
        assert edges.length_m.iloc[0] == pytest.approx(math.hypot(180, 150), abs=4)


def _signature(path, **changes):
    edges, nodes = network_frames(build_network(path, NetworkParams(**{**SMALL, **changes})), 1.0)
    e = sorted(
        (
            round(g.length, 3),
            tuple(np.round(g.coords[0], 2)),
            tuple(np.round(g.coords[-1], 2)),
            round(float(m), 4),
            round(float(n), 4),
        )
        for g, m, n in zip(edges.geometry, edges.mean_prob, edges.min_prob, strict=True)
    )
    n = sorted(
        (int(d), round(p.x, 2), round(p.y, 2))
        for d, p in zip(nodes.degree, nodes.geometry, strict=True)
    )
    return e, n


@pytest.mark.parametrize("repair", [False, True])
def test_same_network_whatever_the_block_size(tmp_path, repair):
    rng = np.random.default_rng(1)
    roads = [(*rng.uniform(0, 300, 4), rng.uniform(0.55, 1.0)) for _ in range(10)]
    prob = draw((300, 300), roads, width=5)
    prob = np.clip(prob + rng.normal(0, 0.05, prob.shape) * (prob > 0), 0, 1)
    prob[140:150, 0:40] = np.nan  # nodata
    path = write_prob(tmp_path / "p.tif", prob)
    whole = _signature(path, repair=repair, block_size=320)
    assert len(whole[0]) > 10
    for block in (64, 96, 160):
        assert _signature(path, repair=repair, block_size=block) == whole


@pytest.mark.slow
def test_same_network_whatever_the_worker_count(tmp_path):
    rng = np.random.default_rng(2)
    roads = [(*rng.uniform(0, 300, 4), rng.uniform(0.55, 1.0)) for _ in range(10)]
    path = write_prob(tmp_path / "p.tif", draw((300, 300), roads, width=5))
    serial = _signature(path, block_size=96)
    assert len(serial[0]) > 10
    assert _signature(path, block_size=96, workers=2) == serial
    assert _signature(path, block_size=160, workers=2) == serial


def test_web_mercator_raster_lengths_are_ground_metres(tmp_path):
    """EPSG:3857 pixels of 1.5 "metres" at 48 N are 1.0 m on the ground: edge lengths and the
    pruning and bridging lengths in metres follow the ground, not the projection's unit."""
    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(7, 48)
    transform = Affine(1.5, 0, x0, 0, -1.5, y0)
    prob = draw((200, 260), [(100, 5, 100, 255, 0.9), (5, 130, 195, 130, 0.9)], width=6)
    path = write_prob(tmp_path / "p.tif", prob, crs="EPSG:3857", transform=transform)
    rows_m, cols_m = metres_per_pixel(raster.raster_info(path))
    assert rows_m == pytest.approx(1.5 * math.cos(math.radians(48)), rel=0.01)
    assert cols_m == pytest.approx(rows_m, rel=0.01)
    edges, nodes = layers(network_raster(path, tmp_path / "n.gpkg", NetworkParams(**SMALL)))
    assert sorted(nodes.degree) == [1, 1, 1, 1, 4]
    to_geo = pyproj.Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    geod = pyproj.Geod(ellps="WGS84")
    for line, length in zip(edges.geometry, edges.length_m, strict=True):
        (ax, ay), (bx, by) = (to_geo.transform(*xy) for xy in (line.coords[0], line.coords[-1]))
        assert length == pytest.approx(geod.inv(ax, ay, bx, by)[2], rel=0.01)
        assert length < 0.7 * line.length  # the projection's "metres" are 1.49x too long here


def test_geographic_raster_lengths_in_metres(tmp_path):
    res = 1e-5  # degrees: ~1.11 m north-south, ~0.74 m east-west at 48 N
    transform = Affine(res, 0, 7.0, 0, -res, 48.0)
    prob = draw((200, 260), [(100, 5, 100, 255, 0.9), (5, 130, 195, 130, 0.9)], width=6)
    path = write_prob(tmp_path / "p.tif", prob, crs="EPSG:4326", transform=transform)
    edges, nodes = layers(network_raster(path, tmp_path / "n.gpkg", NetworkParams(**SMALL)))
    assert edges.crs == pyproj.CRS("EPSG:4326")
    assert sorted(nodes.degree) == [1, 1, 1, 1, 4]
    geod = pyproj.Geod(ellps="WGS84")
    for line, length in zip(edges.geometry, edges.length_m, strict=True):
        (x0, y0), (x1, y1) = line.coords[0], line.coords[-1]
        assert length == pytest.approx(geod.inv(x0, y0, x1, y1)[2], rel=0.01)
    east_west = edges[[abs(g.coords[0][1] - g.coords[-1][1]) < 1e-9 for g in edges.geometry]]
    assert np.allclose(
        east_west.length_m, 125 * res * 111_320 * math.cos(math.radians(48)), rtol=0.05
    )


def test_a_tile_on_the_local_grid_of_a_tile_set_is_measured_in_metres(tmp_path):
    """Tile sets without georeferencing get a local engineering CRS (no linear units in
    PROJ's sense): the network of such a tile's probability is still in metres."""
    prob = draw((100, 160), [(50, 5, 50, 155, 0.8)])
    crs, transform = raster.local_grid(0.5, 100)
    path = raster.write_geotiff(tmp_path / "tile.tif", prob, crs=crs, transform=transform)
    edges, _ = network_frames(build_network(path, NetworkParams(**SMALL), threshold=0.5), 0.5)
    assert len(edges) == 1
    assert edges.length_m.iloc[0] == pytest.approx(148 * 0.5, abs=3)


def test_float_raster_of_another_tool(tmp_path):
    prob = draw((100, 160), [(50, 5, 50, 155, 0.8)])
    prob[:, :3] = np.nan
    path = raster.write_geotiff(
        tmp_path / "other.tif",
        prob,
        crs=UTM,
        transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5400000.0),
        nodata=float("nan"),
    )
    edges, _ = network_frames(build_network(path, NetworkParams(**SMALL), threshold=0.5), 0.5)
    assert len(edges) == 1
    assert edges.length_m.iloc[0] == pytest.approx(148 * 0.5, abs=3)


def test_unscaled_byte_raster_is_refused(tmp_path, capsys):
    prob = draw((64, 64), [(32, 2, 32, 62, 1.0)]) * 255
    path = raster.write_geotiff(
        tmp_path / "bytes.tif",
        prob.astype(np.uint8),
        crs=UTM,
        transform=Affine(1, 0, 500000.0, 0, -1, 5400000.0),
    )
    with pytest.raises(NetworkError, match="gdal_edit.py -scale"):
        build_network(path, NetworkParams(**SMALL), threshold=0.5)
    assert main(["network", str(path), "--threshold", "0.5"]) == 2
    assert "not probabilities in 0..1" in capsys.readouterr().err
    assert not (tmp_path / "bytes_network.gpkg").exists()


def test_cli_writes_once_and_needs_overwrite(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults
    write_prob(tmp_path / "p.tif", draw((100, 100), [(50, 5, 50, 95, 0.9)]))
    killed = tmp_path / ".n.gpkg.0badf00d.part.gpkg"  # what a run killed by SIGKILL leaves
    killed.write_bytes(b"half a GeoPackage")
    assert main(["network", "p.tif", "-o", "n.gpkg"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.gpkg", "p.tif"]  # no lock either
    edges, nodes = layers(tmp_path / "n.gpkg")
    assert len(edges) == 1 and list(nodes.degree) == [1, 1]
    assert main(["network", "p.tif", "-o", "n.gpkg"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["network", "p.tif", "-o", "n.gpkg", "--overwrite", "--no-repair"]) == 0


def test_cli_refuses_outputs_it_would_write_wrongly_before_any_work(tmp_path, capsys, monkeypatch):
    """A folder, a name of another format, the input itself, and a GeoPackage holding a layer
    of the user's: each refused in one line, nothing written (a folder came out as a file
    named like it, net.geojson as a GeoPackage, prob.tif replaced by one, the user's layer
    deleted by --overwrite)."""
    import geopandas as gpd
    from shapely.geometry import Point

    monkeypatch.chdir(tmp_path)
    write_prob(tmp_path / "p.tif", draw((100, 100), [(50, 5, 50, 95, 0.9)]))
    before = (tmp_path / "p.tif").read_bytes()
    (tmp_path / "nets").mkdir()
    parcels = gpd.GeoDataFrame({"id": [1]}, geometry=[Point(500010, 5399990)], crs=UTM)
    parcels.to_file(tmp_path / "project.gpkg", layer="parcels", driver="GPKG")
    cases = {
        "nets/": "is a folder; name the file to write in it",
        "new/": "is a folder",
        "net.geojson": "this output is written as .gpkg; give it that suffix",
        "p.tif": "this output is written as .gpkg",
        "project.gpkg": "holds layers this command does not write (parcels)",
    }
    for out, said in cases.items():
        assert main(["network", "p.tif", "-o", out, "--overwrite"]) == 2, out
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, (out, err)
    assert (tmp_path / "p.tif").read_bytes() == before
    assert not (tmp_path / "new").exists() and not (tmp_path / "net.geojson").exists()
    assert list((tmp_path / "nets").iterdir()) == []
    assert [n for n, _ in pyogrio.list_layers(tmp_path / "project.gpkg")] == ["parcels"]
    # a GeoPackage of this command's own layers is replaced as asked
    assert main(["network", "p.tif", "-o", "n.gpkg"]) == 0
    assert main(["network", "p.tif", "-o", "n.gpkg", "--overwrite"]) == 0


def test_empty_raster_gives_empty_layers(tmp_path):
    path = write_prob(tmp_path / "p.tif", np.zeros((80, 80), np.float32))
    edges, nodes = layers(network_raster(path, tmp_path / "n.gpkg", NetworkParams(**SMALL)))
    assert len(edges) == 0 and len(nodes) == 0
    assert {"edge_id", "u", "v", "length_m", "mean_prob", "min_prob"} <= set(edges.columns)


def test_predict_batch_places_network_files(tmp_path):
    from pipeline.predict_batch import batch_targets

    (tmp_path / "nets").mkdir()
    targets = batch_targets([tmp_path / "a.tif", tmp_path / "b.tif"], network=tmp_path / "nets")
    assert [t.network for t in targets] == [
        tmp_path / "nets" / "a_roads_network.gpkg",
        tmp_path / "nets" / "b_roads_network.gpkg",
    ]
    with pytest.raises(ValueError, match="--network must be a folder"):
        batch_targets([tmp_path / "a.tif", tmp_path / "b.tif"], network=tmp_path / "n.gpkg")


@pytest.mark.slow
def test_predict_writes_the_network_with_the_models_threshold(
    tmp_path, scenes_dir, scheduler, monkeypatch
):
    from pipeline.model import ModelConfig, build_unet, save_model

    monkeypatch.chdir(tmp_path)  # no params.yaml: defaults
    cfg = ModelConfig(
        encoder="resnet18", bands=["red", "green", "blue", "nir"], mean=[120.0] * 4,
        std=[50.0] * 4, chip_size=64, threshold=0.5,
    )  # fmt: skip
    model = save_model(build_unet(cfg), cfg, tmp_path / "model")
    image = scenes_dir / "s1.tif"
    args = ["predict", str(image), "--model", str(model), "-o", "p.tif", "--window", "64"]
    args += ["--overlap", "16"]
    assert main([*args, "--scheduler", scheduler, "-q", "--network", "net.gpkg"]) == 0
    edges, nodes = layers(tmp_path / "net.gpkg")
    assert edges.crs == pyproj.CRS(UTM) and nodes.crs == pyproj.CRS(UTM)
    assert set(edges.u) | set(edges.v) <= set(nodes.node_id)
    assert raster.raster_tags(tmp_path / "p.tif")["threshold"] == "0.5"
    assert main([*args, "--scheduler", scheduler, "-q", "--network", "net.gpkg"]) == 2  # exists


def test_loose_end_bridged_onto_an_edge(tmp_path):
    # a side road fades to probability 0.3 over the 12 m before the main road (a tree)
    prob = draw((160, 200), [(40, 5, 40, 195, 0.9), (40, 100, 150, 100, 0.3)])
    prob = np.maximum(prob, draw((160, 200), [(54, 100, 150, 100, 0.9)]))
    path = write_prob(tmp_path / "p.tif", prob)
    edges, nodes = network_frames(build_network(path, NetworkParams(**SMALL)), 1.0)
    assert sorted(nodes.degree) == [1, 1, 1, 3]  # a T junction on the main road
    assert len(edges) == 3
    _, raw = network_frames(build_network(path, NetworkParams(**SMALL, repair=False)), 1.0)
    assert sorted(raw.degree) == [1, 1, 1, 1]


def test_junction_cluster_merged_into_one_node(tmp_path):
    # two side roads meet the main road 3 m apart, from either side: one crossing
    roads = [(60, 5, 60, 195, 0.9), (5, 99, 60, 99, 0.9), (60, 102, 115, 102, 0.9)]
    path = write_prob(tmp_path / "p.tif", draw((120, 200), roads))
    _, nodes = network_frames(build_network(path, NetworkParams(**SMALL)), 1.0)
    assert sorted(nodes.degree) == [1, 1, 1, 1, 4]
    params = NetworkParams(**SMALL, junction_merge_m=0, spur_min_m=0)
    _, raw = network_frames(build_network(path, params), 1.0)
    assert sorted(raw.degree) == [1, 1, 1, 1, 3, 3]


def test_repair_samples_the_probability_the_file_holds_across_tiles(tmp_path):
    """The sampler repair reads probabilities through (tiles of the file in a small cache):
    points spread over many tiles, in any order, some outside the raster or on nodata, get
    exactly the file's value, NaN where there is none."""
    from pipeline.network import _Sampler

    rng = np.random.default_rng(0)
    prob = rng.random((1300, 1100)).astype(np.float32)
    prob[:40, :] = np.nan
    path = write_prob(tmp_path / "p.tif", prob)
    expected = np.rint(np.nan_to_num(prob, nan=255 / 254) * 254) / 254
    expected[:40, :] = np.nan
    points = np.column_stack([rng.integers(-50, 1350, 5000), rng.integers(-50, 1150, 5000)])
    inside = (points >= 0).all(axis=1) & (points[:, 0] < 1300) & (points[:, 1] < 1100)
    with raster.open_reader(path) as reader:
        sampler = _Sampler(reader, raster.band_scaling(path))
        sampler.KEEP = 3  # tiles are dropped and read again
        got = sampler(points.astype(float))
        one = sampler(points[inside][:1].astype(float))
    want = np.full(len(points), np.nan)
    want[inside] = expected[points[inside, 0], points[inside, 1]]
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(one, want[inside][:1], rtol=1e-6)


def test_edges_are_simplified_within_the_tolerance_and_rings_stay_rings():
    """Douglas-Peucker in metres: a pixel staircase becomes its straight line, both ends kept;
    a thin ring that plain Douglas-Peucker folds onto itself (3 points, there and back) is
    simplified with topology preserved instead and stays a ring; nothing moves farther than
    the tolerance."""
    import shapely

    stairs = np.array([(k // 2, (k + 1) // 2) for k in range(21)], float)  # (0,0) (0,1) (1,1) ...
    ring = np.array(
        [
            (620, 402),
            (619, 402),
            (618, 402),
            (617, 402),
            (616, 402),
            (615, 401),
            (615, 401),
            (616, 401),
            (617, 401),
            (618, 401),
            (619, 401),
            (620, 402),
        ],
        float,
    )  # fmt: skip  (a skeleton loop of a 16384² network)
    folded = shapely.simplify(shapely.LineString(ring), 1.0, preserve_topology=False)
    assert len(folded.coords) == 3 and not folded.is_simple
    out_stairs, out_ring, out_short = simplify_paths([stairs, ring, stairs[:2]], (1.0, 1.0), 1.0)
    assert out_stairs.tolist() == [[0, 0], [10, 10]]
    assert 4 <= len(out_ring) < len(ring) and (out_ring[0] == out_ring[-1]).all()
    assert shapely.LineString(out_ring).is_simple
    assert shapely.hausdorff_distance(shapely.LineString(ring), shapely.LineString(out_ring)) <= 1
    assert (out_short == stairs[:2]).all()
    # in metres: at 0.5 m pixels the staircase's 0.7 px wiggle is under 1 m, at 2 m it is not
    assert len(simplify_paths([stairs], (0.5, 0.5), 1.0)[0]) == 2
    assert len(simplify_paths([stairs], (2.0, 2.0), 1.0)[0]) > 2


def test_a_block_keeps_the_steps_it_owns_as_a_per_path_walk_would():
    """trace_block judges every path step of a block at once; the pieces must be what walking
    skan's paths one by one gives (each run of steps whose row-major first pixel lies in the
    block, the run's pixels and probabilities), in the same order."""
    from skan import Skeleton as SkanSkeleton
    from skimage.morphology import skeletonize

    from pipeline.network import _before, _runs, _View, trace_block

    rng = np.random.default_rng(4)
    mask = np.zeros((96, 96), bool)
    for _ in range(12):  # random thick strokes: junctions, loops, ends, paths across the block
        r, c = rng.integers(0, 96, 2)
        dr, dc = rng.integers(-40, 41, 2)
        for t in np.linspace(0, 1, 80):
            rr, cc = int(r + t * dr), int(c + t * dc)
            mask[max(rr - 1, 0) : rr + 2, max(cc - 1, 0) : cc + 2] = True
    skeleton = skeletonize(mask)
    rows, cols = np.nonzero(skeleton)
    probs = rng.random(len(rows)).astype(np.float32)
    origin, block = (100, 200), (124, 224, 164, 264)  # the block: 40 x 40 inside the view
    view = _View(block, origin, skeleton.shape, rows, cols, probs)

    image = np.zeros(skeleton.shape, bool)
    image[rows, cols] = True
    prob_image = np.zeros(skeleton.shape, np.float32)
    prob_image[rows, cols] = probs
    # isolated pixels are dropped by trace_block before skan; here there are none to drop
    assert all(
        image[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].sum() > 1
        for r, c in zip(rows, cols, strict=True)
    )
    skan = SkanSkeleton(image)
    coords = np.asarray(skan.coordinates).astype(np.int64)
    expected = []
    r0, c0, r1, c1 = block
    for i in range(skan.n_paths):
        local = coords[skan.path(i)]
        path = local + origin
        first = np.where(_before(path[:-1], path[1:])[:, None], path[:-1], path[1:])
        own = (first[:, 0] >= r0) & (first[:, 0] < r1) & (first[:, 1] >= c0) & (first[:, 1] < c1)
        for a, b in _runs(own):
            expected.append((path[a : b + 2], prob_image[local[a : b + 2, 0], local[a : b + 2, 1]]))

    got = trace_block(view)
    assert len(expected) > 5 and len(got) == len(expected)
    for (gp, gq), (ep, eq) in zip(got, expected, strict=True):
        assert (gp == ep).all() and (gq == eq).all()


def test_dead_ends_are_carried_on_while_the_road_goes_on():
    """A 20 m piece of a road that runs on both ways (probability 0.9 from column 10 to 90 of
    row 50): each end is carried on along its direction, at most 30 m, the second end once the
    first one's extension has replaced the edge they share; a T's spur stops where its road
    does."""
    import networkx as nx

    from pipeline.network_repair import add_edge, extend_ends

    def sample(points: np.ndarray) -> np.ndarray:
        r, c = points[:, 0], points[:, 1]
        road = ((r == 50) & (c >= 10) & (c <= 90)) | ((c == 150) & (r >= 20) & (r <= 62))
        return np.where(road, 0.9, 0.05).astype(np.float32)

    graph = nx.MultiGraph()
    line = np.array([(50.0, c) for c in range(40, 61)])
    add_edge(graph, (50.0, 40.0), (50.0, 60.0), line, np.full(len(line), 0.9, np.float32))
    # a T: a spur from (30, 150) down to a road along row 30, ending at row 40
    spur = np.array([(r, 150.0) for r in range(30, 41)])
    add_edge(graph, (30.0, 150.0), (40.0, 150.0), spur, np.full(len(spur), 0.9, np.float32))
    cross = np.array([(30.0, c) for c in range(120, 181)])
    mid = len(cross) // 2
    add_edge(graph, (30.0, 120.0), (30.0, 150.0), cross[: mid + 1], np.ones(mid + 1, np.float32))
    add_edge(
        graph, (30.0, 150.0), (30.0, 180.0), cross[mid:], np.ones(len(cross) - mid, np.float32)
    )
    extend_ends(graph, (1.0, 1.0), max_m=30.0, threshold=0.5, sample=sample)
    ends = sorted(n for n in graph.nodes if graph.degree(n) == 1)
    assert (50.0, 10.0) in ends and (50.0, 90.0) in ends  # 30 m each way, to where it stops
    assert (62.0, 150.0) in ends  # the spur on to row 62, where the probability drops
    assert graph.number_of_edges() == 4
