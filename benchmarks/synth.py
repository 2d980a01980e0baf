"""Time synthetic scene generation; optionally save a quicklook of a scene.

    python benchmarks/synth.py                      # one 4096 x 4096 scene at 1 m, timed
    python benchmarks/synth.py --size 1024 --steps  # per-step timings as well
    python benchmarks/synth.py --size 1024 --quicklook docs/img/synth_quicklook.png

Prints wall-clock seconds of ``generate_scene`` (layout, rendering and writing the GeoTIFFs
and the GeoPackage). The quicklook shows RGB, NIR false colour (NIR, red, green) and the road
labels (as the tile stage burns them from the GeoPackage) over the RGB.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import raster, vectors  # noqa: E402
from pipeline.config import SynthParams, SynthSceneSpec  # noqa: E402
from pipeline.synth import generate_scene  # noqa: E402


def _stretch(bands):
    import numpy as np

    out = []
    for b in bands:
        b = b.astype("float32")
        valid = b > 0
        lo, hi = np.percentile(b[valid], [1, 99]) if valid.any() else (0, 1)
        out.append(np.clip((b - lo) / max(hi - lo, 1e-6), 0, 1))
    return np.stack(out, axis=-1)


def quicklook(files, params: SynthParams, png: Path) -> None:
    """RGB | NIR-R-G false colour | labels over RGB, side by side; below, the centre at 1:1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    info = raster.raster_info(files.image)
    img = np.stack([raster.read_band_array(files.image, b) for b in (1, 2, 3, 4)])
    roads = vectors.load_road_polygons(
        files.roads, info.crs, width_attribute="width_m", default_half_width_m=2.0
    )
    label = vectors.burn_mask(roads, info.transform, (info.height, info.width)).astype(bool)
    rgb = _stretch(img[[0, 1, 2]])
    overlay = rgb.copy()
    overlay[label] = 0.45 * overlay[label] + 0.55 * np.array([1.0, 0.1, 0.6])
    panels = [
        ("RGB", rgb),
        ("false colour (NIR, R, G)", _stretch(img[[3, 0, 1]])),
        (f"road labels ({label.mean():.1%} of pixels)", overlay),
    ]
    zoom = min(256, info.height // 2)
    r0, c0 = info.height // 2 - zoom // 2, info.width // 2 - zoom // 2
    window = (slice(r0, r0 + zoom), slice(c0, c0 + zoom))
    fig, axes = plt.subplots(2, 3, figsize=(21, 14.6), dpi=90, layout="constrained")
    for k, (title, data) in enumerate(panels):
        axes[0, k].imshow(data, interpolation="nearest")
        axes[0, k].add_patch(
            plt.Rectangle((c0, r0), zoom, zoom, fill=False, edgecolor="yellow", lw=1)
        )
        axes[0, k].set_title(title)
        axes[1, k].imshow(data[window], interpolation="nearest")
        axes[1, k].set_title(f"{title.split(' (')[0]}, centre {zoom} x {zoom} px")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(
        f"synthetic scene (seed {params.scenes[0].seed}), {params.size} px at {params.gsd} m GSD, "
        f"{params.dtype}"
    )
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    from PIL import Image

    Image.open(png).convert("RGB").save(png, optimize=True)  # no alpha: a third smaller
    print(f"wrote {png}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--gsd", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--dtype", choices=["uint8", "uint16"], default="uint8")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--steps", action="store_true", help="log per-step timings")
    ap.add_argument("--quicklook", type=Path, help="save a PNG quicklook of the scene here")
    args = ap.parse_args()
    if args.steps:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("pipeline.synth").setLevel(logging.DEBUG)
    with tempfile.TemporaryDirectory() as tmp:
        params = SynthParams(
            out_dir=Path(tmp),
            scenes=[SynthSceneSpec(name="bench", seed=args.seed)],
            size=args.size,
            gsd=args.gsd,
            dtype=args.dtype,
        )
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            files = generate_scene(params.scenes[0], params, 0)
            times.append(time.perf_counter() - start)
        mb = sum(os.path.getsize(p) for p in (files.image, files.roads, files.landcover)) / 2**20
        print(
            f"synth {args.size}x{args.size} px, gsd {args.gsd} m, {args.dtype}: "
            f"best {min(times):.1f} s of {len(times)} (files {mb:.0f} MiB)"
        )
        if args.quicklook:
            quicklook(files, params, args.quicklook)


if __name__ == "__main__":
    main()
