"""assign-bits realised in the binary: packed weights stay packed in the artifact, and it still verifies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import passc
from passc.verify import verify_model

WIDTHS = [(64, 256), (256, 512), (512, 512), (512, 256), (256, 10)]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """Five MatMul+Relu layers, 0.66 M float32 weights: the weights dominate the binary."""
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i, (n, m) in enumerate(WIDTHS):
        w = (rng.standard_normal((n, m)) / np.sqrt(n)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"layer{i}"))
        last = i == len(WIDTHS) - 1
        if not last:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"]))
        x = f"h{i}" if last else f"a{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save(model, path)
    return path


def _compile(mlp: Path, out: Path, **assign_options) -> dict:
    passes = ["canonicalize"] + (["assign-bits"] if assign_options else [])
    options = {"assign-bits": assign_options} if assign_options else None
    artifact = passc.compile(
        mlp, "host", out, input_shapes={"x": (4, 64)}, passes=passes, pass_options=options
    )
    return artifact.manifest


FOUR_BITS = {"widths": "4", "budget": "avg-bits=4", "keep_first": "false", "keep_last": "false"}


def test_four_bit_artifact_holds_packed_weights(mlp: Path, tmp_path: Path) -> None:
    floats = _compile(mlp, tmp_path / "float")
    quant = _compile(mlp, tmp_path / "q4", **FOUR_BITS)

    float_bytes = floats["weights"]["constant_bytes"]
    quant_bytes = quant["weights"]["params_bytes"] + quant["weights"]["constant_bytes"]
    assert quant_bytes <= 0.3 * float_bytes
    assert (tmp_path / "q4" / "params.bin").stat().st_size == quant["weights"]["params_bytes"]
    # TVM did not fold the decode back into float constants: the library lost the float weights.
    shrink = (tmp_path / "float" / "model.so").stat().st_size - (tmp_path / "q4" / "model.so").stat().st_size
    assert shrink >= 0.9 * float_bytes
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "q4" / "model.onnx").metadata_props}
    assert set(json.loads(metadata["passc.bit_widths"]).values()) == {4}


def test_size_budget_holds_on_the_artifact(mlp: Path, tmp_path: Path) -> None:
    budget = 200_000
    manifest = _compile(mlp, tmp_path / "q", budget=f"size={budget}B")
    record = next(p for p in manifest["functions"]["main"]["passes"] if p["pass"] == "assign-bits")
    assert record["modified"]
    assert 0 < manifest["weights"]["params_bytes"] <= budget


def test_quantized_artifact_verifies_within_the_declared_tolerance(mlp: Path, tmp_path: Path) -> None:
    held_out = {"x": np.random.default_rng(2024).standard_normal((4, 64)).astype(np.float32)}
    report = verify_model(
        mlp,
        "host",
        inputs=held_out,  # not the calibration batches the tolerance was measured on
        input_shapes={"x": (4, 64)},
        emulate=True,  # the bundled C++ runner reads params.bin too
        passes=["canonicalize", "assign-bits"],
        pass_options={"assign-bits": FOUR_BITS},
        output=tmp_path / "q4",
    )
    declared = next(r for r in report.compiled.pass_log if r.name == "assign-bits").tolerance
    assert declared > 0  # measured: 2 × the worst relative error on the calibration batches
    assert report.passed, report.errors


@pytest.mark.slow
def test_quantized_artifact_runs_on_rpi5_under_emulation(mlp: Path, tmp_path: Path) -> None:
    report = verify_model(
        mlp,
        "rpi5",
        input_shapes={"x": (4, 64)},
        emulate=True,
        passes=["canonicalize", "assign-bits"],
        pass_options={"assign-bits": {"budget": "avg-bits=3"}},
        output=tmp_path / "q",
    )
    assert report.passed, report.errors


def test_inspect_shows_the_widths_of_an_artifact(mlp: Path, tmp_path: Path, run_cli) -> None:
    _compile(mlp, tmp_path / "q4", **FOUR_BITS)
    code, out, err = run_cli("inspect", tmp_path / "q4")
    assert code == 0, err
    assert "weight widths: layer0 4-bit, layer1 4-bit, layer2 4-bit, layer3 4-bit, layer4 4-bit" in out
    code, out, _ = run_cli("inspect", tmp_path / "q4", "--json")
    assert json.loads(out)["bit_widths"] == {f"layer{i}": 4 for i in range(5)}


def test_latency_budget_is_measured_per_layer_on_the_host(mlp: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PASSC_CACHE_DIR", str(tmp_path / "cache"))
    options = {"widths": "4,16", "budget": "latency=1s", "keep_first": "false", "keep_last": "false"}
    manifest = _compile(mlp, tmp_path / "q", **options)
    timings = list((tmp_path / "cache" / "latency").glob("*.json"))
    assert len(timings) == len(WIDTHS) * 2
    assert all(0 < json.loads(t.read_text())["seconds"] < 1 for t in timings)
    assert next(p for p in manifest["functions"]["main"]["passes"] if p["pass"] == "assign-bits")["modified"]
    _compile(mlp, tmp_path / "again", **options)  # a second build measures nothing new
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == len(timings)


def test_latency_is_measured_through_tvm_rpc(tmp_path: Path, monkeypatch, rpc_server: str) -> None:
    """OHQ's on-chip costs: layers timed by a TVM RPC server (here on 127.0.0.1, as a board would)."""
    import onnx_ir as ir
    from passc.passes.assign_bits import AssignBits

    from passc.pass_base import make_options

    monkeypatch.setenv("PASSC_CACHE_DIR", str(tmp_path / "cache"))
    options = {"widths": "4,8", "budget": "latency=1s", "rpc": rpc_server, "keep_first": "false"}
    model = ir.load(_small_mlp(tmp_path))
    assigner = AssignBits(make_options(AssignBits, options))
    assert assigner(model).modified
    assert assigner.solution.totals["latency"] > 0


def _small_mlp(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((16, 32), (32, 8)))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="l1"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="l2"),
        ],
        "small",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_unreachable_rpc_server_is_one_clear_error(tmp_path: Path) -> None:
    from passc.targets import get_target

    from passc.errors import PasscError
    from passc.loading import load_model
    from passc.runtime import measure_latency

    host = get_target("host")
    model = load_model(_small_mlp(tmp_path)).model
    with pytest.raises(PasscError, match="timing the model over RPC at 127.0.0.1:9 failed"):
        measure_latency(model, host.tvm, host.cxx, rpc="127.0.0.1:9")
