"""Canonicalisation folds shape sub-graphs once shapes are bound, exactly, and only once."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from passc.passes.canonicalize import Canonicalize

from passc import oracle
from passc.loading import bind_input_shapes, load_model
from tests.conftest import parse, save


def test_shape_subgraph_folds_after_binding(dynamic_mlp) -> None:
    model = load_model(dynamic_mlp).model
    bind_input_shapes(model, {"x": (2, 4, 2)})
    inputs = oracle.random_inputs(oracle.input_specs(model))
    expected = oracle.run_onnxruntime(model, inputs)

    result = Canonicalize()(model)

    assert result.modified
    ops = [n.op_type for n in model.graph]
    assert "Shape" not in ops and "Concat" not in ops and "Slice" not in ops
    assert model.graph.outputs[0].shape == ir.Shape([2, 3])
    errors = oracle.compare(oracle.run_onnxruntime(model, inputs), expected)
    assert errors[0].max_rel <= oracle.FLOAT_ROUNDING


def test_shape_subgraph_stays_while_dims_are_dynamic(dynamic_mlp) -> None:
    model = load_model(dynamic_mlp).model
    Canonicalize()(model)
    assert "Shape" in [n.op_type for n in model.graph]


def test_second_run_is_a_no_op(dynamic_mlp) -> None:
    model = load_model(dynamic_mlp).model
    bind_input_shapes(model, {"x": (3, 4, 2)})
    assert Canonicalize()(model).modified
    snapshot = ir.to_proto(model).SerializeToString()
    assert not Canonicalize()(model).modified
    assert ir.to_proto(model).SerializeToString() == snapshot


def test_outputs_keep_their_names(dynamic_mlp) -> None:
    model = load_model(dynamic_mlp).model
    bind_input_shapes(model, {"x": (1, 4, 2)})
    inputs = [v.name for v in model.graph.inputs]
    Canonicalize()(model)
    assert [v.name for v in model.graph.inputs] == inputs
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert np.dtype(model.graph.outputs[0].dtype.numpy()) == np.float32


def test_an_input_that_is_also_an_output_keeps_its_name(tmp_path) -> None:
    import passc
    from passc.optimize import optimize_model

    path = tmp_path / "m.onnx"
    onnx.save(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] x, float[2, 3] y) { y = Relu(x) }"""),
        path,
    )
    model = load_model(path).model
    Canonicalize()(model)
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["x", "y"]
    optimized = onnx.load(optimize_model(path, tmp_path / "o.onnx").output)
    assert [v.name for v in optimized.graph.input] == ["x"]
    assert [v.name for v in optimized.graph.output] == ["x", "y"]
    artifact = passc.compile(path, target="host", output=tmp_path / "art")
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    outputs = artifact(x=x)
    np.testing.assert_array_equal(outputs["x"], x)
    np.testing.assert_array_equal(outputs["y"], np.maximum(x, 0))


def test_graph_rewrites_are_left_to_the_passes_that_report_them() -> None:
    """Cast(double→float→half) is not Cast(double→half) (double rounding); BN is fuse's to fold."""
    model = ir.from_proto(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (double[4] x, float[1, 2, 3, 3] im) => (float16[4] y, float[1, 2, 3, 3] z) {
              f = Cast<to = 1>(x)
              y = Cast<to = 10>(f)
              s = Constant<value = float[2] {1.0, 2.0}>()
              b = Constant<value = float[2] {0.5, 0.25}>()
              w = Constant<value = float[2, 2, 1, 1] {1.0, 0.0, 0.0, 1.0}>()
              c = Conv(im, w)
              z = BatchNormalization(c, s, b, b, s)
            }"""
        )
    )
    Canonicalize()(model)
    assert [n.op_type for n in model.graph] == ["Cast", "Cast", "Conv", "BatchNormalization"]


def _weights_listed_as_inputs(path) -> str:
    """A model as exporters wrote them before ONNX IR version 4: every weight is an initializer
    and a graph input too (onnxruntime uses the initializer unless the caller feeds the input)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "old",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 3]),
            helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.save(model, path)
    return str(path)


def test_inputs_with_initializers_become_constants(tmp_path) -> None:
    path = _weights_listed_as_inputs(tmp_path / "old.onnx")
    model = load_model(path).model
    pass_ = Canonicalize()
    assert pass_(model).modified
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert pass_.fired == {"initializer-inputs-to-constants": 2}
    x = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}
    np.testing.assert_array_equal(
        oracle.run_onnxruntime(model, x)["y"], oracle.run_onnxruntime(load_model(path).model, x)["y"]
    )


def test_compiled_old_model_takes_only_its_data_input(tmp_path, run_cli) -> None:
    """Compiled and run with only its data input; the pass log says what became constants; with
    --keep-initializer-inputs every weight stays an input the caller passes."""
    path = _weights_listed_as_inputs(tmp_path / "old.onnx")
    status, stdout, err = run_cli("verify", path, "--target", "host", "-o", tmp_path / "a")
    assert status == 0 and "verified" in stdout
    assert "initializer-inputs-to-constants x2" in err
    from passc.artifact import Artifact

    assert [t["name"] for t in Artifact(tmp_path / "a").inputs] == ["x"]
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 4), np.float32))
    status, stdout, _ = run_cli("run", tmp_path / "a", "--input", f"x={x}")
    assert status == 0 and stdout.startswith("y: float32 2x3")
    status, _, _ = run_cli(
        "compile", path, "--target", "host", "-o", tmp_path / "k", "--keep-initializer-inputs"
    )
    assert status == 0
    assert [t["name"] for t in Artifact(tmp_path / "k").inputs] == ["x", "w", "b"]


def test_small_constant_of_shape_folds_and_a_large_one_stays() -> None:
    """Shape arithmetic through ConstantOfShape (pads built by an exporter) folds, so what depends
    on it can; a ConstantOfShape that makes a weight stays (folding it would grow the model)."""
    model = ir.from_proto(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[1, 8] x) => (float[1, 10] y, float[1, 4096] z) {
              n = Constant<value = int64[1] {2}>()
              zeros = ConstantOfShape<value = int64[1] {0}>(n)
              one = Constant<value = int64[2] {0, 1}>()
              pads = Concat<axis = 0>(zeros, one)
              y = Pad(x, pads)
              big = Constant<value = int64[2] {1, 4096}>()
              z = ConstantOfShape<value = float[1] {0.5}>(big)
            }"""
        )
    )
    Canonicalize()(model)
    ops = [n.op_type for n in model.graph]
    assert ops.count("ConstantOfShape") == 1  # the weight-sized one
    [pad] = [n for n in model.graph if n.op_type == "Pad"]
    assert pad.inputs[1].const_value is not None and pad.inputs[1].const_value.numpy().tolist() == [
        0,
        0,
        0,
        1,
    ]


def test_an_if_on_a_bound_shape_becomes_its_branch(tmp_path) -> None:
    path = save(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[N, 4] x) => (float[N, 4] y) {
              s = Shape(x)
              zero = Constant<value = int64[1] {0}>()
              n = Gather<axis = 0>(s, zero)
              one = Constant<value = int64[1] {1}>()
              single = Equal(n, one)
              y = If(single) <
                then_branch = t () => (float[N, 4] a) { a = Relu(x) },
                else_branch = e () => (float[N, 4] b) { b = Neg(x) }
              >
            }"""
        ),
        tmp_path / "if.onnx",
    )
    model = load_model(path).model
    bind_input_shapes(model, {"x": (1, 4)})
    Canonicalize()(model)
    assert [n.op_type for n in model.graph] == ["Relu"]


def test_static_sequences_resolve_to_the_values_they_hold() -> None:
    """Construct [x, y, z], erase at −3, insert x at −1, read at −1 and concatenate: no sequence
    op is left and the outputs are onnxruntime's (TVM's importer got negative positions wrong)."""
    model = ir.from_proto(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[2, 3] x, float[2, 3] y, float[2, 3] z) => (float[2, 3] at, float[6, 3] all, int64 n) {
              s1 = SequenceConstruct(x, y, z)
              minus3 = Constant<value = int64 {-3}>()
              s2 = SequenceErase(s1, minus3)
              minus1 = Constant<value = int64 {-1}>()
              s3 = SequenceInsert(s2, x, minus1)
              at = SequenceAt(s3, minus1)
              all = ConcatFromSequence<axis = 0>(s3)
              n = SequenceLength(s3)
            }"""
        )
    )
    rng = np.random.default_rng(0)
    inputs = {k: rng.standard_normal((2, 3)).astype(np.float32) for k in "xyz"}
    expected = oracle.run_onnxruntime(model, inputs)
    Canonicalize()(model)
    assert not [n.op_type for n in model.graph if n.op_type.startswith(("Sequence", "ConcatFromSequence"))]
    actual = oracle.run_onnxruntime(model, inputs)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value)
    np.testing.assert_array_equal(actual["at"], inputs["z"])
