"""onnxruntime as the oracle: random inputs, reference outputs, and the error measure.

Error of an output y against the reference r:
    max_abs = max |y − r|,   max_rel = max_abs / max(max |r|, 1e-12)
i.e. the worst deviation relative to the output's range, which stays meaningful for outputs
that cross zero (unlike an element-wise |y − r| / |r|).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from passc.errors import PasscError

__all__ = [
    "NOISE_MULTIPLE",
    "OutputError",
    "reference_noise",
    "random_inputs",
    "input_specs",
    "run_onnxruntime",
    "compare",
    "FLOAT_ROUNDING",
]

# The relative error allowed to an exact pass or compiler for float32 rounding alone.
FLOAT_ROUNDING = 1e-5
# An output within this multiple of the reference's own float32 rounding (`reference_noise`) is
# rounding, whatever its relative error: two float32 evaluations in different orders differ by a
# few times either one's distance from the exact result.
NOISE_MULTIPLE = 10.0


@dataclass(frozen=True)
class OutputError:
    """An output's error against the reference; `noise` is the reference's own float32 rounding
    there (max abs), where measured."""

    name: str
    max_abs: float
    max_rel: float
    noise: float = 0.0

    def within(self, tolerance: float) -> bool:
        """Within `tolerance` of the output's range, or within NOISE_MULTIPLE × the noise."""
        return self.max_rel <= tolerance or self.max_abs <= NOISE_MULTIPLE * self.noise


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


def run_onnxruntime(
    model: ir.Model | onnx.ModelProto, inputs: dict[str, np.ndarray], *, optimize: bool = True
) -> dict[str, np.ndarray]:
    """Runs the model on CPU with onnxruntime (with its graph optimisations unless not
    `optimize`); outputs by name."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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


def _as_float64(model: ir.Model) -> onnx.ModelProto:
    """The model computing in float64: float32 tensors, inputs, outputs, casts and constants
    become float64 (inputs are fed widened)."""
    from onnx import numpy_helper

    proto = ir.to_proto(model)
    float32, float64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE

    def widen(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == float32:
            tensor.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)
            )

    def graph(g: onnx.GraphProto) -> None:
        del g.value_info[:]
        for value in (*g.input, *g.output):
            if value.type.tensor_type.elem_type == float32:
                value.type.tensor_type.elem_type = float64
        for tensor in g.initializer:
            widen(tensor)
        for node in g.node:
            for attribute in node.attribute:
                if attribute.name in ("to", "dtype") and attribute.i == float32:
                    attribute.i = float64
                if attribute.type == onnx.AttributeProto.TENSOR:
                    widen(attribute.t)
                if attribute.type == onnx.AttributeProto.GRAPH:
                    graph(attribute.g)

    graph(proto.graph)
    return proto


def reference_noise(
    model: ir.Model, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Per output, the reference's own float32 rounding (max abs): onnxruntime's float32 result
    (`reference`, when the caller has run it) against the same model run in float64 and against
    onnxruntime without its graph optimisations (the larger of the two that run; 0 where neither
    differs)."""
    reference = run_onnxruntime(model, inputs) if reference is None else reference
    others = [run_onnxruntime(model, inputs, optimize=False)]
    try:
        wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in inputs.items()}
        others.append(run_onnxruntime(_as_float64(model), wide))
    except PasscError:  # an op without a float64 kernel: the optimisation floor stands alone
        pass
    noise = {}
    for name, ref in reference.items():
        diffs = [
            float(np.abs(ref.astype(np.float64) - np.asarray(o[name], np.float64)).max()) if ref.size else 0.0
            for o in others
            if name in o and np.shape(o[name]) == ref.shape and np.issubdtype(ref.dtype, np.floating)
        ]
        noise[name] = max(diffs, default=0.0)
    return noise
