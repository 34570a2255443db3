"""Artifacts with several entry points (weights shared, stored once), Relax-level passes that add
one, and the manifest's format: checked against onnxruntime, in-process, through `passc run`
and through the bundled `passc-run` under qemu."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import passc
from passc import oracle
from passc.errors import PasscError, UsageError
from passc.loading import bind_input_shapes, load_model
from passc.manifest import Manifest
from passc.pass_base import RUNTIME_PARAMS_KEY
from tests.conftest import EXAMPLE

PLUGIN = Path(__file__).parent.parent / "examples" / "custom_pass" / "passc_example_relax_pass.py"
BATCHES = {"main": 1, "b8": 8}


def _batch_models(tmp_path: Path) -> dict[str, Path]:
    """The example CNN saved at batch 1 and batch 8 (same weights), one file each."""
    paths = {}
    for name, batch in BATCHES.items():
        model = load_model(EXAMPLE).model
        bind_input_shapes(model, {"input": (batch, 3, 64, 64)})
        paths[name] = tmp_path / f"cnn_b{batch}.onnx"
        ir.save(model, paths[name])
    return paths


def _dense(directory: Path, rows: int, weight: np.ndarray, runtime_param: bool = False) -> Path:
    """A one-MatMul model y = x · w of `rows` rows; w a constant, or a runtime parameter."""
    depth, count = weight.shape
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [rows, depth])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [rows, count])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    if runtime_param:
        onnx.helper.set_model_props(proto, {RUNTIME_PARAMS_KEY: json.dumps(["w"])})
    path = directory / f"dense{rows}{'p' if runtime_param else ''}.onnx"
    onnx.save(proto, path)
    return path


def _expected(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return oracle.run_onnxruntime(load_model(path).model, inputs)


def _assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for error in oracle.compare(actual, expected):
        assert error.max_rel < 1e-4, error


def test_two_batch_sizes_share_their_weights_and_both_run_in_process(tmp_path: Path) -> None:
    models = _batch_models(tmp_path)
    single = passc.compile(models["main"], target="host", output=tmp_path / "single")
    both = passc.compile(models, target="host", output=tmp_path / "both")
    assert set(both.functions) == {"main", "b8"}
    assert both.functions["b8"].inputs[0].shape == (8, 3, 64, 64)
    for name, path in models.items():
        inputs = both.random_inputs(seed=3, function=name)
        _assert_close(both.run(inputs, function=name), _expected(path, inputs))
    inputs = both.random_inputs()
    np.testing.assert_array_equal(passc.load(tmp_path / "both")(**inputs)["probs"], both.run(inputs)["probs"])
    # The weights are compiled in once: the same distinct constant bytes as one function.
    assert both.manifest["weights"]["constant_bytes"] == single.manifest["weights"]["constant_bytes"] > 0
    sources = {name: both.manifest["functions"][name]["source_sha256"] for name in models}
    assert sources == {name: passc.loading.sha256_file(path) for name, path in models.items()}


def test_shared_weights_are_stored_once_in_model_so(tmp_path: Path) -> None:
    """A model whose weights (1 MB) dwarf its code: a second batch size adds its kernels to
    model.so, not another copy of the weights."""
    weight = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    paths = {name: _dense(tmp_path, rows, weight) for name, rows in (("main", 1), ("b8", 8))}
    one = passc.compile(paths["main"], target="host", output=tmp_path / "one")
    two = passc.compile(paths, target="host", output=tmp_path / "two")
    size_one, size_two = ((a.path / "model.so").stat().st_size for a in (one, two))
    assert size_one > weight.nbytes  # the (packed) weights are in model.so
    assert size_two - size_one < weight.nbytes // 4, (size_one, size_two)
    for name, path in paths.items():
        inputs = two.random_inputs(function=name)
        _assert_close(two.run(inputs, function=name), _expected(path, inputs))


def test_shared_runtime_params_are_stored_once_in_params_bin(tmp_path: Path) -> None:
    weight = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    paths = {
        name: _dense(tmp_path, rows, weight, runtime_param=True) for name, rows in (("main", 2), ("b4", 4))
    }
    art = passc.compile(paths, target="host", output=tmp_path / "art", bundle=True)
    assert (art.path / "params.bin").stat().st_size == weight.nbytes
    assert art.manifest["weights"]["params_bytes"] == weight.nbytes
    entries = {name: f.params for name, f in art.functions.items()}
    assert entries["main"] == entries["b4"] and entries["main"][0].offset == 0
    for name, path in paths.items():
        inputs = art.random_inputs(function=name)
        expected = _expected(path, inputs)
        _assert_close(art.run(inputs, function=name), expected)
        _assert_close(art.run(inputs, function=name, emulate=True), expected)


def test_cli_compiles_named_functions_for_rpi5_and_runs_each_under_qemu(run_cli, tmp_path: Path) -> None:
    models = _batch_models(tmp_path)
    out = tmp_path / "art"
    status, stdout, err = run_cli(
        "compile",
        *(f"{name}={path}" for name, path in models.items()),
        "--target",
        "rpi5",
        "--bundle",
        "-o",
        out,
    )
    assert status == 0, err
    assert "function main:" in stdout and "function b8:" in stdout
    for name, path in models.items():
        inputs = {
            "input": np.random.default_rng(5).standard_normal((BATCHES[name], 3, 64, 64)).astype(np.float32)
        }
        np.save(tmp_path / f"{name}.npy", inputs["input"])
        status, _, err = run_cli(
            "run", out, "--function", name, "--emulate", "--input", f"input={tmp_path / f'{name}.npy'}",
            "-o", tmp_path / name,
        )  # fmt: skip
        assert status == 0, err
        _assert_close({"probs": np.load(tmp_path / name / "probs.npy")}, _expected(path, inputs))
    status, _, err = run_cli("run", out, "--function", "b2", "--emulate")
    assert status == 2 and "no function 'b2' (its functions: b8, main)" in err


def test_verify_checks_every_function(run_cli, tmp_path: Path) -> None:
    models = _batch_models(tmp_path)
    status, stdout, err = run_cli(
        "verify", *(f"{n}={p}" for n, p in models.items()), "--target", "host", "-q"
    )
    assert status == 0, err
    assert "function main:" in stdout and "function b8:" in stdout and stdout.count("  ok") == 2


def test_per_function_input_shapes_from_one_dynamic_model(tmp_path: Path) -> None:
    shapes = {name: {"input": (batch, 3, 64, 64)} for name, batch in BATCHES.items()}
    art = passc.compile(
        {name: EXAMPLE for name in BATCHES}, target="host", output=tmp_path / "a", input_shapes=shapes
    )
    assert [art.functions[n].inputs[0].shape[0] for n in BATCHES] == list(BATCHES.values())
    with pytest.raises(UsageError, match="function names"):
        passc.compile({"main": EXAMPLE}, target="host", output=tmp_path / "b", input_shapes={"other": {}})


@pytest.mark.parametrize("bad", ["1st", "has-dash", ""])
def test_bad_function_names_are_usage_errors(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="bad function name"):
        passc.compile({bad: EXAMPLE}, target="host", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_relax_pass_from_a_plugin_adds_an_entry_point(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "art"
    status, stdout, err = run_cli(
        "compile", EXAMPLE, "--target", "host", "--input-shape", "input:4x3x64x64", "-o", out, "--bundle",
        "--plugin", PLUGIN, "--passes", "canonicalize,fuse,add-argmax",
    )  # fmt: skip
    assert status == 0, err
    assert "relax passes:" in stdout and "pass add-argmax: modified" in err
    art = passc.load(out)
    assert set(art.functions) == {"main", "predict"}
    predict = art.functions["predict"]
    assert [(t.name, t.shape, t.dtype) for t in predict.outputs] == [("class", (4,), "int64")]
    assert predict.source_sha256 is None and predict.passes == ()
    record = art.manifest["relax_passes"][0]
    assert record["pass"] == "add-argmax" and record["modified"] and record["fired"] == {"function-added": 1}
    assert record["after"]["nodes"] == record["before"]["nodes"] + 1  # the argmax call
    inputs = art.random_inputs()
    probs = art.run(inputs)["probs"]
    np.testing.assert_array_equal(art.run(inputs, function="predict")["class"], probs.argmax(-1))
    np.testing.assert_array_equal(
        art.run(inputs, function="predict", emulate=True)["class"], probs.argmax(-1)
    )
    status, stdout, err = run_cli(
        "verify", EXAMPLE, "--target", "host", "--input-shape", "input:4x3x64x64",
        "--plugin", PLUGIN, "--passes", "canonicalize,add-argmax", "-q",
    )  # fmt: skip
    assert status == 0, err
    assert "function predict: not checked" in stdout and stdout.strip().endswith("verified")


def test_installed_relax_pass_is_listed_with_its_stage_and_runs_without_plugin_flag(
    run_cli, tmp_path
) -> None:
    status, stdout, _ = run_cli("passes")
    assert status == 0
    assert "add-argmax  (relax pass, exact)" in stdout and "fuse  (onnx pass, exact)" in stdout
    assert "add-argmax.function: str = 'predict'" in stdout
    art = passc.compile(
        EXAMPLE,
        target="host",
        output=tmp_path / "art",
        input_shapes={"input": (2, 3, 64, 64)},
        passes=["canonicalize", "add-argmax"],
        pass_options={"add-argmax": {"function": "label"}},
    )
    assert set(art.functions) == {"main", "label"}


def test_onnx_pass_after_a_relax_pass_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="ONNX pass 'fuse' comes after Relax pass 'add-argmax'"):
        passc.compile(
            EXAMPLE, target="host", output=tmp_path / "a", passes=["canonicalize", "add-argmax", "fuse"]
        )


def test_optimize_refuses_a_relax_pass(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    status, _, err = run_cli("optimize", EXAMPLE, "-o", out, "--passes", "canonicalize,add-argmax")
    assert status == 2 and "runs on TVM's Relax module" in err
    assert not out.exists()


def test_a_relax_pass_may_not_change_an_entry_points_parameters(tmp_path: Path) -> None:
    from passc import RelaxPass, RelaxPassResult, register_pass

    @register_pass("drop-main-params")
    class DropParams(RelaxPass):
        """Replaces main with a function of no parameters (for this test)."""

        def call(self, mod):
            from tvm import relax

            bb = relax.BlockBuilder()
            with bb.function("main", []):
                bb.emit_func_output(relax.const(np.zeros((1, 10), np.float32)))
            return RelaxPassResult(bb.get(), modified=True)

    with pytest.raises(PasscError, match="changed the parameters of entry point 'main'"):
        passc.compile(
            EXAMPLE,
            target="host",
            output=tmp_path / "a",
            input_shapes={"input": (1, 3, 64, 64)},
            passes=["canonicalize", "drop-main-params"],
        )
    assert not (tmp_path / "a").exists()


def test_format_1_artifacts_are_read_and_newer_formats_refused(tmp_path: Path) -> None:
    art = passc.compile(
        EXAMPLE, target="host", output=tmp_path / "art", input_shapes={"input": (1, 3, 64, 64)}
    )
    data = json.loads((art.path / "manifest.json").read_text())
    main = data["functions"]["main"]
    old = {**data, "format": 1, "passes": main.pop("passes"), "source_sha256": main.pop("source_sha256")}
    del old["relax_passes"]
    old_dir = tmp_path / "old"
    shutil.copytree(art.path, old_dir)
    (old_dir / "manifest.json").write_text(json.dumps(old))
    reread = passc.load(old_dir)
    assert reread.pass_log() == art.pass_log() and reread.functions == art.functions
    inputs = art.random_inputs()
    np.testing.assert_array_equal(reread(**inputs)["probs"], art(**inputs)["probs"])

    (old_dir / "manifest.json").write_text(json.dumps({**data, "format": 3, "passc": "9.0"}))
    with pytest.raises(UsageError, match=r"artifact format 3 is not one this passc reads .*passc 9\.0"):
        passc.load(old_dir)
    for broken in ({"format": 2, "passc": "0.1.0"}, {}, []):
        (old_dir / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(PasscError, match="not a valid passc manifest"):
            Manifest.read(old_dir / "manifest.json")
