"""The console script: every stage has a useful --help; bad input ends with a clear error, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

BIN = Path(sys.executable).parent
STAGES = ["synth", "tile", "pretrain", "train", "evaluate", "register", "predict", "models"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_subcommand_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        main([stage, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: pipeline {stage}" in out
    assert "--params" in out
    assert len(out.splitlines()) > 5


def test_console_script_is_installed():
    proc = subprocess.run([str(BIN / "pipeline"), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for stage in STAGES:
        assert stage in proc.stdout


def test_predict_help_lists_the_options_users_need(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    for opt in ["--model", "--scheduler", "--workers", "--device", "--batch-size", "--overlap", "--tta",
                "--vectors", "--overwrite", "-o"]:
        assert opt in out


def test_invalid_params_file_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("synth: {scenes: []}\ndata: {scenes: []}\n")
    assert main(["tile", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "data.scenes" in err


def test_predict_missing_raster_names_it(tmp_path, capsys):
    missing = tmp_path / "nowhere.tif"
    assert main(["predict", str(missing), "--model", str(tmp_path), "--params", str(tmp_path / "none.yaml")]) == 2
    assert "nowhere.tif" in capsys.readouterr().err


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
