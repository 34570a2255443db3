"""ONNX's backend test data that ships inside the onnx wheel, through `passc compile --target host`
and a run, against each case's expected outputs (rtol 1e-3, atol 1e-5, NaN equal to NaN, as ONNX's
backend runner compares). Each case passes or is a clear error (a PasscError naming what passc
cannot take); a wrong result or any other exception fails the test. The zoo models (`light/`,
their weights made by ConstantOfShape, listed as graph inputs too) verify against onnxruntime."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import numpy_helper

from passc.compiler import compile_model
from passc.errors import PasscError
from passc.verify import verify_model

pytestmark = pytest.mark.slow

DATA = Path(onnx.backend.test.__file__).parent / "data"
SUITES = ("pytorch-converted", "pytorch-operator", "simple")
PASSING = 121  # of 140 cases; README's conformance line gives the rest


def _tensors(files: list[Path]) -> list[np.ndarray]:
    arrays = []
    for file in files:
        tensor = onnx.TensorProto()
        tensor.ParseFromString(file.read_bytes())
        arrays.append(numpy_helper.to_array(tensor))
    return arrays


def _run_case(case: Path, out: Path) -> str:
    """'pass', 'error: …' (a clear error) or 'WRONG: …'."""
    proto = onnx.load(case / "model.onnx")
    data = case / "test_data_set_0"
    initialized = {t.name for t in proto.graph.initializer}
    names = [v.name for v in proto.graph.input if v.name not in initialized]
    inputs = dict(zip(names, _tensors(sorted(data.glob("input_*.pb"))), strict=False))
    expected = _tensors(sorted(data.glob("output_*.pb")))
    try:
        shapes = {name: tuple(array.shape) for name, array in inputs.items()}
        artifact = compile_model(case / "model.onnx", "host", out, input_shapes=shapes, records=[]).artifact
        actual = artifact.run(inputs)
    except PasscError as err:
        return f"error: {str(err).splitlines()[0]}"
    for (name, got), want in zip(actual.items(), expected, strict=True):
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-5, equal_nan=True):
            return f"WRONG: {name}"
    return "pass"


def test_backend_test_data(tmp_path: Path) -> None:
    cases = [c for suite in SUITES for c in sorted((DATA / suite).iterdir()) if (c / "model.onnx").is_file()]
    results = {
        f"{c.parent.name}/{c.name}": _run_case(c, tmp_path / f"{c.parent.name}-{c.name}") for c in cases
    }
    wrong = {name: r for name, r in results.items() if r.startswith("WRONG")}
    assert not wrong, wrong
    counts = Counter(r.split(":")[0] for r in results.values())
    assert counts["pass"] >= PASSING, {n: r for n, r in results.items() if r != "pass"}
    assert counts["pass"] + counts["error"] == len(cases) == 140


@pytest.mark.parametrize("target", ["host", "rpi5"])
def test_zoo_model_verifies(target: str, tmp_path: Path) -> None:
    """SqueezeNet from the classic model zoo: every weight is a graph input too."""
    report = verify_model(
        DATA / "light" / "light_squeezenet.onnx", target, emulate=target != "host", output=tmp_path / "a"
    )
    assert report.passed, report.errors
    assert [t.name for t in report.compiled.artifact.function().inputs] == ["data_0"]
