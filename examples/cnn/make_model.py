"""Writes model.onnx: a small MobileNet-style classifier, as an exporter would write it.

Conv-BN-ReLU stem, a depthwise-separable block, global pooling, a flatten computed by a
Shape/Gather/Concat/Reshape sub-graph (as torch exporters write `x.view(x.size(0), -1)`), a Gemm
head and Softmax, with a dynamic batch dim. Weights are fixed random numbers (seed 0): the
example shows compilation and verification, not accuracy. Needs only onnx and numpy.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
weights: list[onnx.TensorProto] = []


def const(name: str, array: np.ndarray) -> str:
    weights.append(numpy_helper.from_array(array, name))
    return name


def randn(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


nodes = [
    helper.make_node(
        "Conv",
        ["input", const("stem.w", randn(16, 3, 3, 3))],
        ["stem"],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    ),
    helper.make_node(
        "BatchNormalization",
        [
            "stem",
            const("bn.scale", 1 + randn(16, scale=0.1)),
            const("bn.bias", randn(16, scale=0.1)),
            const("bn.mean", randn(16, scale=0.1)),
            const("bn.var", 1 + np.abs(randn(16, scale=0.1))),
        ],
        ["stem_bn"],
    ),
    helper.make_node("Relu", ["stem_bn"], ["stem_act"]),
    helper.make_node(
        "Conv",
        ["stem_act", const("dw.w", randn(16, 1, 3, 3)), const("dw.b", randn(16))],
        ["dw"],
        group=16,
        pads=[1, 1, 1, 1],
    ),
    helper.make_node("Relu", ["dw"], ["dw_act"]),
    helper.make_node(
        "Conv", ["dw_act", const("pw.w", randn(32, 16, 1, 1)), const("pw.b", randn(32))], ["pw"]
    ),
    helper.make_node("Relu", ["pw"], ["pw_act"]),
    helper.make_node("GlobalAveragePool", ["pw_act"], ["pool"]),
    helper.make_node("Shape", ["pool"], ["pool_shape"]),
    helper.make_node("Gather", ["pool_shape", const("zero", np.array(0, np.int64))], ["batch"], axis=0),
    helper.make_node("Unsqueeze", ["batch", const("axes0", np.array([0], np.int64))], ["batch_1d"]),
    helper.make_node(
        "Concat", ["batch_1d", const("minus_one", np.array([-1], np.int64))], ["flat_shape"], axis=0
    ),
    helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"]),
    helper.make_node(
        "Gemm",
        ["flat", const("fc.w", randn(10, 32)), const("fc.b", randn(10))],
        ["logits"],
        transB=1,
    ),
    helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
]
graph = helper.make_graph(
    nodes,
    "cnn",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
    [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
    weights,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="passc-example")
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, Path(__file__).with_name("model.onnx"))
