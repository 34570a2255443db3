"""Files written whole or not at all, with the permissions of an ordinary file."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from passc.atomic import atomic_file, atomic_files, build_directory


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


def _generation(directory: Path) -> str:
    """A directory written by `_fill`: its two files hold the same generation, or it is torn."""
    a, b = (directory / "a").read_text(), (directory / "b").read_text()
    assert a == b, f"torn directory: {a!r} vs {b!r}"
    return a


def _fill(generation: str, pause: float = 0.0):
    def fill(tmp: Path) -> None:
        (tmp / "a").write_text(generation)
        time.sleep(pause)
        (tmp / "b").write_text(generation)

    return fill


def test_replacing_a_directory_never_leaves_the_path_empty(tmp_path: Path) -> None:
    """A reader polling the path during 40 replacements always finds a whole directory."""
    final = tmp_path / "art"
    build_directory(final, _fill("0"), replace=True)
    seen, stop = [], threading.Event()

    def read(fd: int, name: str) -> str:
        file = os.open(name, os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(file, 64).decode()
        finally:
            os.close(file)

    def poll() -> None:  # each look opens the directory once and reads both files through it
        while not stop.is_set():
            try:
                fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError as err:
                seen.append(err)
                continue
            try:
                a, b = read(fd, "a"), read(fd, "b")
                seen.append(a if a == b else AssertionError(f"torn: {a!r} vs {b!r}"))
            except FileNotFoundError:
                pass  # the directory it opened was swapped out and is being removed
            finally:
                os.close(fd)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for generation in range(1, 41):
            build_directory(final, _fill(str(generation)), replace=True)
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 40 and not [s for s in seen if isinstance(s, Exception)], seen[:3]
    assert _generation(final) == "40" and [p.name for p in tmp_path.iterdir()] == ["art"]


def _build_in_child(final: str, generation: str, pause: float) -> None:
    build_directory(Path(final), _fill(generation, pause), replace=True)


def test_a_build_killed_anywhere_leaves_the_old_or_the_new_directory(tmp_path: Path) -> None:
    """SIGKILL a build at random points (while filling, around the swap): the path then holds a
    whole directory, old or new, and the next build succeeds and sweeps the dead build's files."""
    final = tmp_path / "art"
    build_directory(final, _fill("0"), replace=True)
    rng = random.Random(0)
    context = multiprocessing.get_context("fork")
    for generation in range(1, 21):
        child = context.Process(target=_build_in_child, args=(str(final), str(generation), 0.02))
        child.start()
        time.sleep(rng.uniform(0.0, 0.04))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert _generation(final) in (str(generation - 1), str(generation))
        build_directory(final, _fill(str(generation)), replace=True)
        assert _generation(final) == str(generation)
        assert [p.name for p in tmp_path.iterdir()] == ["art"]


def _build_after_barrier(final: str, generation: str, barrier) -> None:
    def fill(tmp: Path) -> None:
        _fill(generation)(tmp)
        barrier.wait()  # both builds finish filling together, then race to the rename

    build_directory(Path(final), fill, replace=True)


def test_two_first_builds_finishing_together_both_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        final = tmp_path / f"art{attempt}"
        barrier = context.Barrier(2)
        builds = [
            context.Process(target=_build_after_barrier, args=(str(final), name, barrier)) for name in "xy"
        ]
        for build in builds:
            build.start()
        for build in builds:
            build.join()
        assert [build.exitcode for build in builds] == [0, 0]
        assert _generation(final) in ("x", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"art{i}" for i in range(5)]
