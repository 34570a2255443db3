"""Each rule that schedules a reduction takes it with an elementwise prologue (a scale, an add, an
activation) fused into its input: the numbers match onnxruntime, the prologue is computed once
per input element (in its own loop, or in the stage that pads or packs the input) and never in
the reduction, and a schedule that does put it there is declined (issue 34).

TVM's FuseOps fuses an elementwise producer only into what it classes a plain reduction (op
pattern kCommReduce: a sum, a max); a conv or a matmul is "out-elementwise fusable" and gets no
prologue from it today. `prologue_module` marks the kernel a plain reduction before fusion, so
that FuseOps fuses the producer in as it would into a sum, and each rule meets the kernel it
would meet if TVM fused more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
import tvm
from conftest import weighted_model
from tvm import relax

from passc import oracle
from passc.schedules import collecting_declines, legalize_passes, schedule_passes
from passc.schedules.work import RUNS_SLACK, kernel_work, recomputed

TARGET = {"kind": "llvm", "mcpu": "haswell"}  # AVX2 and FMA, which every x86 machine here runs
VNNI_TARGET = {"kind": "llvm", "mcpu": "cascadelake"}  # AVX-512 VNNI: Int8Tiles' int8 tiles
COMM_REDUCE = 3  # TVM's OpPatternKind for a plain reduction

rng = np.random.default_rng(0)


def _weight(*shape: int) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(np.float32)


# rule → (the kernel's name fragment, the model's signature, its body, its weights)
CASES: dict[str, tuple[str, str, str, dict[str, np.ndarray]]] = {
    "PackedConv": (
        "conv2d_packed",
        "(float[1, 32, 28, 28] x) => (float y)",
        "s = Mul(x, scale)\n y = Conv<pads = [1, 1, 1, 1]>(s, w)",
        {"scale": _weight(32, 1, 1), "w": _weight(64, 32, 3, 3)},
    ),
    "PointwiseConv": (
        "conv2d_pointwise",
        "(float[1, 32, 28, 28] x) => (float y)",
        "s = Add(x, shift)\n y = Conv(s, w)",
        {"shift": _weight(32, 1, 1), "w": _weight(64, 32, 1, 1)},
    ),
    "PackedDense": (
        "dense_packed",
        "(float[1, 196, 64] x) => (float y)",
        "s = Relu(x)\n y = MatMul(s, w)",
        {"w": _weight(64, 128)},
    ),
    "PackedDepthwise": (
        "depthwise_conv2d_packed",
        "(float[1, 64, 14, 14] x) => (float y)",
        "s = Mul(x, scale)\n y = Conv<pads = [3, 3, 3, 3], group = 64>(s, w)",
        {"scale": _weight(64, 1, 1), "w": _weight(64, 1, 7, 7)},
    ),
    "WideDepthwise": (
        "conv2d",
        "(float[1, 32, 28, 56] x) => (float y)",
        "s = Sigmoid(x)\n y = Conv<pads = [1, 1, 1, 1], group = 32>(s, w)",
        {"w": _weight(32, 1, 3, 3)},
    ),
    "Contraction": (
        "matmul",
        "(float[4, 49, 32] x, float[4, 32, 49] z) => (float y)",
        "s = Mul(x, scale)\n y = MatMul(s, z)",
        {"scale": _weight(32)},
    ),
    "RowReduction": (
        "softmax",
        "(float[8, 64, 100] x) => (float y)",
        "s = Mul(x, scale)\n y = Softmax<axis = -1>(s)",
        {"scale": _weight(100)},
    ),
    "TrailingSum": (
        "sum",
        "(float[1, 64, 28, 28] x) => (float y)",
        "s = Mul(x, scale)\n y = ReduceSum<keepdims = 0>(s, axes)",
        {"scale": _weight(64, 1, 1), "axes": np.array([2, 3], np.int64)},
    ),
    "Int8Dot": ("matmul_int8", "int8", "", {}),
    "Int8Tiles": ("matmul_int8", "int8", "", {}),
    "AxisReduction": (
        "softmax",
        "(float[1, 16, 4, 400] x) => (float y)",
        "s = Relu(x)\n y = Softmax<axis = 1>(s)",
        {},
    ),
}


def _int8_model() -> ir.Model:
    """ONNX's MatMulInteger of a ReLU'd int8 input [1, 49, 64] by a constant int8 [64, 96]."""
    from onnx import TensorProto, helper, numpy_helper

    weight = rng.integers(-128, 128, (64, 96)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["s"]), helper.make_node("MatMulInteger", ["s", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 49, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 49, 96])],
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _model(rule: str) -> ir.Model:
    _, signature, body, weights = CASES[rule]
    return _int8_model() if signature == "int8" else weighted_model(signature, body, **weights)


def _host_runs(target: dict[str, str]) -> bool:
    """Whether this machine runs code built for `target` (AVX-512 VNNI for cascadelake)."""
    if target["mcpu"] != "cascadelake":
        return True
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "avx512_vnni" in cpuinfo.read_text()


def prologue_module(model: ir.Model, fragment: str, target: dict[str, str] = TARGET) -> tvm.IRModule:
    """The model's Relax module through passc's legalize phases, with each kernel named
    `fragment` marked a plain reduction before FuseOps, so that its elementwise producer fuses in."""
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(ir.to_proto(model), keep_params_in_input=False)
    passes = legalize_passes()
    split = next(i for i, p in enumerate(passes) if p.info.name == "FuseOps")
    with tvm.target.Target(target):
        mod = tvm.transform.Sequential(passes[:split])(mod)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tvm.tirx.PrimFunc) and fragment in gv.name_hint:
                mod[gv] = func.with_attr("op_pattern", COMM_REDUCE)
        return tvm.transform.Sequential(passes[split:])(mod)


def _fused_kernel(mod: tvm.IRModule, fragment: str) -> tuple[str, Any]:
    (kernel,) = [(gv.name_hint, f) for gv, f in mod.functions_items() if fragment in gv.name_hint]
    return kernel


@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_fused_prologue_is_computed_once_per_input_element(rule: str) -> None:
    from passc import schedules

    fragment = CASES[rule][0]
    model = _model(rule)
    target_dict = VNNI_TARGET if rule == "Int8Tiles" else TARGET
    mod = prologue_module(model, fragment, target_dict)
    name, kernel = _fused_kernel(mod, fragment)
    assert name.startswith("fused_"), name  # the prologue fused in
    target = tvm.target.Target(target_dict)
    with target:
        schedule = getattr(schedules, rule)().apply(kernel, target, False)
    assert schedule is not None, f"{rule} declined {name}"
    scheduled = schedule.mod["main"]
    assert not recomputed(kernel, scheduled)

    # The prologue reads the model's input x about once per element (its padded copy at most);
    # inside the reduction it would read it once per multiply-add (taps × output channels).
    inputs = int(np.prod([int(d) for d in model.graph.inputs[0].shape]))
    assert kernel_work(kernel, loads=True)["load x"] == inputs
    assert kernel_work(scheduled, loads=True)["load x"] <= RUNS_SLACK * inputs * 1.05

    # And it runs: the model compiled with this kernel matches onnxruntime.
    with target, collecting_declines() as declined:
        lowered = tvm.transform.Sequential(schedule_passes(target))(mod)
    assert not declined
    assert lowered[name].attrs.get("tirx.is_scheduled")
    if not _host_runs(target_dict):
        pytest.skip(f"scheduled and checked; running it needs {target_dict['mcpu']}'s AVX-512 VNNI")
    shape = [int(d) for d in model.graph.inputs[0].shape]
    feeds = {
        v.name: rng.integers(-128, 128, shape).astype(np.int8)
        if v.dtype == ir.DataType.INT8
        else rng.uniform(-2, 2, [int(d) for d in v.shape]).astype(np.float32)
        for v in model.graph.inputs
    }
    executable = tvm.compile(lowered, target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for a in feeds.values()])
    expected = oracle.run_onnxruntime(model, feeds)
    (output,) = expected
    if got.numpy().dtype == np.int32:
        np.testing.assert_array_equal(got.numpy(), expected[output])  # exact, as int8 · int8 sums are
    for error in oracle.compare({output: got.numpy()}, expected):
        assert error.max_rel < 1e-4, error


def test_a_prologue_inlined_into_the_reduction_is_declined() -> None:
    """A schedule that evaluates the prologue at every multiply-add (the prologue and the input's
    packing inlined into the pointwise conv's reduction) puts more arithmetic in the reduction's
    body: the guard declines it, and names the kernel and the rule in the compile log."""
    from tvm import s_tir

    from passc.schedules import PointwiseConv
    from passc.schedules.base import scheduling_kernel
    from passc.schedules.pointwise_conv import POINTWISE_PACK

    fragment = CASES["PointwiseConv"][0]
    mod = prologue_module(_model("PointwiseConv"), fragment)
    name, kernel = _fused_kernel(mod, fragment)
    inlined = s_tir.Schedule(kernel)
    inlined.compute_inline(inlined.get_sblock("T_add"))
    inlined.compute_inline(inlined.get_sblock(POINTWISE_PACK))
    assert recomputed(kernel, inlined.mod["main"]) == {"math in reductions": 64.0}  # once per output channel

    target = tvm.target.Target(TARGET)
    with target, scheduling_kernel(name), collecting_declines() as declined:
        assert PointwiseConv().checked(kernel, inlined) is None
        assert PointwiseConv().checked(kernel, PointwiseConv().apply(kernel, target, False)) is not None
    (line,) = declined
    assert line.startswith(f"{name}: rule PointwiseConv declined it") and "64× the arithmetic" in line


def test_compile_lists_the_kernels_whose_schedule_was_declined(run_cli, tmp_path: Path) -> None:
    """A softmax over 4 values is too short for RowReduction; dlight's Reduction would compute its
    max 4× over, the guard declines that, and `passc compile` says so, naming the kernel."""
    from conftest import save

    model = weighted_model("(float[1, 4] x) => (float y)", "y = Softmax<axis = -1>(x)")
    path = save(ir.to_proto(model), tmp_path / "softmax.onnx")
    code, _, err = run_cli("compile", str(path), "--target", "host", "-o", str(tmp_path / "art"))
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "declined" in line]
    assert line.startswith("passc: declined schedule: softmax: rule dlight Reduction declined it"), line
    assert "run block" in line and "as often as TVM's loops do" in line
