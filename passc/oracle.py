"""onnxruntime as the oracle: random inputs, reference outputs, and the error measure.

Error of an output y against the reference r:
    max_abs = max |y − r|,   max_rel = max_abs / max(max |r|, 1e-12)
i.e. the worst deviation relative to the output's range, which stays meaningful for outputs
that cross zero (unlike an element-wise |y − r| / |r|).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from passc.errors import PasscError

__all__ = [
    "OutputError",
    "random_inputs",
    "input_specs",
    "run_onnxruntime",
    "compare",
    "FLOAT_ROUNDING",
]

# The relative error allowed to an exact pass or compiler for float32 rounding alone.
FLOAT_ROUNDING = 1e-5


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    max_rel: float


def random_inputs(specs: list[tuple[str, tuple[int, ...], str]], seed: int = 0) -> dict[str, np.ndarray]:
    """Reproducible inputs for (name, shape, dtype) specs: N(0, 1) floats, small non-negative ints."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape, dtype in specs:
        np_dtype = np.dtype(dtype)
        if np_dtype.kind == "f":
            inputs[name] = rng.standard_normal(shape).astype(np_dtype)
        elif np_dtype.kind == "b":
            inputs[name] = rng.integers(0, 2, shape).astype(np_dtype)
        else:
            inputs[name] = rng.integers(0, 8, shape).astype(np_dtype)
    return inputs


def input_specs(model: ir.Model) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, numpy dtype name) of each graph input; shapes must be static."""
    return [
        (v.name, tuple(v.shape), v.dtype.numpy().name)  # type: ignore[union-attr]
        for v in model.graph.inputs
    ]


def run_onnxruntime(model: ir.Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the model on CPU with onnxruntime; outputs by name."""
    proto = ir.to_proto(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))
    except Exception as err:
        raise PasscError(f"onnxruntime could not run the model: {err}") from None


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[OutputError]:
    """The error of each expected output (by name) in `actual`."""
    errors = []
    for name, ref in expected.items():
        if name not in actual:
            raise PasscError(f"output {name!r} is missing from the result")
        got = np.asarray(actual[name])
        if got.shape != ref.shape:
            raise PasscError(f"output {name!r} has shape {got.shape}, onnxruntime gives {ref.shape}")
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref.astype(np.float64)).max()) if ref.size else 0.0
        errors.append(OutputError(name, max_abs, max_abs / max(scale, 1e-12)))
    return errors
