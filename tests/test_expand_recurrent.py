"""expand-recurrent: LSTM, GRU and RNN unrolled into plain ops give onnxruntime's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper
from passc.passes.expand_recurrent import ExpandRecurrent

from passc import UsageError, oracle

STEPS, BATCH, INPUT, HIDDEN = 5, 2, 3, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(
    op: str,
    *,
    direction: str = "forward",
    layout: int = 0,
    bias: bool = True,
    initial: bool = True,
    peephole: bool = False,
    **attributes,
) -> ir.Model:
    """One recurrent node with random constant weights; X, and the initial states, are inputs."""
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    weights = {
        "W": rng.standard_normal((dirs, g * HIDDEN, INPUT)),
        "R": rng.standard_normal((dirs, g * HIDDEN, HIDDEN)) * 0.5,
    }
    names = ["X", "W", "R", "B" if bias else "", "", "initial_h" if initial else ""]
    if bias:
        weights["B"] = rng.standard_normal((dirs, 2 * g * HIDDEN))
    x_shape = [BATCH, STEPS, INPUT] if layout else [STEPS, BATCH, INPUT]
    state = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    inputs = [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, x_shape)]
    if initial:
        inputs.append(helper.make_tensor_value_info("initial_h", onnx.TensorProto.FLOAT, state))
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        names.append("initial_c" if initial else "")
        if initial:
            inputs.append(helper.make_tensor_value_info("initial_c", onnx.TensorProto.FLOAT, state))
        if peephole:
            names.append("P")
            weights["P"] = rng.standard_normal((dirs, 3 * HIDDEN))
        outputs.append("Y_c")
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(
        op, names, outputs, name="rnn", hidden_size=HIDDEN, direction=direction, layout=layout, **attributes
    )
    graph = helper.make_graph(
        [node],
        "recurrent",
        inputs,
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(w.astype(np.float32), k) for k, w in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def reference(
    model: ir.Model, inputs: dict[str, np.ndarray], seq_first: ir.Model | None
) -> dict[str, np.ndarray]:
    """onnxruntime's outputs; for a batch-first (layout=1) model, which onnxruntime does not run,
    those of `seq_first` (the same node with layout=0) on transposed inputs, transposed back."""
    if seq_first is None:
        return oracle.run_onnxruntime(model, inputs)
    swapped = {k: v.transpose(1, 0, 2) for k, v in inputs.items()}
    outputs = oracle.run_onnxruntime(seq_first, swapped)
    return {k: v.transpose(2, 0, 1, 3) if k == "Y" else v.transpose(1, 0, 2) for k, v in outputs.items()}


def check_expansion(model: ir.Model, seq_first: ir.Model | None = None) -> None:
    inputs = oracle.random_inputs(oracle.input_specs(model), seed=1)
    expected = reference(model, inputs, seq_first)
    expanded = ir.from_proto(ir.to_proto(model))
    result = ExpandRecurrent()(expanded)
    assert result.modified
    assert not any(n.op_type in GATES for n in expanded.graph)
    actual = oracle.run_onnxruntime(expanded, inputs)
    assert list(actual) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_directions_and_layouts(op: str, direction: str, layout: int) -> None:
    seq_first = recurrent_model(op, direction=direction) if layout else None
    check_expansion(recurrent_model(op, direction=direction, layout=layout), seq_first)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_without_bias_or_initial_state(op: str) -> None:
    check_expansion(recurrent_model(op, bias=False, initial=False))


@pytest.mark.parametrize(
    "attributes",
    [{"clip": 0.5}, {"input_forget": 1}, {"activations": ["Sigmoid", "Relu", "Tanh"]}],
)
def test_lstm_options(attributes: dict) -> None:
    check_expansion(recurrent_model("LSTM", **attributes))


def test_lstm_peepholes_both_ways() -> None:
    check_expansion(recurrent_model("LSTM", peephole=True, direction="bidirectional"))


@pytest.mark.parametrize("before_reset", [0, 1])
def test_gru_linear_before_reset(before_reset: int) -> None:
    check_expansion(recurrent_model("GRU", linear_before_reset=before_reset, direction="bidirectional"))


def test_unsupported_activation_is_a_clear_error() -> None:
    model = recurrent_model("RNN", activations=["Softsign"])
    with pytest.raises(UsageError, match="rnn: activation Softsign is not supported"):
        ExpandRecurrent()(model)
