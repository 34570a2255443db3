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
    folding.explain = True  # near misses, with their reasons, in folding.report
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


def _depthwise_block_weights() -> dict[str, np.ndarray]:
    return {
        "k1": _w(16, 1, 3, 3),
        "k2": _w(16, 1, 3, 3),
        "s1": _w(16, 1, 1, 1),
        **_bn(16, "a"),
        **_bn(16, "b"),
        **_bn(16, "c"),
        **_bn(16, "d"),
    }


def _op_count(model: ir.Model, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph)


def _only_conv(model: ir.Model, groups: int, kernel: list[int]) -> None:
    (node,) = model.graph
    assert node.op_type == "Conv"
    assert node.attributes.get_int("group", 1) == groups
    assert list(node.attributes["kernel_shape"].as_ints()) == kernel


def test_mobileone_depthwise_block_folds_to_one_depthwise_conv() -> None:
    """MobileOne: two over-parameterised depthwise 3×3 branches, a depthwise 1×1 scale branch and a
    BatchNorm identity, each batch-normalised, summed (timm's order: scale + identity, then += k×k)."""
    model = weighted_model(
        X16,
        """t1 = Conv<group = 16, pads = [1, 1, 1, 1]>(x, k1)
           n1 = BatchNormalization(t1, sa, ha, ma, va)
           t2 = Conv<group = 16, pads = [1, 1, 1, 1]>(x, k2)
           n2 = BatchNormalization(t2, sb, hb, mb, vb)
           t3 = Conv<group = 16>(x, s1)
           n3 = BatchNormalization(t3, sc, hc, mc, vc)
           ni = BatchNormalization(x, sd, hd, md, vd)
           a = Add(n3, ni)
           b = Add(a, n1)
           y = Add(b, n2)""",
        **_depthwise_block_weights(),
    )
    macs = model_stats(model).macs
    modified, _, folding = _fold(model)
    assert modified
    _only_conv(model, groups=16, kernel=[3, 3])
    assert model_stats(model).macs < macs
    assert folding.fired["conv-plus-batchnorm"] == 1 and folding.fired["conv-plus-conv"] == 2


def test_fastvit_repmixer_folds_as_its_inference_form() -> None:
    """FastViT RepMixer: x + layer_scale · (mixer(x) − norm(x)), mixer a depthwise MobileOne block
    (k×k + 1×1 scale + BatchNorm identity), norm a BatchNorm of x: one depthwise conv."""
    weights = _depthwise_block_weights()
    model = weighted_model(
        X16,
        """t1 = Conv<group = 16, pads = [1, 1, 1, 1]>(x, k1)
           n1 = BatchNormalization(t1, sa, ha, ma, va)
           t3 = Conv<group = 16>(x, s1)
           n3 = BatchNormalization(t3, sc, hc, mc, vc)
           ni = BatchNormalization(x, sd, hd, md, vd)
           m1 = Add(n3, ni)
           mixer = Add(m1, n1)
           norm = BatchNormalization(x, sb, hb, mb, vb)
           d = Sub(mixer, norm)
           scaled = Mul(d, gamma)
           y = Add(x, scaled)""",
        gamma=_w(16, 1, 1),
        **{k: v for k, v in weights.items() if k != "k2"},
    )
    modified, _, folding = _fold(model)
    assert modified
    _only_conv(model, groups=16, kernel=[3, 3])
    assert folding.fired["conv-minus-batchnorm"] == 1 and folding.fired["conv-mul"] == 1


def test_repcpe_and_repvit_token_mixer_fold() -> None:
    """FastViT RepCPE (a depthwise 7×7 added to its input) and RepViT's RepVggDw
    (BatchNorm(depthwise 3×3 + BatchNorm, + depthwise 1×1, + x)) each become one depthwise conv."""
    model = weighted_model(
        X16,
        """p = Conv<group = 16, pads = [3, 3, 3, 3]>(x, k7, b7)
           a = Add(p, x)
           t = Conv<group = 16, pads = [1, 1, 1, 1]>(a, k1)
           n = BatchNormalization(t, sa, ha, ma, va)
           u = Conv<group = 16>(a, s1, bs)
           v = Add(n, u)
           w = Add(v, a)
           y = BatchNormalization(w, sb, hb, mb, vb)""",
        k7=_w(16, 1, 7, 7),
        b7=_w(16),
        k1=_w(16, 1, 3, 3),
        s1=_w(16, 1, 1, 1),
        bs=_w(16),
        **_bn(16, "a"),
        **_bn(16, "b"),
    )
    modified, ops, _ = _fold(model)
    # The 7×7 then the padded 3×3 do not compose exactly (the second pads its input): two convs.
    assert modified and ops == ["Conv", "Conv"]
    assert all(n.attributes.get_int("group", 1) == 16 for n in model.graph)


def test_grouped_branches_keep_their_groups() -> None:
    model = weighted_model(
        X16,
        """a = Conv<group = 4, pads = [1, 1, 1, 1]>(x, g3)
           b = Conv<group = 4>(x, g1, gb)
           s = Add(a, b)
           y = BatchNormalization(s, sa, ha, ma, va)""",
        g3=_w(16, 4, 3, 3),
        g1=_w(16, 4, 1, 1),
        gb=_w(16),
        **_bn(16, "a"),
    )
    modified, _, _ = _fold(model)
    assert modified
    _only_conv(model, groups=4, kernel=[3, 3])


def test_affine_before_a_conv_folds_where_exact() -> None:
    """A per-channel scale folds into a padded conv (padding stays zero); a shift only into an
    unpadded one (a padded conv would read the shift where the original read zeros)."""
    model = weighted_model(
        X16,
        """m = Sub(x, mu)
           d = Div(m, sd)
           a = Conv(d, w1, b1)
           s = Mul(a, c64)
           y = Conv<pads = [1, 1, 1, 1]>(s, w2k, b2)""",
        mu=_w(1, 16, 1, 1),
        sd=np.abs(_w(16, 1, 1)) + 0.5,
        w1=_w(64, 16, 1, 1),
        b1=_w(64),
        c64=_w(64, 1, 1),
        w2k=_w(16, 64, 3, 3),
        b2=_w(16),
    )
    modified, ops, folding = _fold(model)
    assert modified and ops == ["Conv", "Conv"]
    assert (
        folding.fired["sub-conv"] == 1 and folding.fired["div-conv"] == 1 and folding.fired["conv-mul"] == 1
    )


def test_distillation_head_folds_to_one_gemm() -> None:
    """RepViT's classifier: BatchNorm1d → Linear, twice (head and distillation head) on the same
    features, averaged: one Gemm."""
    model = weighted_model(
        "(float[2, 16] x) => (float y)",
        """n1 = BatchNormalization(x, sa, ha, ma, va)
           l1 = Gemm<transB = 1>(n1, wa, ba)
           n2 = BatchNormalization(x, sb, hb, mb, vb)
           l2 = Gemm<transB = 1>(n2, wb)
           s = Add(l1, l2)
           y = Div(s, two)""",
        wa=_w(10, 16),
        ba=_w(10),
        wb=_w(10, 16),
        two=np.array(2.0, np.float32),
        **_bn(16, "a"),
        **_bn(16, "b"),
    )
    modified, ops, folding = _fold(model)
    assert modified and ops == ["Gemm"]
    assert folding.fired["batchnorm-gemm"] == 2 and folding.fired["gemm-plus-gemm"] == 1


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
    "depthwise plus dense 1×1 branches (groups differ)": """a = Conv<group = 16, pads = [1, 1, 1, 1]>(x, wd)
        b = Conv(x, w16)
        y = Add(a, b)""",
    "branches with different strides": """a = Conv<group = 16, pads = [1, 1, 1, 1], strides = [2, 2]>(x, wd)
        b = Conv<group = 16>(x, wd76)
        y = Add(a, b)""",
    "depthwise chain whose fold grows the kernel's MACs": """a = Conv<group = 16, pads = [1, 1, 1, 1]>(x, wd)
        y = Conv<group = 16>(a, wd)""",
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


# What `passc optimize --explain` says of each near miss (None: the pattern itself does not match).
REASONS = {
    "non-linearity between": None,
    "second consumer": "another consumer",
    "padded second conv": "pads its input",
    "kernel past max_kernel": "exceeds max_kernel",
    "residual that broadcasts": "different channel counts",
    "depthwise then dense (groups differ)": "groups 1 and 16 fold to 1",
    "depthwise plus dense 1×1 branches (groups differ)": "groups 1 and 16 fold to 1",
    "branches with different strides": "different strides",
    "depthwise chain whose fold grows the kernel's MACs": "raise MACs per output from 288 to 400",
    "non-linearity inside a branch": None,
    "second consumer of a branch": "another consumer",
    "add of a constant before a padded conv": "pads its input",
    "mul by a per-position constant": "is not per-channel",
    "branches with different dilations": "different dilations",
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
        "wd76": _w(16, 1, 7, 6),
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
    modified, ops, folding = _fold(model)
    assert not modified and ops == before
    reasons = [miss.reason for miss in folding.report.near_misses]
    if REASONS[case] is None:
        assert not reasons
    else:
        assert any(REASONS[case] in reason for reason in reasons), reasons


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


def _numpy_conv(m: ConvMap, x: np.ndarray) -> np.ndarray:
    """`m` applied to x [C, H, W] by direct summation (grouped: each group's channels alone)."""
    from numpy.lib.stride_tricks import sliding_window_view

    pb, pe = m.pads_begin, m.pads_end
    xp = np.pad(x, ((0, 0), (pb[0], pe[0]), (pb[1], pe[1])))
    kh, kw = m.kernel
    dh, dw = m.dilations
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    win = win[:, :: m.strides[0], :: m.strides[1], ::dh, ::dw]
    win = win.reshape(m.groups, -1, *win.shape[1:])
    out = np.einsum("gochw,gcyxhw->goyx", m.blocks, win)
    return out.reshape(-1, *out.shape[2:]) + m.bias[:, None, None]


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_map_sum_matches_numpy(stride: int) -> None:
    """`ConvMap.plus` against a direct numpy evaluation: 1×3 + 3×1 + identity with dilation 2."""
    x = RNG.standard_normal((3, 9, 11))
    s, d = (stride, stride), (2, 2)
    a = ConvMap(RNG.standard_normal((3, 3, 1, 3)), RNG.standard_normal(3), s, d, (0, 2, 0, 2))
    b = ConvMap(RNG.standard_normal((3, 3, 3, 1)), RNG.standard_normal(3), s, d, (2, 0, 2, 0))
    summed = a.plus(b)
    assert isinstance(summed, ConvMap) and summed.kernel == (3, 3)
    np.testing.assert_allclose(
        _numpy_conv(summed, x), _numpy_conv(a, x) + _numpy_conv(b, x), rtol=1e-12, atol=1e-12
    )
    if stride == 1:
        with_identity = summed.plus(ConvMap.identity(3, 2, np.float64))
        np.testing.assert_allclose(
            _numpy_conv(with_identity, x), _numpy_conv(summed, x) + x, rtol=1e-12, atol=1e-12
        )


def _conv(out: int, cin: int, k: int, groups: int, pads: int | None = None, stride: int = 1) -> ConvMap:
    p = k // 2 if pads is None else pads
    weight = RNG.standard_normal((out, cin // groups, k, k))
    return ConvMap(weight, RNG.standard_normal(out), (stride, stride), (1, 1), (p,) * 4, groups)


def _affine(c: int, shift: bool = True) -> ConvMap:
    return ConvMap.channel_affine(RNG.standard_normal(c), RNG.standard_normal(c) * shift, 2)


GROUPED_CHAINS = {
    "depthwise k×k then depthwise 1×1": (_conv(8, 8, 3, 8), _conv(8, 8, 1, 8), 8),
    "grouped then grouped, coarser": (_conv(8, 8, 3, 4), _conv(16, 8, 1, 2), 2),
    "depthwise chain, valid second": (_conv(8, 8, 3, 8), _conv(8, 8, 3, 8, pads=0), 8),
    "affine then unpadded grouped": (_affine(8), _conv(8, 8, 3, 2, pads=0), 2),
    "shift-free affine then padded": (_affine(8, shift=False), _conv(8, 8, 3, 2), 2),
    "strided grouped then affine": (_conv(8, 8, 3, 2, stride=2), _affine(8), 2),
    "dense 1×1 then padded depthwise": (_conv(8, 4, 1, 1, pads=0, stride=1), _conv(8, 8, 3, 8), 1),
    "depthwise then dense 1×1": (_conv(8, 8, 3, 8), _conv(4, 8, 1, 1), 1),
}


@pytest.mark.parametrize("case", GROUPED_CHAINS)
def test_grouped_conv_map_chain_matches_numpy(case: str) -> None:
    first, second, groups = GROUPED_CHAINS[case]
    if case == "dense 1×1 then padded depthwise":  # exact only without the first conv's bias
        first = ConvMap(first.weight, np.zeros(8), first.strides, first.dilations, first.pads)
    x = RNG.standard_normal((first.in_channels, 11, 13))
    folded = first.then(second)
    assert isinstance(folded, ConvMap), folded
    assert folded.groups == groups
    np.testing.assert_allclose(
        _numpy_conv(folded, x), _numpy_conv(second, _numpy_conv(first, x)), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize(
    ("left", "right", "groups"),
    [
        (_conv(8, 8, 3, 8), _conv(8, 8, 1, 8), 8),
        (_conv(8, 8, 7, 8), _conv(8, 8, 3, 8), 8),
        (_conv(8, 8, 3, 4), _affine(8), 4),
        (_conv(8, 8, 3, 4), _conv(8, 8, 1, 1), 1),
    ],
)
def test_grouped_conv_map_sum_matches_numpy(left: ConvMap, right: ConvMap, groups: int) -> None:
    x = RNG.standard_normal((8, 11, 13))
    folded = left.plus(right)
    assert isinstance(folded, ConvMap) and folded.groups == groups
    np.testing.assert_allclose(
        _numpy_conv(folded, x), _numpy_conv(left, x) + _numpy_conv(right, x), rtol=1e-10
    )


def test_fold_never_builds_a_conv_dearer_than_its_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MAC limit is checked before the folded weight is built (a wide depthwise → dense 1×1)."""

    def no_regroup(*_):
        raise AssertionError("the folded weight was built")

    monkeypatch.setattr(ConvMap, "regroup", no_regroup)
    reason = _conv(512, 512, 7, 512).then(_conv(512, 512, 1, 1), max_macs=512 * 49 + 512 * 512)
    assert isinstance(reason, str) and "groups 1 and 512 fold to 1" in reason
