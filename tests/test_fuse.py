"""The fuse pass: each rule fires on its pattern with onnxruntime's numbers, near misses are left alone
with a reason, a second run is a no-op, and the rules fire on torch exports."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from passc.passes.canonicalize import Canonicalize
from passc.passes.fuse import RULE_NAMES, Fuse

from passc import UsageError, oracle
from passc.loading import bind_input_shapes, load_model
from passc.pass_base import make_options
from tests.conftest import parse, save

RNG = np.random.default_rng(7)


def const(name: str, array, dtype: str = "float") -> str:
    """A Constant node line for onnx's text syntax."""
    array = np.asarray(array)
    shape = f"[{','.join(map(str, array.shape))}]" if array.ndim else ""
    values = ", ".join(f"{float(v):.9g}" if dtype == "float" else str(int(v)) for v in array.reshape(-1))
    return f"{name} = Constant<value = {dtype}{shape} {{{values}}}>()"


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def header(opset: int = 17) -> str:
    ir_version = 10 if opset >= 23 else 9 if opset >= 19 else 8
    return f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>'


def ops(model: ir.Model) -> list[str]:
    """The model's op types in order, leaving out the Constant nodes the test text declares."""
    return [n.op_type for n in model.graph if n.op_type != "Constant"]


def run_fuse(proto: onnx.ModelProto, **options) -> tuple[ir.Model, Fuse, ir.passes.PassResult]:
    model = ir.from_proto(proto)
    fuse = Fuse(Fuse.Options(**options))
    return model, fuse, fuse(model)


def assert_fires(
    proto: onnx.ModelProto, rule: str, gone: set[str], present: set[str] = frozenset(), **options
):
    """The rule fires, `gone` ops disappear, `present` ops appear, numbers hold, a rerun is a no-op."""
    reference = ir.from_proto(proto)
    inputs = oracle.random_inputs(oracle.input_specs(reference))
    expected = oracle.run_onnxruntime(reference, inputs)

    model, fuse, result = run_fuse(proto, **options)

    assert result.modified and fuse.fired[rule] >= 1, dict(fuse.fired)
    ops = {n.op_type for n in model.graph}
    assert not (ops & gone), ops
    assert present <= ops, ops
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    errors = oracle.compare(oracle.run_onnxruntime(model, inputs), expected)
    assert max(e.max_rel for e in errors) <= oracle.FLOAT_ROUNDING, errors
    assert [v.name for v in model.graph.outputs] == [v.name for v in reference.graph.outputs]

    snapshot = ir.to_proto(model).SerializeToString(deterministic=True)
    again = Fuse(Fuse.Options(**options))
    assert not again(model).modified and not again.fired
    assert ir.to_proto(model).SerializeToString(deterministic=True) == snapshot
    return model, fuse


def explain(proto: onnx.ModelProto, **options):
    """Runs fuse collecting near misses; returns (modified, fired, near misses)."""
    model = ir.from_proto(proto)
    before = ir.to_proto(model).SerializeToString(deterministic=True)
    fuse = Fuse(Fuse.Options(**options))
    fuse.explain = True
    result = fuse(model)
    if not result.modified:
        assert ir.to_proto(model).SerializeToString(deterministic=True) == before
    return result.modified, dict(fuse.fired), fuse.report.near_misses


# ---------------------------------------------------------------------------------------------
# Conv + BatchNormalization / Mul / Add

W = rand(4, 3, 3, 3)
B = rand(4)
BN = [np.abs(rand(4)) + 0.5, rand(4), rand(4), np.abs(rand(4)) + 0.1]


def conv_bn(bias: bool = True, second_use: bool = False, weight_input: bool = False) -> onnx.ModelProto:
    bn = "\n".join(const(n, a) for n, a in zip(("s", "bb", "m", "v"), BN, strict=True))
    weight = "" if weight_input else const("w", W)
    signature = "float[1,3,8,8] x" + (", float[4,3,3,3] w" if weight_input else "")
    outputs = "float[1,4,8,8] y" + (", float[1,4,8,8] c" if second_use else "")
    conv_inputs = "x, w, b" if bias else "x, w"
    return parse(
        f"""{header()}
        g ({signature}) => ({outputs}) {{
          {weight}
          {const("b", B)}
          {bn}
          c = Conv<pads = [1, 1, 1, 1]>({conv_inputs})
          y = BatchNormalization<epsilon = 0.001>(c, s, bb, m, v)
        }}"""
    )


def test_conv_batchnorm_folds() -> None:
    model, _ = assert_fires(conv_bn(), "conv-batchnorm", gone={"BatchNormalization"}, present={"Conv"})
    assert len(model.graph) == 1


def test_conv_batchnorm_folds_initializers_and_a_missing_bias() -> None:
    model = ir.from_proto(conv_bn(bias=False))
    ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    proto = ir.to_proto(model)
    fused, _ = assert_fires(proto, "conv-batchnorm", gone={"BatchNormalization"})
    assert len(fused.graph.initializers) == 2  # the old weight and BN parameters are gone


def test_convtranspose_batchnorm_folds_per_group() -> None:
    proto = parse(
        f"""{header()}
        g (float[1,4,5,5] x) => (float[1,6,10,10] y) {{
          {const("w", rand(4, 3, 2, 2))}
          {const("b", rand(6))}
          {const("s", np.abs(rand(6)) + 0.5)}
          {const("bb", rand(6))}
          {const("m", rand(6))}
          {const("v", np.abs(rand(6)) + 0.1)}
          c = ConvTranspose<group = 2, strides = [2, 2]>(x, w, b)
          y = BatchNormalization(c, s, bb, m, v)
        }}"""
    )
    assert_fires(proto, "convtranspose-batchnorm", gone={"BatchNormalization"})


def conv_then(op_lines: str, out_shape: str = "float[1,4,8,8] y", consts: str = "") -> onnx.ModelProto:
    return parse(
        f"""{header()}
        g (float[1,3,8,8] x) => ({out_shape}) {{
          {const("w", W)}
          {const("b", B)}
          {consts}
          c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
          {op_lines}
        }}"""
    )


def test_conv_mul_then_add_fold_into_weights_and_bias() -> None:
    consts = const("k", rand(4, 1, 1)) + "\n" + const("t", rand(1, 4, 1, 1))
    proto = conv_then("m = Mul(k, c)\n y = Add(m, t)", consts=consts)
    model, fuse = assert_fires(proto, "conv-mul", gone={"Mul", "Add"})
    assert fuse.fired["conv-add"] == 1 and len(model.graph) == 1


def test_conv_mul_by_a_scalar_folds() -> None:
    assert_fires(conv_then("y = Mul(c, k)", consts=const("k", [2.5])), "conv-mul", gone={"Mul"})


# ---------------------------------------------------------------------------------------------
# MatMul + Add -> Gemm


@pytest.mark.parametrize("add", ["Add(p, b)", "Add(b, p)"])
def test_matmul_add_becomes_gemm_in_either_order(add: str) -> None:
    proto = parse(
        f"""{header()}
        g (float[5,6] a) => (float[5,3] y) {{
          {const("w", rand(6, 3))}
          {const("b", rand(3))}
          p = MatMul(a, w)
          y = {add}
        }}"""
    )
    assert_fires(proto, "matmul-add-gemm", gone={"MatMul", "Add"}, present={"Gemm"})


# ---------------------------------------------------------------------------------------------
# Pad into Conv / pools


def pad_then(
    consumer: str, value: str = "", mode: str = "constant", x_shape: str = "1,3,8,8"
) -> onnx.ModelProto:
    fill = f"\n{const('v', [float(value)])}" if value else ""
    args = "x, pads, v" if value else "x, pads"
    return parse(
        f"""{header()}
        g (float[{x_shape}] x) => (float[1,?,?,?] y) {{
          {const("pads", [0, 0, 1, 2, 0, 0, 1, 0], "int64")}{fill}
          {const("w", W)}
          p = Pad<mode = "{mode}">({args})
          y = {consumer}
        }}"""
    )


@pytest.mark.parametrize(
    ("rule", "consumer", "value"),
    [
        ("pad-conv", "Conv<pads = [1, 0, 0, 1]>(p, w)", ""),
        ("pad-averagepool", "AveragePool<kernel_shape = [3, 3]>(p)", ""),
        (
            "pad-averagepool",
            "AveragePool<kernel_shape = [3, 3], pads = [0, 0, 1, 1], count_include_pad = 1>(p)",
            "",
        ),
        ("pad-maxpool", "MaxPool<kernel_shape = [3, 3], strides = [2, 2]>(p)", "-inf"),
    ],
)
def test_pad_folds_into_its_consumer(rule: str, consumer: str, value: str) -> None:
    assert_fires(pad_then(consumer, value), rule, gone={"Pad"})


# ---------------------------------------------------------------------------------------------
# Layout chains


@pytest.mark.parametrize(
    ("rule", "body", "out"),
    [
        (
            "transpose-transpose",
            "t = Transpose<perm = [0, 2, 3, 1]>(x)\n y = Transpose<perm = [0, 3, 1, 2]>(t)",
            "float[2,3,4,5] y",
        ),
        (
            "reshape-reshape",
            f"{const('s1', [6, 20], 'int64')}\n {const('s2', [2, 60], 'int64')}\n"
            " r = Reshape(x, s1)\n y = Reshape(r, s2)",
            "float[2,60] y",
        ),
        (
            "unsqueeze-squeeze",
            f"{const('a', [0], 'int64')}\n u = Unsqueeze(x, a)\n s = Squeeze(u, a)\n y = Relu(s)",
            "float[2,3,4,5] y",
        ),
        (
            "unsqueeze-reshape",
            f"{const('a', [1], 'int64')}\n {const('s', [6, -1], 'int64')}\n"
            " u = Unsqueeze(x, a)\n y = Reshape(u, s)",
            "float[6,20] y",
        ),
        (
            "noop-reshape",
            f"{const('s', [0, 3, -1, 5], 'int64')}\n r = Reshape(x, s)\n y = Relu(r)",
            "float[2,3,4,5] y",
        ),
    ],
)
def test_layout_chains_collapse(rule: str, body: str, out: str) -> None:
    proto = parse(f"{header(17)}\n g (float[2,3,4,5] x) => ({out}) {{\n {body}\n }}")
    model, _ = assert_fires(proto, rule, gone=set())
    assert len(ops(model)) <= 1


def test_squeeze_then_unsqueeze_on_the_same_axis_is_removed() -> None:
    proto = parse(
        f"""{header(17)}
        g (float[2,1,4] x) => (float[2,1,4] y) {{
          {const("a", [1], "int64")}
          s = Squeeze(x, a)
          u = Unsqueeze(s, a)
          y = Relu(u)
        }}"""
    )
    model, _ = assert_fires(proto, "squeeze-unsqueeze", gone={"Squeeze", "Unsqueeze"})
    assert ops(model) == ["Relu"]


# ---------------------------------------------------------------------------------------------
# Normalizations, GELU, attention

LN_SCALE, LN_BIAS = rand(8), rand(8)


def layer_norm(opset: int, axes: list[int], squared: str, divide: str, bias: bool = True) -> onnx.ModelProto:
    if opset >= 18:
        reduce = f"{const('axes', axes, 'int64')}\n mean = ReduceMean(x, axes)"
        reduce_var = "var = ReduceMean(sq, axes)"
    else:
        reduce = f"mean = ReduceMean<axes = {axes}>(x)"
        reduce_var = f"var = ReduceMean<axes = {axes}>(sq)"
    add_bias = "y = Add(scaled, beta)" if bias else "y = Identity(scaled)"
    return parse(
        f"""{header(opset)}
        g (float[2,5,8] x) => (float[2,5,8] y) {{
          {const("eps", 1e-5)}
          {const("two", 2.0)}
          {const("gamma", LN_SCALE)}
          {const("beta", LN_BIAS)}
          {reduce}
          d = Sub(x, mean)
          sq = {squared}
          {reduce_var}
          ve = Add(var, eps)
          std = Sqrt(ve)
          {divide}
          scaled = Mul(gamma, n)
          {add_bias}
        }}"""
    )


@pytest.mark.parametrize(
    ("opset", "squared", "divide"),
    [
        (17, "Mul(d, d)", "n = Div(d, std)"),
        (18, "Pow(d, two)", "r = Reciprocal(std)\n n = Mul(r, d)"),
    ],
)
def test_layer_norm_is_recognised(opset: int, squared: str, divide: str) -> None:
    model, fuse = assert_fires(
        layer_norm(opset, [-1], squared, divide), "layer-norm", gone={"ReduceMean", "Sqrt"}
    )
    assert fuse.fired["layer-norm-bias"] == 1
    assert ops(model) == ["LayerNormalization"]


def rms_norm(opset: int) -> onnx.ModelProto:
    return parse(
        f"""{header(opset)}
        g (float[2,5,8] x) => (float[2,5,8] y) {{
          {const("eps", 1e-6)}
          {const("gamma", LN_SCALE)}
          {const("axes", [-1], "int64")}
          sq = Mul(x, x)
          ms = ReduceMean(sq, axes)
          ve = Add(ms, eps)
          r = Sqrt(ve)
          n = Div(x, r)
          y = Mul(n, gamma)
        }}"""
    )


def test_rms_norm_is_recognised_at_opset_23() -> None:
    assert_fires(rms_norm(23), "rms-norm", gone={"ReduceMean"}, present={"RMSNormalization"})


GELU_ERF = [
    "h = Mul(x, half)\n t = Add(e, one)\n y = Mul(h, t)",
    "t = Add(one, e)\n ht = Mul(t, half)\n y = Mul(ht, x)",
    "t = Add(e, one)\n xt = Mul(x, t)\n y = Mul(half, xt)",
]


@pytest.mark.parametrize("grouping", GELU_ERF)
def test_gelu_erf_is_recognised_in_any_grouping(grouping: str) -> None:
    proto = parse(
        f"""{header(20)}
        g (float[3,7] x) => (float[3,7] y) {{
          {const("half", 0.5)}
          {const("one", 1.0)}
          {const("root2", math.sqrt(2.0))}
          z = Div(x, root2)
          e = Erf(z)
          {grouping}
        }}"""
    )
    model, _ = assert_fires(proto, "gelu-erf", gone={"Erf"}, present={"Gelu"})
    (node,) = model.graph
    assert node.attributes.get_string("approximate", "none") == "none"


def gelu_tanh(opset: int) -> onnx.ModelProto:
    return parse(
        f"""{header(opset)}
        g (float[3,7] x) => (float[3,7] y) {{
          {const("half", 0.5)}
          {const("one", 1.0)}
          {const("c", 0.044715)}
          {const("k", math.sqrt(2.0 / math.pi))}
          x2 = Mul(x, x)
          x3 = Mul(x2, x)
          cx3 = Mul(c, x3)
          inner = Add(x, cx3)
          scaled = Mul(inner, k)
          th = Tanh(scaled)
          t = Add(th, one)
          hx = Mul(half, x)
          y = Mul(hx, t)
        }}"""
    )


def test_gelu_tanh_is_recognised() -> None:
    model, _ = assert_fires(gelu_tanh(20), "gelu-tanh", gone={"Tanh"}, present={"Gelu"})
    (node,) = model.graph
    assert node.attributes.get_string("approximate") == "tanh"


def attention(opset: int, mask: bool = True) -> onnx.ModelProto:
    """torch's SDPA export: q and k each scaled by d^-1/4, k transposed through a 3-D Reshape."""
    root = 8**-0.25
    mask_lines = f"{const('mask', np.triu(np.full((5, 5), -1e4), 1))}\n sm = Add(s, mask)" if mask else ""
    scores = "sm" if mask else "s"
    return parse(
        f"""{header(opset)}
        g (float[2,3,5,8] q, float[2,3,5,8] k, float[2,3,5,8] v) => (float[2,3,5,8] y) {{
          {const("root", root)}
          {const("s3", [6, 5, 8], "int64")}
          {const("s4", [2, 3, 8, 5], "int64")}
          k3 = Reshape(k, s3)
          k3t = Transpose<perm = [0, 2, 1]>(k3)
          kt = Reshape(k3t, s4)
          qs = Mul(q, root)
          ks = Mul(kt, root)
          s = MatMul(qs, ks)
          {mask_lines}
          w = Softmax<axis = -1>({scores})
          y = MatMul(w, v)
        }}"""
    )


def test_attention_is_rewritten_to_its_smallest_standard_form() -> None:
    model, _ = assert_fires(attention(17), "attention", gone={"Reshape"}, present={"Softmax"})
    assert sorted(ops(model)) == ["Add", "MatMul", "MatMul", "Mul", "Softmax", "Transpose"]


def test_attention_as_the_onnx_op_when_asked_at_opset_23() -> None:
    model, _ = assert_fires(
        attention(23), "attention", gone={"Softmax"}, present={"Attention"}, attention="onnx"
    )
    assert ops(model) == ["Attention"]


def test_manual_attention_is_already_minimal() -> None:
    proto = parse(
        f"""{header(17)}
        g (float[2,3,5,8] q, float[2,3,5,8] k, float[2,3,5,8] v) => (float[2,3,5,8] y) {{
          {const("d", math.sqrt(8))}
          kt = Transpose<perm = [0, 1, 3, 2]>(k)
          s = MatMul(q, kt)
          sd = Div(s, d)
          w = Softmax<axis = -1>(sd)
          y = MatMul(w, v)
        }}"""
    )
    modified, _, misses = explain(proto)
    assert not modified
    assert any(m.rule == "attention" and "already minimal" in m.reason for m in misses)


# ---------------------------------------------------------------------------------------------
# No-ops


@pytest.mark.parametrize(
    ("rule", "body"),
    [
        (
            "dropout",
            f"{const('ratio', 0.5)}\n {const('train', False, 'bool')}\n"
            " d = Dropout(x, ratio, train)\n y = Relu(d)",
        ),
        ("noop-cast", "c = Cast<to = 1>(x)\n y = Relu(c)"),
        (
            "noop-slice",
            f"{const('st', [0, 0], 'int64')}\n {const('en', [9223372036854775807, 4], 'int64')}\n"
            f" {const('ax', [0, -1], 'int64')}\n s = Slice(x, st, en, ax)\n y = Relu(s)",
        ),
        ("noop-expand", f"{const('sh', [3, 4], 'int64')}\n e = Expand(x, sh)\n y = Relu(e)"),
        ("identity", "i = Identity(x)\n j = Identity(i)\n y = Relu(j)"),
    ],
)
def test_no_ops_are_removed(rule: str, body: str) -> None:
    proto = parse(f"{header(17)}\n g (float[3,4] x) => (float[3,4] y) {{\n {body}\n }}")
    model, _ = assert_fires(proto, rule, gone=set())
    assert ops(model) == ["Relu"]


def test_an_identity_between_input_and_output_stays() -> None:
    proto = parse(f"{header(17)}\n g (float[3] x) => (float[3] y) {{\n y = Identity(x)\n }}")
    _, _, result = run_fuse(proto)
    assert not result.modified


# ---------------------------------------------------------------------------------------------
# Constants canonicalize leaves for their size

TABLE = rand(5000, 2)  # 10,000 elements: over onnxscript's input limit for folding


def anchors(rows: int) -> onnx.ModelProto:
    """YOLOv8's exported anchor strides: ConstantOfShape → Add → Transpose, all constant."""
    return parse(
        f"""{header(17)}
        g (float[2,{rows}] x) => (float[2,{rows}] y) {{
          {const("shape", [rows, 1], "int64")}
          {const("eight", 8.0)}
          c = ConstantOfShape<value = float[1] {{0.0}}>(shape)
          a = Add(c, eight)
          t = Transpose<perm = [1, 0]>(a)
          y = Mul(x, t)
        }}"""
    )


def gather(indices: list[int], second_use: bool = False) -> onnx.ModelProto:
    """BERT's position embeddings: a large table gathered at constant positions."""
    n = len(indices)
    other = "\n z = Relu(table)" if second_use else ""
    outputs = "float[1,?,2] y" + (", float[5000,2] z" if second_use else "")
    return parse(
        f"""{header(17)}
        g (float[1,{n},2] x) => ({outputs}) {{
          {const("table", TABLE)}
          {const("positions", [indices], "int64")}
          e = Gather(table, positions)
          y = Add(x, e){other}
        }}"""
    )


def test_constant_of_shape_and_what_it_makes_constant_fold() -> None:
    model, fuse = assert_fires(anchors(6), "constants", gone={"ConstantOfShape", "Add", "Transpose"})
    assert ops(model) == ["Mul"] and fuse.fired["constants"] == 3


def test_gather_from_a_large_table_folds_to_the_rows_it_takes() -> None:
    model, _ = assert_fires(gather(list(range(128))), "constants", gone={"Gather"})
    assert ops(model) == ["Add"]
    assert [list(v.shape) for v in model.graph.initializers.values()] == [[1, 128, 2]]


@pytest.mark.parametrize(
    "proto",
    [anchors(9000), gather(list(range(4500)), second_use=True)],
    ids=["constant-of-shape-too-large", "gather-would-grow-the-model"],
)
def test_constants_that_would_grow_the_model_stay(proto: onnx.ModelProto) -> None:
    modified, fired, _ = explain(proto)
    assert not modified and "constants" not in fired


# ---------------------------------------------------------------------------------------------
# Near misses: left alone, with a reason


def _reason(misses, rule: str) -> str:
    found = [m.reason for m in misses if m.rule == rule]
    assert found, misses
    return found[0]


@pytest.mark.parametrize(
    ("proto", "rule", "reason"),
    [
        (conv_bn(second_use=True), "conv-batchnorm", "another consumer"),
        (conv_bn(weight_input=True), "conv-batchnorm", "weight 'w' is not a constant"),
        (conv_then("y = Mul(c, k)", consts=const("k", rand(1, 4, 8, 8))), "conv-mul", "is not per-channel"),
        (conv_then("y = Mul(c, k)", consts=const("k", rand(1, 1, 8, 8))), "conv-mul", "is not per-channel"),
        (conv_then("y = Add(c, k)", consts=const("k", rand(4))), "conv-add", "is not per-channel"),
        (pad_then("Conv(p, w)", value="1.5"), "pad-conv", "Pad value is 1.5"),
        (pad_then("Conv(p, w)", mode="reflect"), "pad-conv", "mode is 'reflect'"),
        (pad_then("MaxPool<kernel_shape = [3, 3]>(p)"), "pad-maxpool", "MaxPool pads with -inf"),
        (
            pad_then("AveragePool<kernel_shape = [3, 3], pads = [0, 0, 1, 1]>(p)"),
            "pad-averagepool",
            "count_include_pad=0",
        ),
        (layer_norm(17, [1], "Mul(d, d)", "n = Div(d, std)"), "layer-norm", "not the trailing ones"),
        (gelu_tanh(18), "gelu-tanh", "Gelu needs opset 20"),
        (rms_norm(18), "rms-norm", "RMSNormalization needs opset 23"),
    ],
    ids=[
        "bn-second-consumer",
        "bn-weight-not-constant",
        "mul-by-NCHW",
        "mul-per-spatial",
        "add-along-last-axis",
        "pad-nonzero-conv",
        "pad-reflect-conv",
        "pad-zero-maxpool",
        "pad-avgpool-own-pads",
        "layer-norm-wrong-axis",
        "gelu-low-opset",
        "rms-low-opset",
    ],
)
def test_near_misses_are_left_alone_with_a_reason(proto: onnx.ModelProto, rule: str, reason: str) -> None:
    modified, fired, misses = explain(proto)
    assert rule not in fired
    assert reason in _reason(misses, rule)
    assert not modified or set(fired) <= {"identity", "layer-norm-bias"}


def test_rank_3_matmul_add_is_not_a_gemm() -> None:
    proto = parse(
        f"""{header()}
        g (float[2,5,6] a) => (float[2,5,3] y) {{
          {const("w", rand(6, 3))}
          {const("b", rand(3))}
          p = MatMul(a, w)
          y = Add(p, b)
        }}"""
    )
    modified, _, misses = explain(proto)
    assert not modified and "not 2 and 2" in _reason(misses, "matmul-add-gemm")


def test_gemm_bias_that_would_broadcast_the_product_is_refused() -> None:
    proto = parse(
        f"""{header()}
        g (float[5,6] a) => (float[2,5,3] y) {{
          {const("w", rand(6, 3))}
          {const("b", rand(2, 5, 3))}
          p = MatMul(a, w)
          y = Add(p, b)
        }}"""
    )
    modified, _, misses = explain(proto)
    assert not modified and "rank 3 > 2" in _reason(misses, "matmul-add-gemm")


# ---------------------------------------------------------------------------------------------
# Options


def test_rules_option_selects_a_subset() -> None:
    consts = const("k", rand(4, 1, 1)) + "\n" + const("t", rand(4, 1, 1))
    proto = conv_then("m = Mul(c, k)\n y = Add(m, t)", consts=consts)
    model, fuse, result = run_fuse(proto, rules=("conv-add",))
    assert not result.modified  # the Add follows the Mul, not the Conv
    model, fuse, result = run_fuse(proto, exclude=("conv-add",))
    assert dict(fuse.fired) == {"conv-mul": 1}


def test_unknown_rule_and_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown fuse rule 'conv-relu'"):
        make_options(Fuse, {"rules": "conv-batchnorm,conv-relu"})
    with pytest.raises(UsageError, match="attention must be one of"):
        make_options(Fuse, {"attention": "fast"})
    assert make_options(Fuse, {"rules": "gelu-erf,gelu-tanh"}).rules == ("gelu-erf", "gelu-tanh")
    assert len(set(RULE_NAMES)) == len(RULE_NAMES)


# ---------------------------------------------------------------------------------------------
# What fuse emits is what TVM's Relax frontend imports


@pytest.mark.parametrize(
    "make",
    [
        conv_bn,
        lambda: pad_then("AveragePool<kernel_shape = [3, 3]>(p)"),
        lambda: pad_then("MaxPool<kernel_shape = [3, 3], strides = [2, 2]>(p)", "-inf"),
        lambda: layer_norm(17, [-1], "Mul(d, d)", "n = Div(d, std)"),
        lambda: rms_norm(23),
        lambda: gelu_tanh(20),
        lambda: attention(17),
        lambda: anchors(6),
    ],
    ids=[
        "conv-bn",
        "pad-avgpool",
        "pad-maxpool",
        "layer-norm-17",
        "rms-norm-23",
        "gelu-tanh-20",
        "attention",
        "constants",
    ],
)
def test_fused_models_import_into_tvm(make) -> None:
    from tvm.relax.frontend.onnx import from_onnx

    from passc.lowering import unsupported_nodes

    model, fuse, result = run_fuse(make())
    assert result.modified and not unsupported_nodes(model), dict(fuse.fired)
    shapes = {v.name: list(v.shape) for v in model.graph.inputs}
    module = from_onnx(ir.to_proto(model), shape_dict=shapes, keep_params_in_input=False)
    assert "main" in [gv.name_hint for gv in module.get_global_vars()]


# ---------------------------------------------------------------------------------------------
# passc optimize


def _cli_model(directory: Path) -> Path:
    """Dynamic batch; Conv → per-channel Mul → Add folds; a rank-3 MatMul + Add stays."""
    return save(
        parse(
            f"""{header(17)}
            g (float[N,3,8,8] x, float[N,5,6] a) => (float[N,4,8,8] y, float[N,5,3] z) {{
              {const("w", W)}
              {const("b", B)}
              {const("k", rand(4, 1, 1))}
              {const("t", rand(4, 1, 1))}
              {const("m", rand(6, 3))}
              {const("c", rand(3))}
              conv = Conv<pads = [1, 1, 1, 1]>(x, w, b)
              scaled = Mul(conv, k)
              y = Add(scaled, t)
              p = MatMul(a, m)
              z = Add(p, c)
            }}"""
        ),
        directory / "m.onnx",
    )


def test_optimize_writes_onnx_with_the_same_numbers_and_explains(run_cli, tmp_path: Path) -> None:
    source = _cli_model(tmp_path)
    out = tmp_path / "out" / "m.opt.onnx"

    status, stdout, err = run_cli("optimize", source, "-o", out, "--explain")

    assert status == 0, err
    assert "fuse fired: conv-add x1, conv-mul x1" in stdout
    assert "nodes 11 -> 3" in stdout  # Constant nodes are lifted into initializers
    assert "conv-mul: fired on" in stdout
    assert "matmul-add-gemm: not on" in stdout and "ranks 3 and 2, not 2 and 2" in stdout
    assert stdout.strip().endswith(str(out))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary files left
    feeds = {"x": rand(2, 3, 8, 8), "a": rand(2, 5, 6)}
    expected = oracle.run_onnxruntime(ir.load(source), feeds)
    optimized = ir.load(out)
    assert optimized.graph.inputs[0].shape[0] == ir.SymbolicDim("N")  # dynamic dims stay
    assert [v.shape for v in optimized.graph.outputs] == [v.shape for v in ir.load(source).graph.outputs]
    errors = oracle.compare(oracle.run_onnxruntime(optimized, feeds), expected)
    assert max(e.max_rel for e in errors) <= oracle.FLOAT_ROUNDING


def test_optimize_takes_a_pass_list_options_and_shapes(run_cli, tmp_path: Path) -> None:
    source = _cli_model(tmp_path)
    out = tmp_path / "m.opt.onnx"
    args = ["--passes", "fuse", "--pass-option", "fuse.rules=conv-add", "--input-shape", "x:1x3x8x8"]
    status, stdout, err = run_cli("optimize", source, "-o", out, *args, "-q")
    assert status == 0, err
    assert "fired" not in stdout and "nodes 11 -> 5" in stdout  # the Add follows the Mul
    assert ir.load(out).graph.inputs[0].shape == ir.Shape([1, 3, 8, 8])

    status, _, err = run_cli("optimize", source, "-o", out, "--pass-option", "fuse.rules=conv-relu")
    assert status == 2 and "unknown fuse rule 'conv-relu'" in err


def test_big_models_keep_their_tensors_in_an_external_file(tmp_path: Path, monkeypatch) -> None:
    import passc.optimize

    monkeypatch.setattr(passc.optimize, "_EXTERNAL_DATA_BYTES", 0)  # as if over protobuf's 2 GiB
    out = tmp_path / "big.onnx"
    result = passc.optimize.optimize_model(_cli_model(tmp_path), out)
    assert result.external_data == tmp_path / "big.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "m.onnx"]
    feeds = {"x": rand(1, 3, 8, 8), "a": rand(1, 5, 6)}
    expected = oracle.run_onnxruntime(ir.load(tmp_path / "m.onnx"), feeds)
    errors = oracle.compare(oracle.run_onnxruntime(load_model(out).model, feeds), expected)
    assert max(e.max_rel for e in errors) <= oracle.FLOAT_ROUNDING


def test_optimize_never_imports_tvm(tmp_path: Path) -> None:
    source = _cli_model(tmp_path)
    code = (
        "import sys; from passc.cli import main; "
        f"code = main(['optimize', {str(source)!r}, '-o', {str(tmp_path / 'o.onnx')!r}, '-q']); "
        "assert code == 0; assert not [m for m in sys.modules if m == 'tvm' or m.startswith('tvm.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ---------------------------------------------------------------------------------------------
# Torch exports


def _fuse_and_compare(path: Path, shapes: dict | None = None, canonicalize: bool = True):
    model = load_model(path).model
    if shapes:
        bind_input_shapes(model, shapes)
    inputs = oracle.random_inputs(oracle.input_specs(model))
    expected = oracle.run_onnxruntime(model, inputs)
    if canonicalize:
        Canonicalize()(model)
    fuse = Fuse()
    fuse(model)
    errors = oracle.compare(oracle.run_onnxruntime(model, inputs), expected)
    assert max(e.max_rel for e in errors) <= oracle.FLOAT_ROUNDING, errors
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    return model, dict(fuse.fired)


def test_attention_fires_on_the_torch_encoder(torch_models) -> None:
    _, fired = _fuse_and_compare(*torch_models["encoder"])
    assert fired["attention"] == 2, fired


@pytest.fixture(scope="module")
def torch_exports(tmp_path_factory) -> dict[str, Path]:
    """A transformer block from nn modules, the same block written out by hand, a CNN with BatchNorm."""
    torch = pytest.importorskip("torch", reason="torch is the 'torch' extra")
    nn, functional = torch.nn, torch.nn.functional
    out = tmp_path_factory.mktemp("torch_exports")
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, handwritten: bool, d: int = 16) -> None:
            super().__init__()
            self.handwritten = handwritten
            self.norm = nn.LayerNorm(d)
            self.qkv, self.f1, self.f2 = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, d)
            self.gelu, self.gelu_tanh = nn.GELU(), nn.GELU(approximate="tanh")

        def forward(self, x):
            if self.handwritten:
                mean = x.mean(-1, keepdim=True)
                var = ((x - mean) ** 2).mean(-1, keepdim=True)
                h = (x - mean) / torch.sqrt(var + 1e-5) * self.norm.weight + self.norm.bias
            else:
                h = self.norm(x)
            q, k, v = self.qkv(h).unflatten(-1, (3, 2, -1)).permute(2, 0, 3, 1, 4)
            a = functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
            u, w = self.f1(a), self.f2(a)
            if self.handwritten:
                erf = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))
                tanh = 0.5 * w * (1 + torch.tanh(math.sqrt(2 / math.pi) * (w + 0.044715 * w**3)))
                return erf + tanh
            return self.gelu(u) + self.gelu_tanh(w)

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.bn2 = nn.ConvTranspose2d(8, 4, 2, stride=2), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn2(self.c2(torch.relu(self.bn1(self.c1(x)))))

    cnn = CNN()
    for bn in (cnn.bn1, cnn.bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    paths = {}
    for name, module, example, optimize in [
        ("block", Block(handwritten=False), torch.randn(2, 5, 16), True),
        ("handwritten", Block(handwritten=True), torch.randn(2, 5, 16), True),
        # The exporter's own optimizer folds BatchNorm; without it the BatchNorms reach passc.
        ("cnn", cnn, torch.randn(1, 3, 8, 8), False),
    ]:
        module.eval()
        program = torch.onnx.export(module, (example,), dynamo=True, optimize=optimize, verbose=False)
        program.save(str(out / f"{name}.onnx"))
        paths[name] = out / f"{name}.onnx"
    return paths


def test_torch_block_already_has_layer_norm_and_gelu_and_attention_fires(torch_exports) -> None:
    model, fired = _fuse_and_compare(torch_exports["block"])
    assert fired == {"attention": 1}
    ops = {n.op_type for n in model.graph}
    assert {"LayerNormalization", "Gelu"} <= ops  # torch 2.13 exports both at opset 20


def test_handwritten_torch_block_is_fused(torch_exports) -> None:
    model, fired = _fuse_and_compare(torch_exports["handwritten"])
    for rule in ("layer-norm", "layer-norm-bias", "gelu-erf", "gelu-tanh", "attention"):
        assert fired.get(rule) == 1, fired
    ops = [n.op_type for n in model.graph]
    assert ops.count("Gelu") == 2 and "Erf" not in ops and "ReduceMean" not in ops


def test_batchnorm_folds_in_a_torch_cnn(torch_exports) -> None:
    model, fired = _fuse_and_compare(torch_exports["cnn"], canonicalize=False)
    assert fired == {"conv-batchnorm": 1, "convtranspose-batchnorm": 1}
    assert [n.op_type for n in model.graph] == ["Conv", "Relu", "ConvTranspose"]


def test_onnxruntime_ops_fuse_a_bert_layer_into_contrib_ops(tmp_path: Path) -> None:
    """onnxruntime_ops=true: an HF-BERT-style layer becomes com.microsoft Attention and friends."""
    torch = pytest.importorskip("torch", reason="torch is the 'torch' extra")
    nn = torch.nn
    torch.manual_seed(0)

    class BertLayer(nn.Module):
        def __init__(self, d: int = 32, heads: int = 4) -> None:
            super().__init__()
            self.heads, self.q, self.k, self.v = heads, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.out, self.norm1, self.norm2 = nn.Linear(d, d), nn.LayerNorm(d), nn.LayerNorm(d)
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def split(self, x):
            return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

        def forward(self, x):
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            a = (scores @ v).transpose(1, 2).reshape(x.shape)
            h = self.norm1(x + self.out(a))
            return self.norm2(h + self.down(torch.nn.functional.gelu(self.up(h))))

    program = torch.onnx.export(BertLayer().eval(), (torch.randn(2, 8, 32),), dynamo=True, opset_version=18)
    program.save(str(tmp_path / "bert.onnx"))
    model = load_model(tmp_path / "bert.onnx").model
    inputs = oracle.random_inputs(oracle.input_specs(model))
    expected = oracle.run_onnxruntime(model, inputs)
    Canonicalize()(model)
    standard = len(list(model.graph))
    fuse = Fuse(make_options(Fuse, {"onnxruntime_ops": "true"}))
    assert fuse(model).modified
    assert fuse.fired["ort-attention"] == 1 and fuse.fired["ort-skip-layer-normalization"] >= 1, fuse.fired
    assert {n.domain for n in model.graph} >= {"com.microsoft"}
    assert len(list(model.graph)) < standard / 2
    errors = oracle.compare(oracle.run_onnxruntime(model, inputs), expected)
    assert max(e.max_rel for e in errors) <= oracle.FLOAT_ROUNDING, errors
    snapshot = ir.to_proto(model).SerializeToString()
    assert not Fuse(fuse.options)(model).modified
    assert ir.to_proto(model).SerializeToString() == snapshot
