"""Conv2d with its weights packed for output-channel vectors: the layout passc's conv schedule needs.

A plain NCHW × OIHW conv2d gives a schedule two bad choices of vector axis: the output width
(7 of 16 lanes wasted at the end of a ResNet, a strided gather at stride 2) or the output
channels (contiguous in neither operand). Packing a constant weight W[O, I, Kh, Kw] once, at
compile time, as

    P[o // V, i, kh, kw, o % V] = W[o, i, kh, kw]          (V = lanes of the output's element type)

makes V output channels one contiguous vector of P. The packed conv computes, unchanged,

    Y[n, o, y, x] = Σ_{i, kh, kw} pad(X)[n, i, y·sh + kh·dh, x·sw + kw·dw] · P[o // V, i, kh, kw, o % V]

so each step of its reduction is one vector load of P, one broadcast input scalar per output
column and one fused multiply-add per accumulator (`PackedConv` in `passc.schedules.rules`).
Activations keep their NCHW layout: nothing else in the model changes.

The packing happens at legalization (`passc.schedules.legalize`): a conv2d whose weight is a
constant, with one group, NCHW/OIHW layouts, float operands of one type and an output-channel
count that is a multiple of V (or of V/2, which then packs half vectors) becomes the packed
conv; every other conv2d legalizes as TVM's own.

One case of those legalizes differently: a 1×1 conv at stride 1 without padding, over planes that
`pointwise_tile` can cut into whole vectors, is a matrix product over each plane's pixels,

    Y[n, o, y, x] = Σ_i X[n, i, y, x] · T[i, o]          (T = W[:, :, 0, 0] transposed once)

which `PointwiseConv` vectorizes along the pixels (x): its loads and its epilogue's stores are
contiguous in NCHW, where the packed conv's channel vectors would need a transpose per output.

A transposed conv whose kernel equals its stride s (U-Net's 2×2 upsampling, no padding) gives
every output pixel exactly one tap, so with its weight W[I, O, s, s] packed the same way,

    Y[n, o, y, x] = Σ_i X[n, i, y // s, x // s] · P[o // V, i, y mod s, x mod s, o % V]

is the packed conv's reduction over i alone (`legalize_conv2d_transpose`; its tap loops have
extent 1) and takes `PackedConv`'s schedule. TVM's own legalization dilates the input with zeros
and runs an s×s conv over it: s² times the multiply-adds, with no schedule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.target import Target

from passc.schedules.rules import (
    PACKED_CONV,
    POINTWISE_CONV,
    CPUSpec,
    _for_bits,
    cpu_spec,
    pointwise_tile,
    vector_lanes,
)

__all__ = ["legalize_conv2d", "legalize_conv2d_transpose", "pack_weight"]


def pack_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """W[O, I, Kh, Kw] as P[O / lanes, I, Kh, Kw, lanes] (O a multiple of lanes)."""
    out_channels = weight.shape[0]
    blocked = weight.reshape(out_channels // lanes, lanes, *weight.shape[1:])
    return np.ascontiguousarray(np.moveaxis(blocked, 1, -1))


def _packed_conv2d(
    data: te.Tensor, packed: te.Tensor, strides: Any, padding: Any, dilation: Any
) -> te.Tensor:
    """The packed conv's TE compute (the formula of the module docstring)."""
    _, _, height, width = (int(d) for d in data.shape)
    blocks, in_channels, kernel_h, kernel_w, lanes = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    if top or left or bottom or right:
        data = topi.nn.pad(data, [0, 0, top, left], [0, 0, bottom, right])
    out_h = (height + top + bottom - (kernel_h - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kernel_w - 1) * dw - 1) // sw + 1
    i = te.reduce_axis((0, in_channels), "i")
    kh = te.reduce_axis((0, kernel_h), "kh")
    kw = te.reduce_axis((0, kernel_w), "kw")
    return te.compute(
        (int(data.shape[0]), blocks * lanes, out_h, out_w),
        lambda n, o, y, x: te.sum(
            data[n, i, y * sh + kh * dh, x * sw + kw * dw] * packed[o // lanes, i, kh, kw, o % lanes],
            axis=[i, kh, kw],
        ),
        name=PACKED_CONV,
    )


def _upsampling_conv2d_transpose(data: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """A transposed conv with kernel = stride and no padding (the module docstring's formula)."""
    batch, _, height, width = (int(d) for d in data.shape)
    blocks, in_channels, stride, _, lanes = (int(d) for d in packed.shape)
    i = te.reduce_axis((0, in_channels), "i")
    kh = te.reduce_axis((0, 1), "kh")  # the packed conv's tap loops, of one tap
    kw = te.reduce_axis((0, 1), "kw")
    return te.compute(
        (batch, blocks * lanes, height * stride, width * stride),
        lambda n, o, y, x: te.sum(
            data[n, i, y // stride + kh, x // stride + kw]
            * packed[o // lanes, i, y % stride + kh, x % stride + kw, o % lanes],
            axis=[i, kh, kw],
        ),
        name=PACKED_CONV,
    )


def _pointwise_conv2d(data: te.Tensor, transposed: te.Tensor) -> te.Tensor:
    """A 1×1 conv at stride 1 without padding, with its weight transposed to T[I, O]:
    Y[n, o, y, x] = Σ_i X[n, i, y, x] · T[i, o], a matrix product over the pixels of each plane."""
    batch, _, height, width = (int(d) for d in data.shape)
    in_channels, out_channels = (int(d) for d in transposed.shape)
    i = te.reduce_axis((0, in_channels), "i")
    return te.compute(
        (batch, out_channels, height, width),
        lambda n, o, y, x: te.sum(data[n, i, y, x] * transposed[i, o], axis=[i]),
        name=POINTWISE_CONV,
    )


def _is_pointwise(call: relax.Call, spec: CPUSpec) -> bool:
    """A 1×1 conv at stride 1 without padding whose plane `pointwise_tile` can tile: the
    `PointwiseConv` schedule's case (vectors along the plane, stores straight into NCHW)."""
    attrs = call.attrs
    out_channels, _, kernel_h, kernel_w = (int(d) for d in call.args[1].value.shape)
    _, _, height, width = (int(d) for d in call.args[0].ty.shape)
    return (
        (kernel_h, kernel_w) == (1, 1)
        and all(int(s) == 1 for s in attrs.strides)
        and all(int(p) == 0 for p in attrs.padding)
        and pointwise_tile(height, width, out_channels, spec) is not None
    )


def float_spec(target: Target, out_dtype: Any, *operands: relax.Expr) -> CPUSpec | None:
    """The target's vector shape for `operands` of one float type with that output type ("" or
    None: the input type) and static shapes, scaled to the type's width; None for other operands or
    a target that is not an LLVM CPU."""
    dtype = str(operands[0].ty.dtype)
    if dtype not in ("float16", "float32", "float64") or str(out_dtype) not in ("", "None", dtype):
        return None
    if any(str(x.ty.dtype) != dtype for x in operands) or target.kind.name != "llvm":
        return None
    if any(not isinstance(d, tvm.tirx.IntImm) for x in operands for d in x.ty.shape):
        return None
    return _for_bits(cpu_spec(target), int(dtype[len("float") :]))


def _conv_spec(
    call: relax.Call, target: Target, kernel_layout: str = "OIHW", *, grouped: bool = False
) -> CPUSpec | None:
    """The vector shape for this conv2d (or transposed conv2d, whose weight is IOHW), or None
    when it stays TVM's: a constant 4-D weight, one group (any count if `grouped`), NCHW
    activations, float operands."""
    attrs = call.attrs
    data, weight = call.args
    if not isinstance(weight, tvm.ir.expr.Constant) or (int(attrs.groups) != 1 and not grouped):
        return None
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", kernel_layout, "NCHW"):
        return None
    if len(weight.value.shape) != 4:
        return None
    return float_spec(target, attrs.out_dtype, data, weight)


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The packed conv for this conv2d, or None (TVM's own legalization) where it does not apply."""
    target = Target.current(allow_none=True)
    spec = _conv_spec(call, target) if target is not None else None
    if spec is None:
        return None
    weight = call.args[1].value.numpy()
    lanes = vector_lanes(spec, weight.shape[0])
    if lanes is None:
        return None
    attrs = call.attrs
    if _is_pointwise(call, spec):
        transposed = relax.const(np.ascontiguousarray(weight[:, :, 0, 0].T))
        return bb.call_te(_pointwise_conv2d, call.args[0], transposed, primfunc_name_hint="conv2d_pointwise")
    packed = relax.const(pack_weight(weight, lanes))
    return bb.call_te(
        _packed_conv2d,
        call.args[0],
        packed,
        attrs.strides,
        attrs.padding,
        attrs.dilation,
        primfunc_name_hint="conv2d_packed",
    )


def legalize_conv2d_transpose(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """A transposed conv2d whose kernel equals its stride, without padding, as the packed conv's
    reduction over input channels; None (TVM's own legalization) for any other."""
    target = Target.current(allow_none=True)
    spec = _conv_spec(call, target, "IOHW") if target is not None else None
    if spec is None:
        return None
    attrs = call.attrs
    kernel = call.args[1].value.numpy()
    if kernel.shape[2] != kernel.shape[3]:
        return None
    stride = kernel.shape[2]
    if [int(s) for s in attrs.strides] != [stride, stride] or any(int(d) != 1 for d in attrs.dilation):
        return None
    if any(int(p) for p in attrs.padding) or any(int(p) for p in attrs.output_padding):
        return None
    lanes = vector_lanes(spec, kernel.shape[1])
    if lanes is None:
        return None
    packed = relax.const(pack_weight(np.ascontiguousarray(kernel.transpose(1, 0, 2, 3)), lanes))
    return bb.call_te(
        _upsampling_conv2d_transpose, call.args[0], packed, primfunc_name_hint="conv2d_transpose_packed"
    )
