"""`pipeline repro`: `dvc repro` one stage at a time, with a progress line for the whole run.

DVC prints what each stage prints, not where the whole pipeline stands. This wrapper asks DVC
which stages a `dvc repro` would run (the changed ones and everything downstream of them, in
DVC's own order), then runs ``dvc repro --single-item <stage>`` for each, printing before each::

    [3/6] train: started, 0:04:12 elapsed, about 9 min left

The time left is the sum of each remaining stage's duration in the last run that ran it
(recorded in ``.dvc/tmp/stage_durations.json``), else a rough figure from params.yaml
(``static_estimates``). Caching is DVC's: a stage DVC finds unchanged is skipped by DVC, and
dvc.lock ends as a plain `dvc repro` leaves it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from pipeline.atomic import write_text_atomic
from pipeline.config import ConfigError, PretrainParams, load_params

DURATIONS_PATH = Path(".dvc/tmp/stage_durations.json")

# Seconds per unit of work on 2 cores (2026-12-06, Intel with AMX: synth 26 s for 27 scenes,
# tile 13 s, pretrain 35 s for 80 batches, training 50 s per epoch of 27 scenes with the narrow
# decoder; a CPU without AMX takes about twice as long); only used for stages that have never
# run in this repository.
SECONDS_PER_SYNTH_SCENE = 1.5
SECONDS_PER_TILE_SCENE = 1.0
SECONDS_PER_PRETRAIN_SCENE_EPOCH = 2.5
SECONDS_PER_PRETRAIN_BATCH = 0.5  # 64 patches of 64 px
SECONDS_PER_TRAIN_SCENE_EPOCH = 2.5
SECONDS_EVALUATE = 30.0
SECONDS_REGISTER = 15.0


def planned_stages(root: Path) -> list[str]:
    """The stages (``name`` or ``name@item``) `dvc repro` would run in ``root``, in its order:
    those `dvc status` reports changed and every stage downstream of one of them."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(root)) as repo:
        changed = set(repo.status())
        graph = get_active_graph(repo.index.graph)
        to_run: set = set()
        for stage in plan_repro(graph):  # upstream stages first; graph edges point upstream
            if stage.addressing in changed or any(u in to_run for u in graph.successors(stage)):
                to_run.add(stage)
        return [s.addressing for s in plan_repro(graph) if s in to_run and s.cmd]


def static_estimates(params_path: Path) -> dict[str, float]:
    """Rough seconds per stage name from params.yaml (scenes x epochs); {} without one."""
    try:
        p = load_params(params_path)
    except (ConfigError, FileNotFoundError):
        return {}
    scenes = len(p.data.scenes)
    return {
        "synth": SECONDS_PER_SYNTH_SCENE * len(p.synth.scenes),
        "tile": SECONDS_PER_TILE_SCENE * scenes,
        "pretrain": _pretrain_seconds(p.pretrain, scenes),
        "train": SECONDS_PER_TRAIN_SCENE_EPOCH * scenes * p.train.epochs,
        "evaluate": SECONDS_EVALUATE,
        "register": SECONDS_REGISTER,
    }


def _pretrain_seconds(pretrain: PretrainParams, scenes: int) -> float:
    """Per backbone: scenes x epochs, or the batch cap x epochs where that is less."""
    per_epoch = SECONDS_PER_PRETRAIN_SCENE_EPOCH * scenes
    if pretrain.max_batches_per_epoch:
        per_epoch = min(per_epoch, SECONDS_PER_PRETRAIN_BATCH * pretrain.max_batches_per_epoch)
    return per_epoch * pretrain.epochs


def estimate(
    stage: str, recorded: Mapping[str, float], static: Mapping[str, float]
) -> float | None:
    """The last recorded duration of ``stage``, else the static figure of its name (the part
    before ``@`` for a foreach stage), else None."""
    if stage in recorded:
        return recorded[stage]
    return static.get(stage.split("@")[0])


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def time_left(estimates: list[float | None]) -> str:
    known = sum(e for e in estimates if e is not None)
    unknown = sum(e is None for e in estimates)
    text = f"about {max(1, round(known / 60))} min left" if known else ""
    if unknown:
        more = f"{unknown} stage{'s' * (unknown > 1)} not timed yet"
        text = f"{text} + {more}" if text else more
    return text


def progress_line(i: int, n: int, stage: str, elapsed: float, left: str) -> str:
    return f"[{i}/{n}] {stage}: started, {clock(elapsed)} elapsed, {left}"


def _lock_entry(root: Path, stage: str) -> object:
    """The stage's entry in dvc.lock (None before its first run): changes iff DVC ran it."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return None
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage)


def read_durations(root: Path) -> dict[str, float]:
    path = root / DURATIONS_PATH
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError):
        return {}


def dvc_command() -> str:
    """The dvc beside this Python (the project's environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def run_repro(root: Path = Path("."), params_path: Path = Path("params.yaml")) -> int:
    """Run the stages `dvc repro` would run, one `dvc repro --single-item` each, printing a
    progress line before each; returns the exit code of the first failing stage, else 0."""
    root = Path(root)
    stages = planned_stages(root)
    if not stages:
        print("every stage is up to date", flush=True)
        return 0
    recorded = read_durations(root)
    static = static_estimates(root / params_path)
    start = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        left = time_left([estimate(s, recorded, static) for s in stages[i - 1 :]])
        print(progress_line(i, len(stages), stage, time.perf_counter() - start, left), flush=True)
        before, t0 = _lock_entry(root, stage), time.perf_counter()
        done = subprocess.run([dvc_command(), "repro", "--single-item", stage], cwd=root)
        if done.returncode != 0:
            print(f"[{i}/{len(stages)}] {stage}: failed", file=sys.stderr, flush=True)
            return done.returncode
        if _lock_entry(root, stage) != before:  # DVC ran it (not skipped as unchanged)
            recorded[stage] = round(time.perf_counter() - t0, 1)
            write_text_atomic(root / DURATIONS_PATH, json.dumps(recorded, indent=2))
    print(f"[{len(stages)}/{len(stages)}] done in {clock(time.perf_counter() - start)}", flush=True)
    return 0
