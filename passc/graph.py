"""What passes that edit onnx_ir graphs share: reading constants and opsets, naming new initializers,
per-channel operands, and the affine map of an inference BatchNormalization.

Passes take these from here, not from one another's private modules.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = [
    "batchnorm_affine",
    "constant",
    "describe",
    "fresh_initializer",
    "inference_batchnorm",
    "onnx_opset",
    "per_channel",
    "unused_initializer_name",
]


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's array when it is fixed: an initializer that is not also a graph input (which a
    caller may override), or the output of a Constant node. None otherwise."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def onnx_opset(model: ir.Model) -> int:
    """The model's default-domain opset version (0 when it imports none)."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def unused_initializer_name(graph: ir.Graph | ir.Function, base: str) -> str:
    """`base`, or `base_1`, `base_2`, …: the first name the graph has no initializer called."""
    taken = getattr(graph, "initializers", {})
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def fresh_initializer(op, graph: ir.Graph | ir.Function, array: np.ndarray, base: str) -> ir.Value:
    """A new initializer named `base` (or `base_1`, …: never one the graph already has), made with
    an onnxscript rewrite's `op` builder.

    (In a function, which has no initializers, the rewriter drops the rewrite that asks for one.)"""
    name = unused_initializer_name(graph, base)
    return op.initializer(ir.tensor(array, name=name), name=name)


def batchnorm_affine(
    node: ir.Node, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an inference BatchNormalization `node` with these constant parameters:
    y[c] = scale[c] · x[c] + shift[c] for each channel c, where

        scale = γ / √(var + ε),   shift = β − mean · scale

    and ε is the node's `epsilon` (ONNX's default 1e-5). Computed in float64, for the caller to
    fold into a neighbouring op and round once."""
    gamma, beta, mean, var = (np.asarray(a).astype(np.float64) for a in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + node.attributes.get_float("epsilon", 1e-5))
    return scale, beta - mean * scale


def inference_batchnorm(node: ir.Node, channels: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(scale, shift) of an inference BatchNormalization over `channels` channels whose parameters
    are constants (`batchnorm_affine`), or the reason it is not one."""
    if node.attributes.get_int("training_mode", 0):
        return "BatchNormalization is in training mode"
    if node.attributes.get_int("spatial", 1) != 1:
        return "BatchNormalization is not spatial (opset < 9 per-element form)"
    if len(node.inputs) != 5 or len(node.outputs) != 1:
        return "BatchNormalization does not have scale, bias, mean and var inputs and one output"
    params = [constant(v) for v in node.inputs[1:]]
    for value, array in zip(node.inputs[1:], params, strict=True):
        if array is None:
            return f"BatchNormalization input {value.name!r} is not a constant"
        if array.shape != (channels,):
            return f"BatchNormalization input {value.name!r} has shape {array.shape}, not ({channels},)"
    return batchnorm_affine(node, *params)


def per_channel(array: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """The [channels] vector an operand broadcast against a [N, C, spatial…] output of rank
    `out_rank` amounts to, or None when it varies along another axis or would grow the output."""
    if array.ndim > out_rank:
        return None
    full = (1,) * (out_rank - array.ndim) + array.shape
    if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,))


def describe(node: ir.Node) -> str:
    """A node for people: its name, or its op and first output when it has none."""
    if node.name:
        return node.name
    output = node.outputs[0].name if node.outputs else "?"
    return f"{node.op_type}->{output}"
