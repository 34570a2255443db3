"""`expand-recurrent`: LSTM, GRU and RNN nodes with a static sequence length, unrolled into the
ops TVM lowers (MatMul, Add, Mul, Sigmoid, Tanh, Slice, Concat), step by step, as ONNX defines them.

For each direction d (forward; reverse walks the steps backwards; bidirectional does both), with
W, R, B the direction's weights, biases Wb + Rb, gates in ONNX's order, and f, g, h the activations:

    LSTM (gates i, o, f, c):  i = f(xₜWᵢᵀ + hRᵢᵀ + Pᵢ⊙c + bᵢ)   f = f(xₜW_fᵀ + hR_fᵀ + P_f⊙c + b_f)
                              c̃ = g(xₜW_cᵀ + hR_cᵀ + b_c)      c ← f⊙c + i⊙c̃   (input_forget: f = 1 − i)
                              o = f(xₜW_oᵀ + hR_oᵀ + P_o⊙c + b_o)   h ← o⊙h(c)
    GRU (gates z, r, h):      z = f(xₜW_zᵀ + hR_zᵀ + b_z)   r = f(xₜW_rᵀ + hR_rᵀ + b_r)
                              h̃ = g(xₜW_hᵀ + (r⊙h)R_hᵀ + Rb_h + Wb_h), or with linear_before_reset
                              h̃ = g(xₜW_hᵀ + r⊙(hR_hᵀ + Rb_h) + Wb_h);   h ← (1 − z)⊙h̃ + z⊙h
    RNN:                      h ← f(xₜWᵀ + hRᵀ + b)

`clip` clips every gate's input to [−clip, clip]. xₜWᵀ is one MatMul over all steps. Y stacks each
step's h, Y_h (Y_c) the last. Exact: the same arithmetic, rounded as any kernel rounds it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passc.errors import UsageError
from passc.graph import describe, onnx_opset, unused_initializer_name
from passc.pass_base import PasscPass
from passc.registry import register_pass

__all__ = ["ExpandRecurrent"]

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
SUPPORTED_ACTIVATIONS = {"Sigmoid", "Tanh", "Relu"}
MIN_OPSET = 13  # Slice, Unsqueeze and Squeeze with their axes as inputs; Clip with its bounds as inputs


class _Emitter:
    """Builds nodes before the recurrent node and initializers in the graph."""

    def __init__(self, graph: ir.Graph, node: ir.Node) -> None:
        self.graph, self.node, self.nodes = graph, node, []
        self.base = node.name or node.op_type

    def op(self, op_type: str, *inputs: ir.Value | None, **attributes: object) -> ir.Value:
        node = ir.node(
            op_type, list(inputs), attributes=attributes, name=f"{self.base}/{op_type}_{len(self.nodes)}"
        )
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray, suffix: str) -> ir.Value:
        name = unused_initializer_name(self.graph, f"{self.base}/{suffix}")
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def ints(self, values: list[int]) -> ir.Value:
        return self.const(np.array(values, np.int64), "axes")

    def slice(self, x: ir.Value, start: int, stop: int, axis: int) -> ir.Value:
        return self.op("Slice", x, self.ints([start]), self.ints([stop]), self.ints([axis]))

    def unsqueeze(self, x: ir.Value, axis: int) -> ir.Value:
        return self.op("Unsqueeze", x, self.ints([axis]))

    def squeeze(self, x: ir.Value, axis: int) -> ir.Value:
        return self.op("Squeeze", x, self.ints([axis]))


def _attribute(node: ir.Node, name: str, default: object) -> object:
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.value


def _static_shape(value: ir.Value | None, what: str, node: ir.Node) -> tuple[int, ...]:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        raise UsageError(
            f"expand-recurrent: {describe(node)}: {what} needs a static shape (bind the input shapes)"
        )
    return tuple(value.shape)


def _check(node: ir.Node, steps: int, batch: int) -> None:
    """Raises UsageError for what the expansion does not take."""
    lens = node.inputs[4] if len(node.inputs) > 4 else None
    if lens is not None:
        known = lens.const_value
        if known is None or not np.all(known.numpy() == steps):
            raise UsageError(
                f"expand-recurrent: {describe(node)}: sequence_lens must be a constant equal to the "
                f"sequence length ({steps}) for every one of the {batch} batch elements"
            )
    if (
        node.attributes.get("activation_alpha") is not None
        or node.attributes.get("activation_beta") is not None
    ):
        raise UsageError(f"expand-recurrent: {describe(node)}: activation_alpha/beta are not supported")


def _expand(graph: ir.Graph, node: ir.Node) -> None:
    op = node.op_type
    gates = GATES[op]
    x, w, r = node.inputs[0], node.inputs[1], node.inputs[2]
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    h0 = node.inputs[5] if len(node.inputs) > 5 else None
    c0 = node.inputs[6] if op == "LSTM" and len(node.inputs) > 6 else None
    peephole = node.inputs[7] if op == "LSTM" and len(node.inputs) > 7 else None
    layout = int(_attribute(node, "layout", 0))
    shape = _static_shape(x, "X", node)
    steps, batch = (shape[1], shape[0]) if layout else (shape[0], shape[1])
    hidden = int(_attribute(node, "hidden_size", 0)) or _static_shape(r, "R", node)[-1]
    _check(node, steps, batch)
    direction = str(_attribute(node, "direction", "forward"))
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    activations = list(_attribute(node, "activations", DEFAULT_ACTIVATIONS[op] * len(reverse)))
    unsupported = sorted(set(activations) - SUPPORTED_ACTIVATIONS)
    if unsupported:
        raise UsageError(f"expand-recurrent: {describe(node)}: activation {unsupported[0]} is not supported")
    clip = _attribute(node, "clip", None)
    input_forget = bool(_attribute(node, "input_forget", 0))
    before_reset = bool(_attribute(node, "linear_before_reset", 0))

    emit = _Emitter(graph, node)
    dtype = x.dtype.numpy() if x.dtype is not None else np.dtype(np.float32)
    per = len(activations) // len(reverse)
    seq_first = emit.op("Transpose", x, perm=[1, 0, 2]) if layout else x  # [steps, batch, input]
    if layout:  # batch-first states, [batch, dirs, H]
        h0, c0 = (emit.op("Transpose", v, perm=[1, 0, 2]) if v is not None else None for v in (h0, c0))

    def clipped(v: ir.Value) -> ir.Value:
        if clip is None:
            return v
        bound = float(clip)
        return emit.op(
            "Clip", v, emit.const(np.array(-bound, dtype), "clip"), emit.const(np.array(bound, dtype), "clip")
        )

    def gate(v: ir.Value, k: int) -> ir.Value:
        return emit.slice(v, k * hidden, (k + 1) * hidden, -1)

    ys, last_h, last_c = [], [], []
    for d, backwards in enumerate(reverse):
        f, g, h_act = (activations[d * per : (d + 1) * per] + [None, None])[:3]
        w_t = emit.op("Transpose", emit.squeeze(emit.slice(w, d, d + 1, 0), 0), perm=[1, 0])  # [input, G·H]
        r_t = emit.op("Transpose", emit.squeeze(emit.slice(r, d, d + 1, 0), 0), perm=[1, 0])  # [H, G·H]
        projected = emit.op("MatMul", seq_first, w_t)  # [steps, batch, G·H]
        rb = None
        if bias is not None:
            b = emit.squeeze(emit.slice(bias, d, d + 1, 0), 0)  # [2·G·H]
            wb, rb = emit.slice(b, 0, gates * hidden, 0), emit.slice(b, gates * hidden, 2 * gates * hidden, 0)
            if op == "GRU":  # Rb_h sits inside the candidate's reset product
                projected = emit.op("Add", projected, wb)
                rb_zr = emit.slice(rb, 0, 2 * hidden, 0)
                rb_h = emit.slice(rb, 2 * hidden, 3 * hidden, 0)
            else:
                projected = emit.op("Add", projected, emit.op("Add", wb, rb))
        zeros = np.zeros((batch, hidden), dtype)
        h = emit.squeeze(emit.slice(h0, d, d + 1, 0), 0) if h0 is not None else emit.const(zeros, "h0")
        c = None
        if op == "LSTM":
            c = emit.squeeze(emit.slice(c0, d, d + 1, 0), 0) if c0 is not None else emit.const(zeros, "c0")
            if peephole is not None:
                p = emit.squeeze(emit.slice(peephole, d, d + 1, 0), 0)
                p_i, p_o, p_f = (emit.slice(p, k * hidden, (k + 1) * hidden, 0) for k in range(3))
        outputs: dict[int, ir.Value] = {}
        for t in reversed(range(steps)) if backwards else range(steps):
            xt = emit.squeeze(emit.slice(projected, t, t + 1, 0), 0)  # [batch, G·H]
            if op == "LSTM":
                pre = emit.op("Add", xt, emit.op("MatMul", h, r_t))
                i_pre, o_pre, f_pre, c_pre = (gate(pre, k) for k in range(4))
                if peephole is not None:
                    i_pre = emit.op("Add", i_pre, emit.op("Mul", p_i, c))
                    f_pre = emit.op("Add", f_pre, emit.op("Mul", p_f, c))
                i = emit.op(f, clipped(i_pre))
                forget = (
                    emit.op("Sub", emit.const(np.ones((), dtype), "one"), i)
                    if input_forget
                    else emit.op(f, clipped(f_pre))
                )
                candidate = emit.op(g, clipped(c_pre))
                c = emit.op("Add", emit.op("Mul", forget, c), emit.op("Mul", i, candidate))
                if peephole is not None:
                    o_pre = emit.op("Add", o_pre, emit.op("Mul", p_o, c))
                o = emit.op(f, clipped(o_pre))
                h = emit.op("Mul", o, emit.op(h_act, c))
            elif op == "GRU":
                recurrent = emit.op("MatMul", h, r_t)  # [batch, 3H]
                zr = (
                    emit.op("Add", gate(xt, 0), gate(recurrent, 0)),
                    emit.op("Add", gate(xt, 1), gate(recurrent, 1)),
                )
                if rb is not None:
                    zr = (
                        emit.op("Add", zr[0], emit.slice(rb_zr, 0, hidden, 0)),
                        emit.op("Add", zr[1], emit.slice(rb_zr, hidden, 2 * hidden, 0)),
                    )
                z, reset = emit.op(f, clipped(zr[0])), emit.op(f, clipped(zr[1]))
                if before_reset:
                    inner = gate(recurrent, 2) if rb is None else emit.op("Add", gate(recurrent, 2), rb_h)
                    hidden_part = emit.op("Mul", reset, inner)
                else:
                    r_h = emit.slice(r_t, 2 * hidden, 3 * hidden, 1)
                    hidden_part = emit.op("MatMul", emit.op("Mul", reset, h), r_h)
                    if rb is not None:
                        hidden_part = emit.op("Add", hidden_part, rb_h)
                candidate = emit.op(g, clipped(emit.op("Add", gate(xt, 2), hidden_part)))
                one_minus_z = emit.op("Sub", emit.const(np.ones((), dtype), "one"), z)
                h = emit.op("Add", emit.op("Mul", one_minus_z, candidate), emit.op("Mul", z, h))
            else:
                h = emit.op(f, clipped(emit.op("Add", xt, emit.op("MatMul", h, r_t))))
            outputs[t] = emit.unsqueeze(h, 0)  # [1, batch, H]
        ys.append(emit.unsqueeze(emit.op("Concat", *(outputs[t] for t in range(steps)), axis=0), 1))
        last_h.append(emit.unsqueeze(h, 0))
        last_c.append(emit.unsqueeze(c, 0) if c is not None else None)
    y = emit.op("Concat", *ys, axis=1)  # [steps, dirs, batch, H]
    y_h = emit.op("Concat", *last_h, axis=0)  # [dirs, batch, H]
    results = [y, y_h]
    if op == "LSTM":
        results.append(emit.op("Concat", *last_c, axis=0))
    if layout:
        results = [emit.op("Transpose", results[0], perm=[2, 0, 1, 3])] + [
            emit.op("Transpose", v, perm=[1, 0, 2]) for v in results[1:]
        ]
    old = [v for v in node.outputs]
    new = results[: len(old)]
    for before, after in zip(old, new, strict=True):
        after.shape, after.type = before.shape, before.type
    ir.convenience.replace_nodes_and_values(graph, node, [node], emit.nodes, old, new)


@register_pass("expand-recurrent")
class ExpandRecurrent(PasscPass):
    """Unrolls LSTM, GRU and RNN nodes of a static sequence length into MatMul/Add/activation steps.

    TVM's Relax frontend has no converter for them; once input shapes are bound they are these
    compositions exactly (see the module docstring). Nodes in the main graph are expanded; one
    this cannot take (a sequence_lens that varies, an activation other than Sigmoid/Tanh/Relu,
    opset < 13) is a UsageError naming it.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.fired.clear()
        found = [n for n in model.graph if n.op_type in GATES and n.domain in ("", "ai.onnx")]
        if found and onnx_opset(model) < MIN_OPSET:
            raise UsageError(
                f"expand-recurrent: {describe(found[0])} is in a model of opset {onnx_opset(model)}; "
                f"the expansion needs opset ≥ {MIN_OPSET}"
            )
        for node in found:
            _expand(model.graph, node)
            self.fired[node.op_type] += 1
        return ir.passes.PassResult(model, modified=bool(found))
