"""`pipeline repro` on a real, tiny DVC repository: a progress line per stage, only what
`dvc repro` would run, and DVC's caching and dvc.lock as a plain `dvc repro` leaves them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.repro import clock, time_left

BIN = Path(sys.executable).parent

# two stages: `first` counts its runs in runs.txt (not an output), `second` reads first's output
DVC_YAML = {
    "stages": {
        "first": {
            "cmd": "python -c \"import pathlib as p; p.Path('a.txt').write_text(p.Path('src.txt').read_text()); "
            "r = p.Path('runs.txt'); r.write_text((r.read_text() if r.exists() else '') + 'x')\"",
            "deps": ["src.txt"],
            "outs": ["a.txt"],
        },
        "second": {
            "cmd": "python -c \"import pathlib as p; p.Path('b.txt').write_text("
            "p.Path('a.txt').read_text() + p.Path('extra.txt').read_text())\"",
            "deps": ["a.txt", "extra.txt"],
            "outs": ["b.txt"],
        },
    }
}


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def repo(tmp_path) -> tuple[Path, dict]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    (tmp_path / "src.txt").write_text("roads\n")
    (tmp_path / "extra.txt").write_text("more\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    run(["git", "init", "-q"], tmp_path, env)
    run([str(BIN / "dvc"), "init", "-q"], tmp_path, env)
    return tmp_path, env


@pytest.mark.slow
def test_pipeline_repro_runs_dvc_stage_by_stage_with_progress(repo):
    root, env = repo
    out = run([str(BIN / "pipeline"), "repro"], root, env)
    assert "[1/2] first: started, 0:00:00 elapsed, 2 stages not timed yet" in out
    assert "[2/2] second: started" in out and "1 stage not timed yet" in out
    assert (root / "b.txt").read_text() == "roads\nmore\n"
    durations = json.loads((root / ".dvc/tmp/stage_durations.json").read_text())
    assert set(durations) == {"first", "second"} and all(v > 0 for v in durations.values())
    # what a plain `dvc repro` leaves: both stages locked, nothing left to run
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"first", "second"}
    assert "up to date" in run([str(BIN / "dvc"), "status"], root, env)
    assert "every stage is up to date" in run([str(BIN / "pipeline"), "repro"], root, env)

    # a change downstream re-runs only that stage, now with an estimate from the last run
    (root / "extra.txt").write_text("changed\n")
    out = run([str(BIN / "pipeline"), "repro"], root, env)
    assert "[1/1] second: started, 0:00:00 elapsed, about 1 min left" in out
    assert "first: started" not in out
    assert (root / "runs.txt").read_text() == "x", "the unchanged stage ran again"
    assert (root / "b.txt").read_text() == "roads\nchanged\n"

    # a change upstream re-runs both, in order
    (root / "src.txt").write_text("tracks\n")
    out = run([str(BIN / "pipeline"), "repro"], root, env)
    assert out.index("[1/2] first") < out.index("[2/2] second")
    assert (root / "b.txt").read_text() == "tracks\nchanged\n"
    assert "up to date" in run([str(BIN / "dvc"), "status"], root, env)


def test_pipeline_repro_fails_with_the_failing_stage(repo):
    root, env = repo
    (root / "src.txt").unlink()
    proc = subprocess.run(
        [str(BIN / "pipeline"), "repro"], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "first" in proc.stderr
    assert not (root / "b.txt").exists()


def test_time_left_and_clock():
    assert clock(252) == "0:04:12" and clock(3725.4) == "1:02:05"
    assert time_left([300.0, 240.0]) == "about 9 min left"
    assert time_left([20.0]) == "about 1 min left"
    assert time_left([300.0, None]) == "about 5 min left + 1 stage not timed yet"
