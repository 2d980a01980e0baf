"""The one atomic writer: whole files or none, the umask's mode, nothing overwritten unasked."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.atomic import (
    atomic_path,
    stale_temporaries,
    temporary_name,
    write_bytes_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_umask_mode_not_owner_only(tmp_path, umask_022):
    text = write_text_atomic(tmp_path / "metrics" / "eval.json", "{}\n")
    with atomic_path(tmp_path / "roads.gpkg") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(text) == 0o644
    assert _mode(tmp_path / "roads.gpkg") == 0o644
    old = os.umask(0o077)
    try:
        private = write_bytes_atomic(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    assert _mode(private) == 0o600


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "model.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_existing_output_is_refused_without_overwrite(tmp_path):
    target = write_text_atomic(tmp_path / "out.tif", "mine")
    with pytest.raises(FileExistsError, match="out.tif: exists; pass --overwrite"):
        write_text_atomic(target, "other", overwrite=False)
    assert target.read_text() == "mine"


def test_temporaries_keep_the_suffix_and_are_found_when_stale(tmp_path):
    target = tmp_path / "region_roads.tif"
    tmp = temporary_name(target)
    assert tmp.name.startswith(".region_roads.tif.") and tmp.name.endswith(".part.tif")
    tmp.write_bytes(b"left by a killed run")
    (tmp_path / ".other.tif.1234.part.tif").write_bytes(b"not ours")
    assert stale_temporaries(target) == [tmp]
    assert temporary_name(target) != temporary_name(target)
