"""Tiny OpenStreetMap extracts written by tests: OSM XML whose ways lie on a UTM test scene."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from pyproj import Transformer

UTM = "EPSG:32632"


def write_osm(
    path: Path, ways: list[tuple[list[tuple[float, float]], dict[str, str]]], crs: str = UTM
) -> Path:
    """Write ``ways`` (vertices in ``crs``, tags) as an OSM XML file in EPSG:4326."""
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    nodes: list[str] = []
    way_xml: list[str] = []
    node_id = 0
    for way_id, (coords, tags) in enumerate(ways, start=1000):
        refs = []
        for x, y in coords:
            node_id += 1
            lon, lat = to_lonlat.transform(x, y)
            nodes.append(f'  <node id="{node_id}" lat="{lat:.8f}" lon="{lon:.8f}"/>')
            refs.append(f'    <nd ref="{node_id}"/>')
        tag_xml = [f"    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items()]
        way_xml.append(f'  <way id="{way_id}">\n' + "\n".join(refs + tag_xml) + "\n  </way>")
    body = "\n".join(nodes + way_xml)
    path.write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="roadseg tests">\n'
        f"{body}\n</osm>\n"
    )
    return path


def scene_ways(origin: tuple[float, float], size_m: float) -> list:
    """Ways across a ``size_m`` square scene whose top-left corner is ``origin`` (UTM):
    roads of three classes, and what must not become road labels."""
    x0, y0 = origin
    x1 = x0 + size_m

    def row(y_off: float) -> list[tuple[float, float]]:
        return [(x0 - 20, y0 - y_off), (x1 + 20, y0 - y_off)]

    return [
        (row(40), {"highway": "motorway", "lanes": "3"}),  # 3 x 3.5 = 10.5 m
        (row(100), {"highway": "residential"}),  # class width 6 m
        (row(160), {"highway": "track", "width": "3 m"}),  # width tag
        (row(200), {"highway": "footway"}),  # not a road class
        (row(220), {"railway": "rail"}),  # never road
        (row(70), {"highway": "primary", "tunnel": "yes"}),  # invisible from above
        (row(130), {"highway": "construction"}),  # not built yet
        (row(180), {"highway": "secondary", "bridge": "yes", "width": "9"}),  # a visible deck
    ]
