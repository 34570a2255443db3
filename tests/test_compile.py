"""End to end: torch models and the bundled example compile, run, match onnxruntime, rebuild
byte-identically; the rpi5 artifacts run under qemu-aarch64 -cpu cortex-a76."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import passc
from passc import oracle
from passc.loading import bind_input_shapes, load_model
from tests.conftest import EXAMPLE

TOLERANCE = 1e-4


def _reference(path: Path, shapes: dict, inputs: dict) -> dict:
    model = load_model(path).model
    bind_input_shapes(model, shapes)
    return oracle.run_onnxruntime(model, inputs)


def _assert_matches(actual: dict, expected: dict) -> None:
    for error in oracle.compare(actual, expected):
        assert error.max_rel <= TOLERANCE, error


@pytest.mark.parametrize("name", ["cnn", "encoder"])
def test_torch_model_on_host_matches_onnxruntime(torch_models, tmp_path: Path, name: str) -> None:
    path, shapes = torch_models[name]
    artifact = passc.compile(path, target="host", output=tmp_path / "art", input_shapes=shapes)
    inputs = artifact.random_inputs()
    _assert_matches(artifact(**inputs), _reference(path, shapes, inputs))


@pytest.mark.parametrize("name", ["cnn", "encoder"])
def test_torch_model_on_rpi5_under_qemu_matches(torch_models, tmp_path: Path, name: str) -> None:
    path, shapes = torch_models[name]
    artifact = passc.compile(path, target="rpi5", output=tmp_path / "art", input_shapes=shapes, bundle=True)
    assert artifact.manifest["target"]["tvm"]["mcpu"] == "cortex-a76"
    inputs = artifact.random_inputs()
    _assert_matches(artifact.run(inputs, emulate=True), _reference(path, shapes, inputs))


def test_torch_module_compiles_directly(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is the 'torch' extra")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 2)).eval()
    x = torch.randn(3, 8)
    artifact = passc.compile(module, example_inputs=(x,), target="host", output=tmp_path / "art")
    (output,) = artifact.run({artifact.inputs[0]["name"]: x.numpy()}).values()
    expected = module(x).detach().numpy()
    assert abs(output - expected).max() <= TOLERANCE * abs(expected).max()


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    builds = []
    for name in ("a", "b"):
        out = tmp_path / name
        passc.compile(EXAMPLE, target="rpi5", output=out, input_shapes={"input": (1, 3, 64, 64)}, bundle=True)
        builds.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert builds[0].keys() == {
        "manifest.json",
        "model.so",
        "model.onnx",
        "passc-run",
        "libtvm_runtime.so",
        "libtvm_ffi.so",
    }
    assert builds[0] == builds[1]
    assert str(tmp_path) not in builds[0]["manifest.json"].decode()


def test_manifest_describes_the_artifact(tmp_path: Path) -> None:
    out = tmp_path / "cnn.host"
    artifact = passc.compile(EXAMPLE, target="host", output=out, input_shapes={"input": (2, 3, 64, 64)})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == artifact.manifest
    assert manifest["format"] == 2
    assert list(manifest["functions"]) == ["main"]
    main = manifest["functions"]["main"]
    assert main["inputs"] == [{"name": "input", "shape": [2, 3, 64, 64], "dtype": "float32"}]
    assert main["outputs"] == [{"name": "probs", "shape": [2, 10], "dtype": "float32"}]
    assert main["source_sha256"] == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert "params" not in main and manifest["relax_passes"] == []
    assert manifest["target"]["name"] == "host"
    assert set(manifest["tvm"]) == {"apache-tvm", "apache-tvm-ffi"}
    assert manifest["tvm"]["apache-tvm-ffi"] == "0.1.14.post1"
    first = main["passes"][0]
    assert first["pass"] == "canonicalize" and first["modified"]
    assert first["before"]["nodes"] > first["after"]["nodes"]  # the flatten sub-graph folded
    assert manifest["kernels"] >= 1
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_depfile_lists_model_external_data_pipeline_and_plugin(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(EXAMPLE)
    model_path = tmp_path / "with data" / "model.onnx"
    model_path.parent.mkdir()
    onnx.save(model, model_path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('passes = ["canonicalize", "drop-identity-arith"]\n')
    plugin = Path(__file__).parent.parent / "examples" / "custom_pass" / "passc_example_pass.py"
    depfile = tmp_path / "model.d"
    out = tmp_path / "out"
    artifact = passc.compile(
        model_path,
        target="host",
        output=out,
        input_shapes={"input": (1, 3, 64, 64)},
        pipeline_file=pipeline,
        plugins=[str(plugin)],
        depfile=depfile,
    )
    text = depfile.read_text()
    escaped = str(tmp_path / "with data").replace(" ", "\\ ")
    assert text.startswith(f"{out}:")
    assert f"{escaped}/model.onnx" in text and f"{escaped}/weights.bin" in text
    assert str(pipeline) in text and str(plugin) in text
    assert [p["pass"] for p in artifact.pass_log()] == [
        "canonicalize",
        "drop-identity-arith",
    ]


def test_host_bundle_runs_natively_through_passc_run(tmp_path: Path) -> None:
    artifact = passc.compile(
        EXAMPLE, target="host", output=tmp_path / "art", input_shapes={"input": (2, 3, 64, 64)}, bundle=True
    )
    inputs = artifact.random_inputs()
    in_process = artifact.run(inputs)
    through_runner = artifact.run(inputs, emulate=True)
    assert (in_process["probs"] == through_runner["probs"]).all()


@pytest.mark.parametrize("target", ["rpi4", "aarch64", "armv9"])
def test_other_arm_targets_run_under_their_emulated_cpu(tmp_path: Path, target: str) -> None:
    shapes = {"input": (1, 3, 64, 64)}
    artifact = passc.compile(
        EXAMPLE, target=target, output=tmp_path / "art", input_shapes=shapes, bundle=True
    )
    inputs = artifact.random_inputs()
    _assert_matches(artifact.run(inputs, emulate=True), _reference(EXAMPLE, shapes, inputs))


def test_threads_default_to_the_target_and_the_environment_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    shapes = {"input": (1, 3, 64, 64)}
    default = passc.compile(EXAMPLE, target="rpi5", output=tmp_path / "a", input_shapes=shapes)
    assert default.threads == 4  # rpi5.toml
    artifact = passc.compile(
        EXAMPLE, target="host", output=tmp_path / "b", input_shapes=shapes, bundle=True, threads=3
    )
    assert artifact.manifest["target"]["threads"] == 3
    assert artifact.thread_env()["TVM_NUM_THREADS"] == "3"
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    assert artifact.thread_env()["TVM_NUM_THREADS"] == "1"
    inputs = artifact.random_inputs()
    _assert_matches(artifact.run(inputs, emulate=True), _reference(EXAMPLE, shapes, inputs))


def test_run_takes_aligned_unaligned_and_read_only_inputs_and_returns_fresh_outputs(tmp_path: Path) -> None:
    """An aligned input goes to TVM without a copy, an unaligned or read-only one through the
    input's buffer; every way gives onnxruntime's result, and an output never changes after the
    call that returned it (it is no view of a buffer a later call reuses)."""
    import numpy as np

    from passc.runtime import ALIGNMENT, aligned_empty

    shapes = {"input": (1, 3, 64, 64)}
    artifact = passc.compile(EXAMPLE, target="host", output=tmp_path / "art", input_shapes=shapes)
    rng = np.random.default_rng(0)
    first, second = (rng.standard_normal(shapes["input"]).astype(np.float32) for _ in range(2))
    aligned = aligned_empty(first.shape, first.dtype)
    aligned[...] = first
    raw = np.empty(first.nbytes + ALIGNMENT + 4, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT + 4  # 4 bytes past a boundary
    unaligned = raw[start : start + first.nbytes].view(np.float32).reshape(first.shape)
    unaligned[...] = first
    read_only = first.copy()
    read_only.flags.writeable = False
    assert aligned.ctypes.data % ALIGNMENT == 0 and unaligned.ctypes.data % ALIGNMENT == 4
    expected = _reference(EXAMPLE, shapes, {"input": first})
    results = [artifact.run({"input": x}) for x in (aligned, unaligned, read_only)]
    for result in results:
        _assert_matches(result, expected)
    kept = {name: value.copy() for name, value in results[1].items()}
    _assert_matches(artifact.run({"input": second}), _reference(EXAMPLE, shapes, {"input": second}))
    for name, value in kept.items():
        np.testing.assert_array_equal(results[1][name], value)
