"""fold-linear-blocks: every folding form matches onnxruntime on the unfolded graph; near misses stay."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from passc.passes.fold_linear_blocks import FoldLinearBlocks
from passc.passes.fold_linear_blocks.conv_math import ConvMap

from passc import oracle
from passc.errors import UsageError
from passc.pass_base import make_options
from passc.stats import model_stats
from tests.conftest import weighted_model

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _bn(c: int, tag: str) -> dict[str, np.ndarray]:
    """BatchNormalization parameters named s<tag>, h<tag>, m<tag>, v<tag>."""
    params = {
        "s": RNG.uniform(0.5, 1.5, c).astype(np.float32),  # scale
        "h": RNG.standard_normal(c).astype(np.float32),  # shift
        "m": RNG.standard_normal(c).astype(np.float32),  # mean
        "v": RNG.uniform(0.5, 2.0, c).astype(np.float32),  # variance
    }
    return {f"{k}{tag}": v for k, v in params.items()}


def _fold(model: ir.Model, **options) -> tuple[bool, list[str], FoldLinearBlocks]:
    """Runs the pass; checks numerics against the unfolded graph and that a second run is a no-op."""
    inputs = oracle.random_inputs(oracle.input_specs(model))
    expected = oracle.run_onnxruntime(model, inputs)
    folding = FoldLinearBlocks(make_options(FoldLinearBlocks, options))
    modified = folding(model).modified
    onnx.checker.check_model(ir.to_proto(model))
    for error in oracle.compare(oracle.run_onnxruntime(model, inputs), expected):
        assert error.max_rel <= oracle.FLOAT_ROUNDING, error
    snapshot = ir.to_proto(model).SerializeToString()
    assert not FoldLinearBlocks(folding.options)(model).modified
    assert ir.to_proto(model).SerializeToString() == snapshot
    return modified, [n.op_type for n in model.graph], folding


X16 = "(float[1, 16, 12, 10] x) => (float y)"


def test_collapsible_block_with_residual_folds_to_one_conv() -> None:
    model = weighted_model(
        X16,
        """a = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
           p = Conv(a, w2, b2)
           y = Add(p, x)""",
        w1=_w(64, 16, 3, 3),
        b1=_w(64),
        w2=_w(16, 64, 1, 1),
        b2=_w(16),
    )
    macs = model_stats(model).macs
    modified, ops, folding = _fold(model)
    assert modified and ops == ["Conv"]
    assert folding.fired == {"conv-conv": 1, "conv-plus-identity": 1}
    assert model.graph.node(0).inputs[1].shape == ir.Shape([16, 16, 3, 3])
    stats = model_stats(model)
    assert stats.macs * 4 < macs and stats.initializers == 2


def test_residual_lands_on_the_tap_its_padding_selects() -> None:
    model = weighted_model(
        X16,
        """t = Conv<pads = [2, 0, 0, 2]>(x, w)
           y = Add(x, t)""",
        w=_w(16, 16, 3, 3),
    )
    modified, ops, _ = _fold(model)
    assert modified and ops == ["Conv"]


def test_batchnorm_between_and_after_folds() -> None:
    model = weighted_model(
        X16,
        """a = Conv<pads = [2, 2, 2, 2]>(x, w1)
           n = BatchNormalization(a, s1, h1, m1, v1)
           p = Conv(n, w2, b2)
           y = BatchNormalization(p, s2, h2, m2, v2)""",
        w1=_w(32, 16, 5, 5),
        w2=_w(16, 32, 1, 1),
        b2=_w(16),
        **_bn(32, "1"),
        **_bn(16, "2"),
    )
    modified, ops, folding = _fold(model)
    assert modified and ops == ["Conv"]
    assert folding.fired["conv-batchnorm"] == 2


def test_chain_of_three_grows_the_kernel() -> None:
    model = weighted_model(
        "(float[1, 4, 12, 12] x) => (float y)",
        """a = Conv(x, w1, b1)
           b = Conv(a, w2, b2)
           y = Conv(b, w3, b3)""",
        w1=_w(64, 4, 3, 3),
        b1=_w(64),
        w2=_w(64, 64, 3, 3),
        b2=_w(64),
        w3=_w(4, 64, 1, 1),
        b3=_w(4),
    )
    modified, ops, _ = _fold(model)
    assert modified and ops == ["Conv"]
    assert model.graph.node(0).inputs[1].shape == ir.Shape([4, 4, 5, 5])


def test_strided_first_conv_composes_with_a_valid_second() -> None:
    model = weighted_model(
        "(float[1, 3, 17, 15] x) => (float y)",
        """a = Conv<strides = [2, 2], pads = [1, 0, 1, 2], dilations = [1, 2]>(x, w1, b1)
           y = Conv<strides = [1, 2]>(a, w2, b2)""",
        w1=_w(48, 3, 3, 3),
        b1=_w(48),
        w2=_w(8, 48, 2, 2),
        b2=_w(8),
    )
    modified, ops, _ = _fold(model, max_kernel=9)
    assert modified and ops == ["Conv"]


def test_pointwise_then_padded_conv_folds_when_the_first_has_no_bias() -> None:
    model = weighted_model(
        X16,
        """a = Conv(x, w1)
           y = Conv<pads = [1, 1, 1, 1]>(a, w2, b2)""",
        w1=_w(64, 16, 1, 1),
        w2=_w(8, 64, 3, 3),
        b2=_w(8),
    )
    modified, ops, _ = _fold(model)
    assert modified and ops == ["Conv"]


def test_repvgg_branches_sum_into_one_conv() -> None:
    weights = {"w3": _w(16, 16, 3, 3), "w1": _w(16, 16, 1, 1), **_bn(16, "a"), **_bn(16, "b"), **_bn(16, "c")}
    model = weighted_model(
        X16,
        """t3 = Conv<pads = [1, 1, 1, 1]>(x, w3)
           n3 = BatchNormalization(t3, sa, ha, ma, va)
           t1 = Conv(x, w1)
           n1 = BatchNormalization(t1, sb, hb, mb, vb)
           ni = BatchNormalization(x, sc, hc, mc, vc)
           s = Add(n3, n1)
           y = Add(s, ni)""",
        **weights,
    )
    modified, ops, folding = _fold(model)
    assert modified and ops == ["Conv"]
    assert folding.fired["conv-plus-conv"] == 1 and folding.fired["conv-plus-batchnorm"] == 1


def test_matmul_chain_with_biases_folds() -> None:
    model = weighted_model(
        "(float[2, 5, 8] x) => (float y)",
        """a = MatMul(x, w1)
           b = Add(c1, a)
           c = MatMul(b, w2)
           d = Add(c, c2)
           e = MatMul(d, w3)
           y = Add(e, c3)""",
        w1=_w(8, 32),
        c1=_w(32),
        w2=_w(32, 32),
        c2=_w(32),
        w3=_w(32, 6),
        c3=_w(6),
    )
    modified, ops, _ = _fold(model)
    assert modified and ops == ["MatMul", "Add"]


def test_gemm_chain_folds_alpha_beta_and_transposes() -> None:
    model = weighted_model(
        "(float[3, 8] x) => (float y)",
        """a = Gemm<alpha = 0.5, beta = 2.0, transB = 1>(x, w1, c1)
           y = Gemm<alpha = 1.5>(a, w2, c2)""",
        w1=_w(24, 8),
        c1=_w(24),
        w2=_w(24, 4),
        c2=_w(1, 4),
    )
    modified, ops, _ = _fold(model)
    assert modified and ops == ["Gemm"]


NEAR_MISSES = {
    "non-linearity between": """a = Conv(x, w1, b1)
        r = Relu(a)
        y = Conv(r, w2, b2)""",
    "second consumer": """a = Conv(x, w1, b1)
        p = Conv(a, w2, b2)
        n = ReduceMean(a)
        y = Add(p, n)""",
    "padded second conv": """a = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
        y = Conv<pads = [1, 1, 1, 1]>(a, w2k, b2)""",
    "kernel past max_kernel": """a = Conv<pads = [3, 3, 3, 3]>(x, w7, b1)
        y = Conv(a, w2k, b2)""",
    "residual that broadcasts": """c = ReduceMean<axes = [1]>(x)
        t = Conv<pads = [1, 1, 1, 1]>(c, wc)
        y = Add(t, c)""",
    "depthwise then dense (groups differ)": """a = Conv<group = 16, pads = [1, 1, 1, 1]>(x, wd, b16)
        y = Conv(a, w16, b16)""",
    "depthwise k×k plus dense 1×1 branches (groups differ)": """a = Conv<group = 16, pads = [1, 1, 1, 1]>(x, wd)
        b = Conv(x, w16)
        y = Add(a, b)""",
    "non-linearity inside a branch": """a = Conv<group = 16, pads = [1, 1, 1, 1]>(x, wd)
        r = Relu(a)
        y = Add(r, x)""",
    "second consumer of a branch": """a = Conv<group = 16, pads = [1, 1, 1, 1]>(x, wd)
        s = Add(a, x)
        y = Mul(s, a)""",
    "add of a constant before a padded conv": """a = Add(x, c16)
        y = Conv<group = 16, pads = [1, 1, 1, 1]>(a, wd)""",
    "mul by a per-position constant": """a = Conv<group = 16, pads = [1, 1, 1, 1]>(x, wd)
        y = Mul(a, cpos)""",
    "branches with different dilations": """a = Conv<pads = [2, 2, 2, 2], dilations = [2, 2]>(x, w3)
        b = Conv<pads = [1, 1, 1, 1]>(x, w3b)
        y = Add(a, b)""",
}


@pytest.mark.parametrize("case", NEAR_MISSES)
def test_near_misses_are_left_alone(case: str) -> None:
    weights = {
        "w1": _w(64, 16, 1, 1),
        "b1": _w(64),
        "w2": _w(16, 64, 1, 1),
        "b2": _w(16),
        "w2k": _w(16, 64, 3, 3),
        "w7": _w(64, 16, 7, 7),
        "w3": _w(16, 16, 3, 3),
        "wd": _w(16, 1, 3, 3),
        "w16": _w(16, 16, 1, 1),
        "b16": _w(16),
        "c16": _w(1, 16, 1, 1),
        "cpos": _w(1, 1, 12, 10),
        "wc": _w(16, 1, 3, 3),
        "w3b": _w(16, 16, 3, 3),
    }
    body = NEAR_MISSES[case]
    used = {k: v for k, v in weights.items() if f"{k})" in body or f"{k}," in body}
    model = weighted_model(X16, body, **used)
    before = [n.op_type for n in model.graph]
    modified, ops, _ = _fold(model)
    assert not modified and ops == before


def test_non_constant_weight_is_left_alone() -> None:
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x, float[8, 4, 1, 1] w1, float[4, 8, 1, 1] w2) => (float[1, 4, 6, 6] y) {
            a = Conv(x, w1)
            y = Conv(a, w2)
        }"""
    )
    modified, ops, _ = _fold(ir.from_proto(proto))
    assert not modified and ops == ["Conv", "Conv"]


def test_bottleneck_matmul_is_not_folded_unless_asked() -> None:
    weights = {"w1": _w(64, 4), "w2": _w(4, 64)}
    body = "a = MatMul(x, w1)\n y = MatMul(a, w2)"
    signature = "(float[2, 64] x) => (float y)"
    assert _fold(weighted_model(signature, body, **weights))[1] == ["MatMul", "MatMul"]
    assert _fold(weighted_model(signature, body, **weights), allow_mac_increase=True)[1] == ["MatMul"]


def test_bad_options_raise() -> None:
    with pytest.raises(UsageError, match="max_kernel"):
        make_options(FoldLinearBlocks, {"max_kernel": "0"})


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_map_sum_matches_numpy(stride: int) -> None:
    """`ConvMap.plus` against a direct numpy evaluation: 1×3 + 3×1 + identity with dilation 2."""
    from numpy.lib.stride_tricks import sliding_window_view

    def run(m: ConvMap, x: np.ndarray) -> np.ndarray:
        pb, pe = m.pads_begin, m.pads_end
        xp = np.pad(x, ((0, 0), (pb[0], pe[0]), (pb[1], pe[1])))
        kh, kw = m.kernel
        dh, dw = m.dilations
        win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
        win = win[:, :: m.strides[0], :: m.strides[1], ::dh, ::dw]
        return np.einsum("ochw,cyxhw->oyx", m.weight, win) + m.bias[:, None, None]

    x = RNG.standard_normal((3, 9, 11))
    s, d = (stride, stride), (2, 2)
    a = ConvMap(RNG.standard_normal((3, 3, 1, 3)), RNG.standard_normal(3), s, d, (0, 2, 0, 2))
    b = ConvMap(RNG.standard_normal((3, 3, 3, 1)), RNG.standard_normal(3), s, d, (2, 0, 2, 0))
    summed = a.plus(b)
    assert isinstance(summed, ConvMap) and summed.kernel == (3, 3)
    np.testing.assert_allclose(run(summed, x), run(a, x) + run(b, x), rtol=1e-12, atol=1e-12)
    if stride == 1:
        with_identity = summed.plus(ConvMap.identity(3, 2, np.float64))
        np.testing.assert_allclose(run(with_identity, x), run(summed, x) + x, rtol=1e-12, atol=1e-12)
