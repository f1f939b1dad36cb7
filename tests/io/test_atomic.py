"""Atomic writes: all or nothing, readable like any new file, errors naming the target."""

from __future__ import annotations

import os
import stat

import pytest

from medsingan.io.atomic import atomic_path


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_usual_permissions_not_the_temporary_files(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a.csv") == 0o644


def test_a_replaced_file_keeps_its_permissions_and_failure_keeps_the_old_content(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _mode(target) == 0o640
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_errors_name_the_target_not_the_temporary_file(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError) as info, atomic_path(tmp_path / "folder"):
        pass
    assert info.value.filename == str(tmp_path / "folder")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as info, atomic_path(tmp_path / "file" / "a.png"):
        pass
    assert info.value.filename == str(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
