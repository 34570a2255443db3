"""Property: on random conv / BatchNorm / Mul / Add / Pad / MatMul / Transpose chains, fuse keeps
onnxruntime's numbers and a second run changes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
from hypothesis import given, settings
from hypothesis import strategies as st
from passc.passes.fuse import Fuse

from passc import oracle

CONV_STEPS = ("conv", "conv3", "bn", "mul", "add", "mul_bad", "relu", "transpose_pair", "pad_conv")
MATMUL_STEPS = ("linear", "linear_swapped", "relu", "transpose_pair", "add_rank3")


class _Builder:
    """A chain of ops on one tensor, with random constants."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, array: np.ndarray) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(onh.from_array(np.asarray(array), name))
        return name

    def rand(self, *shape: int, positive: bool = False) -> np.ndarray:
        a = self.rng.standard_normal(shape).astype(np.float32)
        return np.abs(a) + 0.5 if positive else a

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(oh.make_node(op_type, inputs, [out], **attrs))
        return out


def _conv_step(b: _Builder, x: str, c: int, step: str) -> tuple[str, int]:
    if step in ("conv", "conv3", "pad_conv"):
        k = 1 if step == "conv" else 3
        out_c = int(b.rng.integers(2, 5))
        w = b.const(b.rand(out_c, c, k, k) / k)
        inputs = [x, w] + ([b.const(b.rand(out_c))] if b.rng.random() < 0.5 else [])
        if step == "pad_conv":
            inputs[0] = b.op("Pad", [x, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
            return b.op("Conv", inputs, kernel_shape=[k, k]), out_c
        return b.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4), out_c
    if step == "bn":
        params = [b.rand(c, positive=True), b.rand(c), b.rand(c), b.rand(c, positive=True)]
        return b.op("BatchNormalization", [x, *map(b.const, params)], epsilon=1e-3), c
    if step == "mul":
        return b.op(
            "Mul", [x, b.const(b.rand(c, 1, 1))] if b.rng.random() < 0.5 else [b.const(b.rand(1)), x]
        ), c
    if step == "add":
        return b.op("Add", [b.const(b.rand(1, c, 1, 1)), x]), c
    if step == "mul_bad":  # varies along the spatial axes: must not fold into a conv
        return b.op("Mul", [x, b.const(b.rand(1, 1, 6, 6))]), c
    if step == "relu":
        return b.op("Relu", [x]), c
    t = b.op("Transpose", [x], perm=[0, 2, 3, 1])
    return b.op("Transpose", [t], perm=[0, 3, 1, 2]), c


def _matmul_step(b: _Builder, x: str, k: int, step: str) -> tuple[str, int]:
    if step in ("linear", "linear_swapped"):
        n = int(b.rng.integers(2, 6))
        p = b.op("MatMul", [x, b.const(b.rand(k, n))])
        bias = b.const(b.rand(n) if b.rng.random() < 0.5 else b.rand(1, n))
        return b.op("Add", [p, bias] if step == "linear" else [bias, p]), n
    if step == "relu":
        return b.op("Relu", [x]), k
    if step == "add_rank3":  # broadcasts to rank 3 then back: no Gemm may absorb it
        p = b.op("MatMul", [x, b.const(b.rand(k, k))])
        big = b.op("Add", [p, b.const(b.rand(2, 1, k))])
        return b.op("ReduceSum", [big, b.const(np.array([0], np.int64))], keepdims=0), k
    t = b.op("Transpose", [x], perm=[1, 0])
    return b.op("Transpose", [t], perm=[1, 0]), k


def _model(family: str, steps: list[str], seed: int) -> onnx.ModelProto:
    b = _Builder(seed)
    if family == "conv":
        x, shape, size = "x", [1, 3, 6, 6], 3
        for step in steps:
            x, size = _conv_step(b, x, size, step)
    else:
        x, shape, size = "x", [4, 3], 3
        for step in steps:
            x, size = _matmul_step(b, x, size, step)
    b.nodes.append(oh.make_node("Identity", [x], ["y"]))
    graph = oh.make_graph(
        b.nodes,
        "chain",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        b.inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def _unfoldable_batchnorms(steps: list[str]) -> int:
    """BatchNorms with no conv before them, looking back through the steps that fold or vanish."""
    left = 0
    for i, step in enumerate(steps):
        if step != "bn":
            continue
        before = [s for s in steps[:i] if s not in ("bn", "mul", "add", "transpose_pair")]
        left += not (before and before[-1] in ("conv", "conv3", "pad_conv"))
    return left


chains = st.one_of(
    st.tuples(st.just("conv"), st.lists(st.sampled_from(CONV_STEPS), min_size=1, max_size=6)),
    st.tuples(st.just("matmul"), st.lists(st.sampled_from(MATMUL_STEPS), min_size=1, max_size=5)),
)


@settings(max_examples=40, deadline=None, database=None)
@given(chain=chains, seed=st.integers(0, 2**16))
def test_fused_matches_unfused_and_is_idempotent(chain, seed: int) -> None:
    family, steps = chain
    proto = _model(family, steps, seed)
    reference = ir.from_proto(proto)
    inputs = oracle.random_inputs(oracle.input_specs(reference))
    expected = oracle.run_onnxruntime(reference, inputs)

    model = ir.from_proto(proto)
    first = Fuse()
    first(model)
    errors = oracle.compare(oracle.run_onnxruntime(model, inputs), expected)
    assert max(e.max_rel for e in errors) <= oracle.FLOAT_ROUNDING, (steps, dict(first.fired), errors)
    ops = [n.op_type for n in model.graph]
    if family == "conv":
        assert ops.count("BatchNormalization") == _unfoldable_batchnorms(steps)
    else:
        assert family == "matmul" and ops.count("MatMul") == steps.count("add_rank3")

    snapshot = ir.to_proto(model).SerializeToString(deterministic=True)
    second = Fuse()
    assert not second(model).modified, dict(second.fired)
    assert ir.to_proto(model).SerializeToString(deterministic=True) == snapshot
