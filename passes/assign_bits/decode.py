"""Realising a width in the graph: the weight stored packed, and a decode sub-graph of standard ops.

For b ∈ {2, 3, 4, 8} the layer's float weight W (name w) is replaced by initializers

    w_q{b}          uint8 packed codes: [bytes, 1] (sub-byte) or the 3-d view (8-bit); see quantize.py
    w_scale         float32, the scale shape
    w_zero_point    uint8, the scale shape (asymmetric only; symmetric uses the constant 2^(b−1))

and a decode graph computing the float32 weight the layer reads:

    codes = BitShift(BitShift(w_q{b}, [8−c, 8−2c, …, 0], LEFT), 8−c, RIGHT)      (sub-byte only)
    codes = Reshape(codes, view)        (via Reshape([-1]) and Slice(0, n) when the last byte is padded)
    W     = Reshape(Mul(Sub(Cast(codes, float), Cast(w_zero_point, float)), w_scale), W.shape)

The left shift drops the higher codes of a byte (uint8 arithmetic), the right shift moves code k
down: the same as BitwiseAnd with a mask, but BitShift (opset 11) needs no opset 18 import.
For b = 16 the weight is stored as float16 (w_fp16) and Cast back to float32. Shifts, shapes and the
symmetric zero point are Constant nodes, not initializers. Every op used has a converter in TVM's
Relax ONNX frontend.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from passc.passes.assign_bits.layers import Layer
from passc.passes.assign_bits.quantize import Scheme, container_bits, pack, quantize

from passc.graph import unused_initializer_name

__all__ = ["MIN_OPSET", "realise"]

MIN_OPSET = 11  # BitShift


class _Emitter:
    """Appends decode nodes for one layer, naming values `<weight>_<step>`."""

    def __init__(self, graph: ir.Graph, layer: Layer) -> None:
        self.graph, self.layer = graph, layer
        self.base = layer.weight.name
        self.nodes: list[ir.Node] = []
        self.params: list[str] = []

    def initializer(self, suffix: str, array: np.ndarray) -> ir.Value:
        name = unused_initializer_name(self.graph, f"{self.base}_{suffix}")
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(array, name=name),
        )
        self.graph.register_initializer(value)
        self.params.append(name)
        return value

    def op(
        self, op_type: str, inputs: list[ir.Value], dtype: ir.DataType, shape: tuple[int, ...], **attributes
    ) -> ir.Value:
        node = ir.node(op_type, inputs, attributes, name=f"{self.layer.name}/decode/{len(self.nodes)}")
        out = node.outputs[0]
        out.name = f"{self.base}_decode{len(self.nodes)}"
        out.dtype, out.shape = dtype, ir.Shape(shape)
        self.nodes.append(node)
        return out

    def constant(self, array: np.ndarray) -> ir.Value:
        dtype = ir.DataType.from_numpy(array.dtype)
        return self.op("Constant", [], dtype, array.shape, value=ir.tensor(array))

    def reshape(self, x: ir.Value, shape: tuple[int, ...]) -> ir.Value:
        return self.op("Reshape", [x, self.constant(np.array(shape, np.int64))], x.dtype, shape)


def _unpack(e: _Emitter, packed: ir.Value, bits: int, count: int, view: tuple[int, ...]) -> ir.Value:
    c = container_bits(bits)
    per_byte = 8 // c
    rows = packed.shape[0]
    left = e.constant((8 - c * np.arange(1, per_byte + 1)).astype(np.uint8))
    lanes = e.op("BitShift", [packed, left], ir.DataType.UINT8, (rows, per_byte), direction="LEFT")
    right = e.constant(np.array(8 - c, np.uint8))
    codes = e.op("BitShift", [lanes, right], ir.DataType.UINT8, (rows, per_byte), direction="RIGHT")
    if rows * per_byte != count:
        flat = e.reshape(codes, (rows * per_byte,))
        ends = [e.constant(np.array([v], np.int64)) for v in (0, count)]
        codes = e.op("Slice", [flat, *ends], ir.DataType.UINT8, (count,))
    return e.reshape(codes, view)


def realise(graph: ir.Graph, layer: Layer, width: int, scheme: Scheme) -> list[str]:
    """Rewrites the layer to read its weight decoded from `width`-bit storage; returns the names of
    the new initializers (the runtime parameters). Width 32 leaves the layer alone."""
    if width == 32:
        return []
    e = _Emitter(graph, layer)
    weight = layer.array
    f32 = ir.DataType.FLOAT
    if width == 16:
        stored = e.initializer("fp16", weight.astype(np.float16))
        decoded = e.op("Cast", [stored], f32, weight.shape, to=f32)
    else:
        q = quantize(weight, width, layer.channels_last, scheme)
        view = q.codes.shape
        if width == 8:
            codes = e.initializer(f"q{width}", q.codes)
        else:
            packed = e.initializer(f"q{width}", pack(q.codes, width).reshape(-1, 1))
            codes = _unpack(e, packed, width, q.codes.size, view)
        level = e.op("Cast", [codes], f32, view, to=f32)
        if q.symmetric:
            zero = e.constant(q.zero_point.astype(np.float32))
        else:
            stored_zero = e.initializer("zero_point", q.zero_point)
            zero = e.op("Cast", [stored_zero], f32, q.zero_point.shape, to=f32)
        centred = e.op("Sub", [level, zero], f32, view)
        scaled = e.op("Mul", [centred, e.initializer("scale", q.scale)], f32, view)
        decoded = e.reshape(scaled, weight.shape)
    graph.insert_before(layer.node, e.nodes)
    old = layer.weight
    layer.node.replace_input_with(1, decoded)
    graph.initializers.pop(old.name)
    decoded.name = old.name  # the layer's weight input keeps its name
    return e.params
