"""The command line: each user error is one clear line, the right exit code, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import EXAMPLE, parse, save

SHAPE = ["--input-shape", "input:1x3x64x64"]


def _assert_clean_failure(result, code: int, message: str, out_dir: Path) -> None:
    status, _, err = result
    assert status == code, err
    lines = [line for line in err.splitlines() if line.startswith("passc: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not out_dir.exists()
    if out_dir.parent.exists():
        assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]


def test_compile_run_inspect_roundtrip(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "cnn.host"
    status, stdout, err = run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", out)
    assert status == 0, err
    assert "canonicalize" in stdout and "pass canonicalize: modified" in err

    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    status, stdout, err = run_cli("run", out, "--input", f"input={tmp_path / 'x.npy'}", "-o", tmp_path / "y")
    assert status == 0, err
    probs = np.load(tmp_path / "y" / "probs.npy")
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-5

    status, stdout, _ = run_cli("inspect", EXAMPLE)
    assert status == 0
    assert "dynamic dims: [0]" in stdout and "Conv 3" in stdout and "1,533 params" in stdout
    status, stdout, _ = run_cli("inspect", EXAMPLE, *SHAPE)
    assert "1,114,432 MACs" in stdout


def test_verify_prints_errors_and_tolerance(run_cli) -> None:
    status, stdout, err = run_cli("verify", EXAMPLE, "--target", "host", *SHAPE, "-q")
    assert status == 0, err
    assert "max rel err" in stdout and "tolerance" in stdout and "verified" in stdout


def test_verify_rpi5_under_emulation(run_cli) -> None:
    status, stdout, err = run_cli("verify", EXAMPLE, "--target", "rpi5", "--emulate", *SHAPE, "-q")
    assert status == 0, err
    assert "under emulation" in stdout and stdout.strip().endswith("verified")


def test_verify_rpi5_without_emulate_is_a_usage_error(run_cli) -> None:
    status, _, err = run_cli("verify", EXAMPLE, "--target", "rpi5", *SHAPE)
    assert status == 2 and "add --emulate" in err


def test_passes_and_targets_list_everything(run_cli) -> None:
    status, stdout, _ = run_cli("targets")
    assert status == 0
    for name in ("host", "rpi5", "rpi4", "aarch64", "armv9"):
        assert f"{name}:" in stdout
    assert "qemu-aarch64 -cpu cortex-a76" in stdout and '"mcpu": "cortex-a76"' in stdout
    from passc.targets import all_targets

    from passc.registry import all_passes

    assert set(all_targets()) == {"host", "rpi5", "rpi4", "aarch64", "armv9"}
    status, stdout, _ = run_cli("passes")
    assert status == 0
    listed = {line.split()[0] for line in stdout.splitlines() if line and not line.startswith(" ")}
    assert listed == set(all_passes()) >= {"canonicalize", "fuse", "fold-linear-blocks", "assign-bits"}


def test_installed_plugin_is_listed_by_a_fresh_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "passc.cli", "passes"], capture_output=True, text=True, check=True
    )
    assert "drop-identity-arith" in done.stdout
    assert "drop-identity-arith.max_rounds: int = 4" in done.stdout


def test_plugin_pass_runs_from_the_command_line(run_cli, tmp_path: Path) -> None:
    model = save(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[2, 3] x) => (float[2, 3] y) {
              one = Constant<value = float[1] {1.0}>()
              a = Mul(x, one)
              y = Relu(a)
            }"""
        ),
        tmp_path / "m.onnx",
    )
    plugin = Path(__file__).parent.parent / "examples" / "custom_pass" / "passc_example_pass.py"
    status, stdout, err = run_cli(
        "compile",
        model,
        "--target",
        "host",
        "-o",
        tmp_path / "out",
        "--plugin",
        plugin,
        "--passes",
        "drop-identity-arith",
        "--verify-each",
    )
    assert status == 0, err
    assert "pass drop-identity-arith: modified, nodes 2 -> 1" in err


@pytest.mark.parametrize(
    ("make", "args", "code", "message"),
    [
        (lambda d: d / "missing.onnx", [], 2, "model file not found"),
        (
            lambda d: _write(d / "junk.onnx", b"\x08\x07garbage\xff\xff not protobuf"),
            [],
            1,
            "is not a valid ONNX model",
        ),
        (
            lambda d: _write(d / "cut.onnx", EXAMPLE.read_bytes()[:3000]),
            [],
            1,
            "is not a valid ONNX model",
        ),
        (lambda d: _write(d / "zero.onnx", b""), [], 1, "is empty (0 bytes), not an ONNX model"),
        (lambda d: _empty_graph(d), [], 1, "is an ONNX model with an empty graph"),
        (lambda d: _external(d, delete=True), [], 1, "external data file missing"),
        (lambda d: EXAMPLE, ["--target", "rpi9"], 2, "unknown target 'rpi9'"),
        (
            lambda d: EXAMPLE,
            ["--passes", "canonicalize,fuse-everything"],
            2,
            "unknown pass 'fuse-everything'",
        ),
        (
            lambda d: EXAMPLE,
            ["--pass-option", "canonicalize.speed=11"],
            2,
            "pass 'canonicalize' has no option 'speed'",
        ),
        (
            lambda d: EXAMPLE,
            ["--input-shape", "image:1x3x64x64"],
            2,
            "--input-shape names 'image', but the model's inputs are: input",
        ),
        (lambda d: EXAMPLE, ["--input-shape", "input=1,3"], 2, "bad --input-shape"),
        (lambda d: EXAMPLE, ["--threads", "0"], 2, "--threads must be at least 1"),
        (lambda d: _unsupported(d), [], 1, "TVM cannot lower op Det (node 'det_node')"),
        (
            lambda d: _plugin(d, "raise RuntimeError('boom')"),
            [],
            2,
            "failed to load: RuntimeError: boom",
        ),
    ],
)
def test_errors_are_one_line_with_exit_code_and_leave_nothing(
    run_cli, tmp_path: Path, make, args: list[str], code: int, message: str
) -> None:
    source = make(tmp_path)
    out = tmp_path / "build" / "art"
    extra = ["--plugin", source] if str(source).endswith(".py") else []
    model = EXAMPLE if extra else source
    target = [] if "--target" in args else ["--target", "host"]
    shape = [] if "--input-shape" in args or model != EXAMPLE else SHAPE
    result = run_cli("compile", model, *target, *shape, *args, *extra, "-o", out)
    _assert_clean_failure(result, code, message, out)


def test_unbound_dynamic_dim_names_the_input_and_flag(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "art"
    result = run_cli("compile", EXAMPLE, "--target", "host", "-o", out)
    _assert_clean_failure(
        result,
        2,
        "input 'input' has dynamic shape batchx3x64x64; bind it with --input-shape input:1x3x64x64",
        out,
    )


def test_missing_cross_toolchain_says_what_to_install(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to be found
    out = tmp_path / "art"
    result = run_cli("compile", EXAMPLE, "--target", "rpi5", *SHAPE, "-o", out)
    _assert_clean_failure(result, 1, "apt-get install g++-aarch64-linux-gnu", out)


def test_missing_qemu_says_what_to_install(run_cli, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "art"
    assert run_cli("compile", EXAMPLE, "--target", "rpi5", *SHAPE, "-o", out, "--bundle", "-q")[0] == 0
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    status, _, err = run_cli("run", out, "--emulate")
    assert status == 1 and "qemu-aarch64 not found (install it: apt-get install qemu-user)" in err


@pytest.mark.parametrize("before_command", [True, False])
def test_debug_shows_the_traceback(run_cli, tmp_path: Path, before_command: bool) -> None:
    args = ["compile", tmp_path / "missing.onnx", "--target", "host"]
    args = ["--debug", *args] if before_command else [*args, "--debug"]
    status, _, err = run_cli(*args)
    assert status == 2 and "Traceback" in err


def test_failed_rebuild_keeps_the_previous_artifact(run_cli, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "art"
    assert run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", out, "-q")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    from passc.backends.cpu import CPUBackend
    from passc.errors import PasscError

    def broken_bundle(self, out_dir, target):
        raise PasscError("simulated failure while bundling")

    monkeypatch.setattr(CPUBackend, "bundle", broken_bundle)
    status, _, err = run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", out, "--bundle")
    assert status == 1 and "simulated failure" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_run_rejects_wrong_input_shapes(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "art"
    assert run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", out, "-q")[0] == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    status, _, err = run_cli("run", out, "--input", f"input={tmp_path / 'x.npy'}")
    assert status == 2 and "must be float32 of shape 1x3x64x64, got float32 of shape 1x3x32x32" in err


def test_compile_refuses_to_replace_a_non_artifact(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    status, _, err = run_cli("compile", EXAMPLE, "--target", "host", *SHAPE, "-o", out)
    assert status == 2 and "not a passc artifact" in err
    assert (out / "thesis.txt").read_text() == "do not delete"


def _empty_graph(directory: Path) -> Path:
    graph = onnx.helper.make_graph([], "empty", [], [])
    return save(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), directory / "e.onnx"
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _external(directory: Path, delete: bool) -> Path:
    path = directory / "ext.onnx"
    onnx.save(onnx.load(EXAMPLE), path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    if delete:
        (directory / "ext.bin").unlink()
    return path


def _unsupported(directory: Path) -> Path:
    model = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 3] x) => (float[2] y) {
          y = Det(x)
        }"""
    )
    model.graph.node[0].name = "det_node"
    return save(model, directory / "det.onnx")


def _plugin(directory: Path, body: str) -> Path:
    return _write(directory / "bad_plugin.py", body.encode())
