"""An artifact never lies and a user's mistake is a clear error: damaged files are found before
they are loaded, a runner killed by a signal says which, output paths are checked before any work,
and `passc run -o` never overwrites one output with another (issue 31, items 1, 6 and 9)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import passc
from passc.errors import PasscError
from tests.conftest import EXAMPLE, parse, save

SHAPE = ["--input-shape", "input:1x3x64x64"]


def _nms(directory: Path) -> Path:
    """NonMaxSuppression of 6 boxes, keeping at most 3: its kernel calls `tvm.contrib.sort`, and
    it declares [6, 3] while returning as many rows as boxes it keeps."""
    return save(
        parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 6, 4] boxes, float[1, 1, 6] scores) => (int64[6, 3] selected) {
            most = Constant<value = int64[1] {3}>()
            iou = Constant<value = float[1] {0.5}>()
            least = Constant<value = float[1] {0.0}>()
            selected = NonMaxSuppression(boxes, scores, most, iou, least)
        }
        """),
        directory / "nms.onnx",
    )


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "art"
    passc.compile(EXAMPLE, target="host", output=out, input_shapes={"input": (1, 3, 64, 64)}, bundle=True)
    return out


def _copy(art: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(art), str(copy)], check=True)
    return copy


@pytest.mark.parametrize("emulate", [False, True])
def test_a_truncated_model_so_is_reported_not_loaded(run_cli, bundled: Path, tmp_path: Path, emulate) -> None:
    art = _copy(bundled, tmp_path)
    library = art / "model.so"
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    status, _, err = run_cli("run", art, *(["--emulate"] if emulate else []))
    assert status == 1, err
    assert "is damaged: model.so differs from the file it was built with" in err and "rebuild" in err


def test_a_missing_file_is_named(bundled: Path, tmp_path: Path) -> None:
    art = _copy(bundled, tmp_path)
    (art / "passc-run").unlink()
    with pytest.raises(PasscError, match="is damaged: passc-run is missing"):
        passc.load(art).run(passc.load(art).random_inputs())


def test_an_intact_artifact_runs_after_the_check(bundled: Path) -> None:
    artifact = passc.load(bundled)
    artifact.check()
    inputs = artifact.random_inputs()
    np.testing.assert_array_equal(artifact.run(inputs)["probs"], artifact.run(inputs, emulate=True)["probs"])


def test_a_runner_killed_by_a_signal_says_which(bundled: Path, monkeypatch) -> None:
    import passc.backends.cpu as cpu

    def killed(command, **kwargs):
        return subprocess.CompletedProcess(command, -7, "", "")

    artifact = passc.load(bundled)
    artifact.check()
    monkeypatch.setattr(cpu.subprocess, "run", killed)
    with pytest.raises(PasscError, match="passc-run was killed by SIGBUS"):
        artifact.run(artifact.random_inputs(), emulate=True)


def test_output_path_problems_are_found_before_any_work(run_cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    start = time.perf_counter()
    status, _, err = run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", blocker / "art")
    assert status == 2 and f"{blocker} is a file, not a directory" in err, err
    long_name = tmp_path / ("a" * 250)
    status, _, err = run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", long_name)
    assert status == 2 and "is too long" in err, err
    assert time.perf_counter() - start < 5  # refused before loading or lowering anything
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_run_writes_every_output_to_its_own_file(run_cli, tmp_path: Path) -> None:
    model = save(
        parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] "o/1", float[2, 3] o_1, float[2, 3] "O:1") {
            "o/1" = Relu(x)
            o_1 = Neg(x)
            "O:1" = Abs(x)
        }
        """),
        tmp_path / "m.onnx",
    )
    art = tmp_path / "art"
    assert run_cli("compile", model, "--target", "host", "-o", art, "-q")[0] == 0
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    status, stdout, err = run_cli("run", art, "--input", f"x={tmp_path / 'x.npy'}", "-o", out)
    assert status == 0, err
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3, files
    assert f"o/1 -> {out / 'o_1.npy'}" in stdout and f"o_1 -> {out / 'o_1_2.npy'}" in stdout
    np.testing.assert_array_equal(np.load(out / "o_1.npy"), np.maximum(x, 0))
    np.testing.assert_array_equal(np.load(out / "o_1_2.npy"), -x)
    np.testing.assert_array_equal(np.load(out / "O_1_3.npy"), np.abs(x))

    status, _, err = run_cli("run", art, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "x.npy")
    assert status == 2 and "a file is there" in err


def test_a_zero_sized_dimension_is_refused_at_compile(run_cli, tmp_path: Path) -> None:
    model = save(
        parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[0, 3] x) => (float[0, 3] y) { y = Relu(x) }
        """),
        tmp_path / "empty.onnx",
    )
    status, _, err = run_cli("compile", model, "--target", "host", "-o", tmp_path / "art")
    assert status == 1 and "input 'x' has a zero-sized dimension [0, 3]" in err, err
    assert not (tmp_path / "art").exists()


def test_a_damaged_cache_entry_is_rebuilt_and_never_bundled(tmp_path: Path, monkeypatch) -> None:
    from passc.targets import get_target

    from passc.bundle import bundle_files
    from passc.paths import cache_dir

    host = get_target("host")
    runner = bundle_files(host)["passc-run"]  # the user's cache, checked (and repaired) here
    cache, users = tmp_path / "cache", cache_dir()
    subprocess.run(["cp", "-aL", str(users), str(cache)], check=True)  # its shared parts too
    monkeypatch.setenv("PASSC_CACHE_DIR", str(cache))
    cached = cache / runner.relative_to(users)
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 3])  # a truncated cache entry
    art = passc.compile(
        EXAMPLE, target="host", output=tmp_path / "art", input_shapes={"input": (1, 3, 64, 64)}, bundle=True
    )
    # Rebuilt in the other cache, then bundled: the same bytes as the user's cache holds.
    assert (art.path / "passc-run").read_bytes() == cached.read_bytes() == good
    inputs = art.random_inputs()
    np.testing.assert_array_equal(art.run(inputs, emulate=True)["probs"], art.run(inputs)["probs"])
    assert not [p for p in cached.parent.parent.iterdir() if p.name.startswith(".")]  # nothing set aside


def test_a_bundle_whose_runtime_lacks_a_called_function_is_refused(run_cli, tmp_path: Path) -> None:
    """TVM's NonMaxSuppression kernel calls `tvm.contrib.sort.argsort`, which the runtime-only
    libraries in a bundle do not have: the bundled runner would fail on the device."""
    model = _nms(tmp_path)
    out = tmp_path / "art"
    status, _, err = run_cli("compile", model, "--target", "host", "-o", out, "--bundle")
    assert status == 1 and "the model calls tvm.contrib.sort.argsort, which the TVM runtime" in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["nms.onnx"]
    assert run_cli("compile", model, "--target", "host", "-o", out, "-q")[0] == 0  # in-process: fine


def test_the_bundled_runtime_provides_what_the_example_calls(bundled: Path) -> None:
    from passc.backends.cpu import missing_functions

    libraries = [bundled / "libtvm_runtime.so", bundled / "libtvm_ffi.so"]
    assert missing_functions(bundled / "model.so", libraries) == []
    assert missing_functions(bundled / "model.so", []) != []  # the VM's builtins come from them


def test_an_unwritable_cache_names_the_variable_to_set(run_cli, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PASSC_CACHE_DIR", str(blocker / "cache"))
    out = tmp_path / "art"
    status, _, err = run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", out, "--bundle")
    assert status == 1 and f"cannot write passc's cache at {blocker / 'cache'}" in err, err
    assert "set PASSC_CACHE_DIR" in err and "Traceback" not in err and not out.exists()


def test_inputs_named_with_equals_signs_and_files_that_are_not_npy(run_cli, tmp_path: Path) -> None:
    model = save(
        parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] "a=b") => (float[2] y) { y = Relu("a=b") }
        """),
        tmp_path / "m.onnx",
    )
    art = tmp_path / "art"
    assert run_cli("compile", model, "--target", "host", "-o", art, "-q")[0] == 0
    np.save(tmp_path / "x.npy", np.array([-1.0, 2.0], np.float32))
    status, stdout, err = run_cli("run", art, "--input", f"a=b={tmp_path / 'x.npy'}")
    assert status == 0 and "y: float32 2" in stdout, err
    (tmp_path / "x.txt").write_text("1 2\n")
    status, _, err = run_cli("run", art, "--input", f"a=b={tmp_path / 'x.txt'}")
    assert status == 2 and "x.txt is not a .npy file" in err, err


def test_a_compile_killed_at_random_points_leaves_a_whole_artifact(tmp_path: Path) -> None:
    """SIGKILL `passc compile` replacing an artifact, at random points of the build: the path
    holds a whole artifact each time (old or new, every file as its manifest says), and the next
    build leaves no temporary sibling behind."""
    import random
    import signal
    import sys

    out = tmp_path / "art"
    command = [sys.executable, "-m", "passc.cli", "compile", str(EXAMPLE), "--target", "host", *SHAPE]
    subprocess.run([*command, "-o", str(out), "-q"], check=True, capture_output=True)
    rng = random.Random(0)
    for threads in (1, 2, 3):  # a different --threads each time: a new artifact differs from the old
        build = subprocess.Popen([*command, "--threads", str(threads), "-o", str(out), "-q"])
        time.sleep(rng.uniform(1.0, 6.0))
        build.send_signal(signal.SIGKILL)
        build.wait()
        passc.load(out).check()
    subprocess.run([*command, "-o", str(out), "-q"], check=True, capture_output=True)
    passc.load(out).check()
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_an_output_whose_shape_depends_on_the_data_is_an_error_not_a_lie(tmp_path: Path) -> None:
    """NonMaxSuppression declares [6, 3] and returns as many rows as boxes it keeps."""
    model = _nms(tmp_path)
    artifact = passc.compile(model, target="host", output=tmp_path / "art")
    with pytest.raises(
        PasscError, match=r"output 'selected' came back with shape \d+x3, not the manifest's 6x3"
    ):
        artifact.run(artifact.random_inputs())


@pytest.fixture(scope="module")
def with_params(tmp_path_factory) -> Path:
    """A bundled host artifact with every kind of file: model.so, params.bin, the runtime."""
    import json

    import onnx

    from passc.pass_base import RUNTIME_PARAMS_KEY

    directory = tmp_path_factory.mktemp("params")
    weight = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(proto, {RUNTIME_PARAMS_KEY: json.dumps(["w"])})
    onnx.save(proto, directory / "dense.onnx")
    out = directory / "art"
    passc.compile(directory / "dense.onnx", target="host", output=out, bundle=True)
    return out


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "removed":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a byte in the middle overwritten with one no text or ELF file has there
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])


@pytest.mark.parametrize("how", ["removed", "truncated", "corrupted"])
@pytest.mark.parametrize(
    "name", ["model.so", "params.bin", "manifest.json", "passc-run", "libtvm_runtime.so", "libtvm_ffi.so"]
)
def test_every_damaged_artifact_file_is_one_clear_error_naming_it(
    run_cli, with_params: Path, tmp_path: Path, name: str, how: str
) -> None:
    art = _copy(with_params, tmp_path)
    _damage(art / name, how)
    others = {p.name: p.read_bytes() for p in art.iterdir() if p.name != name}
    status, _, err = run_cli("run", art, "--emulate")
    assert status in (1, 2), err
    lines = [line for line in err.splitlines() if line.startswith("passc: error:")]
    assert len(lines) == 1 and name in lines[0], err
    assert "Traceback" not in err and "internal error" not in err
    assert {p.name: p.read_bytes() for p in art.iterdir() if p.name != name} == others


def test_each_test_has_its_own_cache_not_the_users(own_cache: Path) -> None:
    import platformdirs

    from passc.paths import cache_dir

    assert cache_dir() == own_cache != Path(platformdirs.user_cache_dir("passc"))
    assert not (own_cache / "tuning").exists()  # no tuning records a developer made
