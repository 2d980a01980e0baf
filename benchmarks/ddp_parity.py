"""Two data-parallel processes against one at the same global batch: how close do they end?

Trains the tiny run of tests/test_train_ddp.py (the test scenes of tests/conftest.py, 64 px
chips, 3 epochs x 4 steps of a global batch of 4, loss bce, no augmentation) once with
`pipeline train` and once with `torchrun --nproc_per_node 2` (gloo, one thread each) per seed,
and prints each epoch's training loss and the final validation IoU. Two processes differ from
one only by per-process BatchNorm statistics; the spread over seeds is the noise to compare with.

    python benchmarks/ddp_parity.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import BANDS, make_scene, scene_entries  # noqa: E402
from tests.test_train import write_params  # noqa: E402
from tests.test_train_ddp import BIN, TRAIN, env, torchrun  # noqa: E402


def tiny_chips(folder: Path) -> tuple[Path, Path]:
    from pipeline.config import DataParams, TileParams
    from pipeline.tiling import run_tile

    scenes = folder / "scenes"
    scenes.mkdir()
    for i, name in enumerate(["s1", "s2", "s3", "held"]):
        make_scene(scenes, name, seed=i, origin=(500000.0 + i * 1000, 5400000.0))
    data = DataParams(scenes=scene_entries(scenes), bands=BANDS)
    split = {"block_size_m": 128, "val_fraction": 0.25, "gap_m": 0}
    tile = TileParams(out_dir=folder / "chips", chip_size=64, stride=64, workers=1, split=split)
    run_tile(data, tile, workers=1, progress=False)
    return scenes, folder / "chips"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scenes, chips = tiny_chips(Path(tmp))
        print("seed | processes | train loss per epoch | final val IoU")
        for seed in args.seeds:
            for n in (1, 2):
                work = Path(tmp) / f"seed{seed}-{n}"
                work.mkdir()
                params = write_params(work, scenes, chips, **TRAIN, seed=seed)
                single = [str(BIN / "pipeline"), "train", "-q", "--params", str(params)]
                cmd = single if n == 1 else torchrun(params)
                subprocess.run(cmd, cwd=work, env=env(), check=True, capture_output=True)
                rows = list(csv.DictReader(open(work / "plots/train.csv")))
                losses = " ".join(f"{float(r['train_loss']):.4f}" for r in rows)
                print(f"{seed} | {n} | {losses} | {float(rows[-1]['val_iou']):.3f}", flush=True)


if __name__ == "__main__":
    main()
