"""Files written whole or not at all, with the permissions of an ordinary file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from passc.atomic import atomic_file, atomic_files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_permissions_not_mkstemps(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "records.json") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "records.json").read_text() == "x"
    assert _mode(tmp_path / "records.json") == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    final = tmp_path / "records.json"
    final.write_text("old")
    final.chmod(0o640)
    with atomic_file(final) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"
    assert _mode(final) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    final = tmp_path / "records.json"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["records.json"]


def test_files_written_together_appear_together_or_not_at_all(tmp_path: Path) -> None:
    model, data = tmp_path / "m.onnx", tmp_path / "m.onnx.data"
    with pytest.raises(RuntimeError), atomic_files(data, model) as tmp:
        (tmp / data.name).write_text("tensors")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []

    model.write_text("old model")
    model.chmod(0o640)
    with atomic_files(data, model) as tmp:
        (tmp / data.name).write_text("tensors")
        (tmp / model.name).write_text("model")
    assert (model.read_text(), data.read_text()) == ("model", "tensors")
    assert _mode(model) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
