"""assign-bits: the ILP is optimal, packing round-trips, the decode graph is exact, budgets hold exactly."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from passc.passes.assign_bits import (
    BIT_WIDTHS_KEY,
    RUNTIME_PARAMS_KEY,
    AssignBits,
    Problem,
    best_uniform,
    greedy,
    solve,
    stored_bytes,
    uniform,
    weight_bytes,
)
from passc.passes.assign_bits.decode import realise
from passc.passes.assign_bits.layers import find_layers
from passc.passes.assign_bits.quantize import Scheme, fake_quantize, pack, quantize, unpack
from passc.passes.assign_bits.sensitivity import distortion

from passc import oracle
from passc.errors import UsageError
from passc.pass_base import make_options
from passc.pipeline import build_pipeline, run_pipeline
from tests.conftest import weighted_model

RNG = np.random.default_rng(0)


def _w(*shape: int, scale: float = 1.0, tail: float = 0.0) -> np.ndarray:
    """He-scaled weights; `tail` mixes in Student-t outliers, and output channels get varied scales."""
    fan_in = np.prod(shape[1:]) if len(shape) > 2 else shape[0]
    w = RNG.standard_normal(shape) if not tail else RNG.standard_t(1 / tail, shape)
    channel = RNG.uniform(0.3, 1.5, shape[0 if len(shape) > 2 else 1])
    w = w * (channel.reshape(-1, *[1] * (len(shape) - 1)) if len(shape) > 2 else channel)
    return (scale * w / np.sqrt(fan_in)).astype(np.float32)


CNN_WEIGHTS = {
    "w1": _w(16, 3, 3, 3),
    "w2": _w(32, 16, 3, 3, tail=0.3),
    "w3": _w(32, 32, 1, 1, scale=0.5),
    "w4": _w(64, 32, tail=0.2),
    "w5": _w(64, 10),
}


def _cnn() -> ir.Model:
    """conv c1 (first) → conv c2 → 1×1 conv c3 → pool → Gemm g4 (transB) → MatMul m5 (last)."""
    return weighted_model(
        "(float[2, 3, 12, 12] x) => (float[2, 10] y)",
        """c1 = Conv<pads = [1, 1, 1, 1]>(x, w1)
           r1 = Relu(c1)
           c2 = Conv<pads = [1, 1, 1, 1]>(r1, w2)
           r2 = Relu(c2)
           c3 = Conv(r2, w3)
           r3 = Relu(c3)
           p = GlobalAveragePool(r3)
           f = Flatten(p)
           g4 = Gemm<transB = 1>(f, w4)
           r4 = Relu(g4)
           y = MatMul(r4, w5)""",
        **CNN_WEIGHTS,
    )


MLP_WEIGHTS = {f"w{i}": _w(*shape, scale=s, tail=t) for i, (shape, s, t) in enumerate(
    [((32, 96), 1.0, 0.0), ((96, 96), 1.3, 0.4), ((96, 64), 0.7, 0.0), ((64, 64), 1.0, 0.25),
     ((64, 96), 1.1, 0.1), ((96, 48), 0.9, 0.5), ((48, 10), 1.0, 0.0)], start=1)}  # fmt: skip


def _mlp() -> ir.Model:
    """Seven MatMuls h1 … h6, y with Relu between; weights of varied scales and tails."""
    body = "\n".join(f"h{i} = MatMul(a{i - 1}, w{i})\na{i} = Relu(h{i})" for i in range(1, 7))
    signature = "(float[16, 32] a0) => (float[16, 10] y)"
    return weighted_model(signature, body + "\ny = MatMul(a6, w7)", **MLP_WEIGHTS)


def _assign(model: ir.Model, **options) -> AssignBits:
    assigner = AssignBits(make_options(AssignBits, options))
    assigner(model)
    return assigner


# The ILP


def _brute_force(problem: Problem) -> float | None:
    """The least Σ Ω over every feasible assignment, or None."""
    n, w = problem.distortion.shape
    choices = np.array(list(itertools.product(range(w), repeat=n)))
    rows = np.arange(n)
    ok = np.ones(len(choices), bool)
    for group in problem.ties:
        ok &= (choices[:, list(group)] == choices[:, [group[0]]]).all(axis=1)
    for kind, limit in problem.limits.items():
        ok &= problem.costs[kind][rows, choices].sum(axis=1) <= limit
    if not ok.any():
        return None
    return float(problem.distortion[rows, choices[ok]].sum(axis=1).min())


def _random_problem(seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 11))
    widths = (2, 3, 4, 8, 16) if n <= 7 else (2, 4, 8)
    w = np.array(widths)
    elements = rng.integers(16, 5000, n)[:, None]
    distortion = rng.uniform(0.2, 1, (n, 1)) * 4.0**-w + rng.uniform(0, 1e-3, (n, len(w)))
    costs = {
        "size": elements * np.where(w == 3, 4, w) // 8 + rng.integers(0, 64, (n, 1)),
        "avg-bits": elements * w,
    }
    costs["bops"] = rng.integers(1, 1000, (n, 1)) * w * 32
    kinds = list(rng.choice(list(costs), int(rng.integers(1, 4)), replace=False))
    limits = {k: float(costs[k].sum(axis=0)[rng.integers(0, len(w))]) * rng.uniform(0.8, 1.1) for k in kinds}
    pairs = int(rng.integers(0, 3)) if n > 1 else 0
    ties = tuple(tuple(int(i) for i in rng.choice(n, 2, replace=False)) for _ in range(pairs))
    return Problem(tuple(map(str, range(n))), widths, distortion, {k: costs[k] for k in kinds}, limits, ties)


@pytest.mark.parametrize("seed", range(40))
def test_ilp_equals_brute_force(seed: int) -> None:
    problem = _random_problem(seed)
    best = _brute_force(problem)
    if best is None:
        with pytest.raises(UsageError, match="budget"):
            solve(problem)
        return
    found = solve(problem)
    assert problem.holds(found.choice)
    assert all(found.choice[a] == found.choice[b] for a, b in problem.ties)
    assert found.objective == pytest.approx(best, rel=1e-6, abs=1e-12)
    assert found.gap <= 1e-6


def test_infeasible_budget_names_the_smallest_feasible_one() -> None:
    model = _cnn()
    layers = {layer.name: layer for layer in find_layers(model.graph)}
    scheme = Scheme()
    least = sum(stored_bytes(layers[n], 2, scheme) for n in ("c2", "c3", "g4"))
    with pytest.raises(UsageError, match=f"smallest feasible size budget is .*\\({least} bytes\\)"):
        _assign(model, budget=f"size={least - 1}")
    with pytest.raises(UsageError, match="smallest feasible avg-bits budget is 2 bits"):
        _assign(model, budget="avg-bits=1.5")
    bops = sum(layers[n].macs * 2 * 32 for n in ("c2", "c3", "g4"))
    with pytest.raises(UsageError, match=f"smallest feasible bops budget is {bops / 1e9:.6g}G"):
        _assign(model, budget=f"bops={bops - 1}")


def test_budgets_that_only_fail_together_name_each_minimum() -> None:
    costs = {"size": np.array([[1, 2], [1, 2]]), "bops": np.array([[2, 1], [2, 1]])}
    problem = Problem(("a", "b"), (2, 4), np.zeros((2, 2)), costs, {"size": 2, "bops": 2})
    with pytest.raises(UsageError, match="cannot all hold at once.*size ≥ 2.*bops ≥ 2"):
        solve(problem)


# Quantization, packing and the decode graph


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pack_unpack_round_trip(bits: int, group: int | None, symmetric: bool, channels_last: bool) -> None:
    weight = _w(12, 8) if channels_last else _w(6, 4, 1, 3)  # 96 and 72 elements
    q = quantize(weight, bits, channels_last, Scheme(group, symmetric))
    assert q.codes.max() < 2**bits
    packed = pack(q.codes, bits)
    assert packed.size == -(-q.codes.size * {2: 2, 3: 4, 4: 4, 8: 8}[bits] // 8)
    np.testing.assert_array_equal(unpack(packed, bits, q.codes.size), q.codes.reshape(-1))
    error = np.abs(q.dequantize().reshape(weight.shape) - weight).reshape(q.codes.shape)
    assert (error <= q.scale / 2 * (1 + 1e-5)).all()  # min/max ranges: rounding error only


def test_odd_lengths_pad_the_last_byte() -> None:
    codes = np.array([1, 2, 3, 0, 2], np.uint8)
    packed = pack(codes, 2)
    assert packed.tolist() == [1 | 2 << 2 | 3 << 4, 2]
    np.testing.assert_array_equal(unpack(packed, 2, 5), codes)


DECODE_CASES = {
    "conv": ("(float[1, 4, 5, 5] x) => (float y)", "y = Conv(x, w)", _w(6, 4, 3, 1)),
    "matmul": ("(float[2, 12] x) => (float y)", "y = MatMul(x, w)", _w(12, 10)),
    "gemm-transB": ("(float[2, 12] x) => (float y)", "y = Gemm<transB = 1>(x, w)", _w(10, 12)),
    "odd-length": ("(float[2, 3] x) => (float y)", "y = MatMul(x, w)", _w(3, 5)),  # padded bytes
}


@pytest.mark.parametrize("case", DECODE_CASES)
@pytest.mark.parametrize("width", [2, 3, 4, 8, 16])
@pytest.mark.parametrize(("group", "symmetric"), [(None, True), (None, False), (4, True), (4, False)])
def test_decode_graph_equals_numpy_dequantization(case: str, width: int, group: int, symmetric: bool) -> None:
    signature, body, weight = DECODE_CASES[case]
    model = weighted_model(signature, body, w=weight)
    (layer,) = find_layers(model.graph)
    scheme = Scheme(group, symmetric)
    params = realise(model.graph, layer, width, scheme)
    decoded = layer.node.inputs[1]
    model.graph.outputs.append(decoded)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    x = oracle.random_inputs(oracle.input_specs(model))
    got = oracle.run_onnxruntime(model, x)[decoded.name]
    np.testing.assert_array_equal(got, fake_quantize(weight, width, layer.channels_last, scheme))
    assert sum(model.graph.initializers[p].const_value.nbytes for p in params) == stored_bytes(
        layer, width, scheme
    )


def test_tvm_imports_and_runs_the_decode_graph() -> None:
    """TVM's Relax ONNX frontend keeps the packed initializers as parameters after the inputs."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = _cnn()
    _assign(model, widths="2,3,4", budget="avg-bits=3", keep_first="false", symmetric="false")
    runtime = json.loads(model.metadata_props[RUNTIME_PARAMS_KEY])
    mod = from_onnx(ir.to_proto(model), keep_params_in_input=True)
    names = [p.name for p in mod["main"].params]
    assert names[0] == "x" and names[-len(runtime) :] == runtime
    mod, params = relax.frontend.detach_params(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    x = oracle.random_inputs(oracle.input_specs(model))
    got = vm["main"](tvm.runtime.tensor(x["x"]), *params["main"]).numpy()
    expected = oracle.run_onnxruntime(model, x)["y"]
    assert oracle.compare({"y": got}, {"y": expected})[0].max_rel < 1e-5


# The pass


def test_size_budget_holds_exactly_and_outputs_stay_within_tolerance() -> None:
    model = _cnn()
    float_bytes = weight_bytes(model)
    inputs = oracle.random_inputs(oracle.input_specs(model), seed=100)
    expected = oracle.run_onnxruntime(model, inputs)
    assigned = ["c2", "c3", "g4"]
    budget = 7000
    assigner = _assign(model, budget=f"size={budget}B", granularity="group", group_size="16")
    assert sum(assigner.fired.values()) == 3
    assert weight_bytes(model, assigned) == assigner.solution.totals["size"] <= budget
    widths = json.loads(model.metadata_props[BIT_WIDTHS_KEY])
    assert widths["c1"] == widths["y"] == 32 and set(widths) == {"c1", "c2", "c3", "g4", "y"}
    runtime = json.loads(model.metadata_props[RUNTIME_PARAMS_KEY])
    assert all(name in model.graph.initializers for name in runtime)
    assert weight_bytes(model) < float_bytes
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert 0 < assigner.tolerance < 0.2  # 2x the worst calibration error: 0.154 at this budget
    for error in oracle.compare(oracle.run_onnxruntime(model, inputs), expected):
        assert error.max_rel <= assigner.tolerance, error
    snapshot = ir.to_proto(model).SerializeToString()
    again = AssignBits(assigner.options)
    assert not again(model).modified and again.tolerance == 0
    assert ir.to_proto(model).SerializeToString() == snapshot


def test_four_bits_everywhere_is_under_a_third_of_the_float_bytes() -> None:
    model = _cnn()
    names = [layer.name for layer in find_layers(model.graph)]
    float_bytes = weight_bytes(model, names)
    assigner = _assign(model, widths="4", keep_first="false", keep_last="false")
    assert assigner.fired == {"4-bit": 5}
    assert weight_bytes(model, names) <= 0.3 * float_bytes


def test_ties_share_a_width_and_float16_is_a_cast() -> None:
    model = _mlp()
    assigner = _assign(model, widths="4,16", budget="avg-bits=10", tie="h2+h5,h3+h4")
    widths = json.loads(model.metadata_props[BIT_WIDTHS_KEY])
    assert widths["h2"] == widths["h5"] and widths["h3"] == widths["h4"]
    assert assigner.fired["4-bit"] and assigner.fired["16-float"] and assigner.fired.total() == 5
    halves = [v for v in model.graph.initializers.values() if v.const_value.dtype == ir.DataType.FLOAT16]
    assert len(halves) == assigner.fired["16-float"]
    assert all(v.consumers()[0].op_type == "Cast" for v in halves)


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_ilp_distortion_is_at_most_greedy_and_uniform(make) -> None:
    model = make()
    layers = find_layers(model.graph)[1:-1]
    sizes = [sum(stored_bytes(layer, w, Scheme()) for layer in layers) for w in (4, 8)]
    budget = sum(sizes) // 2  # between uniform 4 and uniform 8
    assigner = _assign(model, budget=f"size={budget}", samples="4")
    problem, ilp = assigner.problem, assigner.solution
    greedy_choice, uniform_choice = greedy(problem), best_uniform(problem)
    assert greedy_choice is not None and uniform_choice == uniform(problem, 4)
    assert problem.holds(greedy_choice.choice) and ilp.totals["size"] <= budget
    assert ilp.objective <= greedy_choice.objective <= uniform_choice.objective
    assert ilp.objective < uniform_choice.objective


def test_kl_metric() -> None:
    logits = {"y": RNG.standard_normal((4, 10))}
    assert distortion(logits, logits, "kl") == 0
    assert distortion({"y": logits["y"] * 0.5}, logits, "kl") > 0
    assigner = _assign(_mlp(), metric="kl", samples="2")
    assert assigner.fired.total() == 5 and (assigner.problem.distortion >= -1e-12).all()


def test_latency_budgets_take_a_table() -> None:
    with pytest.raises(UsageError, match="must be measured on the device"):
        _assign(_mlp(), budget="latency=2ms", latency_target="rpi5")

    def table(model, layers, widths):
        return {(name, w): 1e-4 * w for name in layers for w in widths}

    model = _mlp()
    assigner = AssignBits(make_options(AssignBits, {"budget": "latency=2ms"}), latency_table=table)
    assigner(model)
    assert assigner.solution.totals["latency"] <= 2e-3 + 1e-15


def test_calibration_from_files(tmp_path) -> None:
    batches = RNG.standard_normal((3, 16, 32)).astype(np.float32)
    np.save(tmp_path / "a.npy", batches[:2])
    np.savez(tmp_path / "b.npz", a0=batches[2])
    assigner = _assign(_mlp(), calibration=str(tmp_path), budget="avg-bits=4")
    assert len(assigner.problem.layers) == 5 and assigner.fired.total() == 5
    with pytest.raises(UsageError, match="has shape"):
        np.save(tmp_path / "c.npy", batches[:, :, :8])
        _assign(_mlp(), calibration=str(tmp_path))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"widths": "2,5"}, "unknown width 5"),
        ({"budget": "size=abc"}, "bad value in 'size=abc'"),
        ({"budget": "weight=3MB"}, "KIND one of"),
        ({"budget": "latency=12"}, "expected a number with unit"),
        ({"budget": "size=1MB,size=2MB"}, "more than once"),
        ({"granularity": "tensor"}, "channel or group"),
        ({"metric": "l1"}, "mse, kl"),
    ],
)
def test_bad_options_raise(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_options(AssignBits, options)


def test_bad_layer_options_raise_when_run() -> None:
    with pytest.raises(UsageError, match="layer 'c1': group size 16 does not divide the 27"):
        _assign(_cnn(), granularity="group", group_size="16", keep_first="false")
    with pytest.raises(UsageError, match="no quantizable layer named 'nope'"):
        _assign(_cnn(), tie="c2+nope")
    with pytest.raises(UsageError, match="kept float and cannot be tied"):
        _assign(_cnn(), tie="c1+c2")


def test_runs_in_a_pipeline_with_cli_style_options() -> None:
    specs = build_pipeline(
        ("canonicalize",),
        ["canonicalize", "assign-bits"],
        ["assign-bits.budget=avg-bits=4.5,size=40KB", "assign-bits.tie=h2+h3", "assign-bits.samples=2"],
    )
    assert specs[1].instantiate().options.budget == ("avg-bits=4.5", "size=40KB")
    model = _mlp()
    records = run_pipeline(model, specs, verify_each=True)
    assert records[1].modified and records[1].fired.keys() <= {"2-bit", "3-bit", "4-bit", "8-bit", "16-float"}
    assert records[1].max_rel_error > 0


def test_pareto_plot_puts_the_ilp_at_or_below_greedy(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="the Pareto plot needs matplotlib (the dev extra)")
    assigner = _assign(_mlp(), budget="avg-bits=5", samples="2", pareto_plot=str(tmp_path / "p.png"))
    front = assigner.frontier
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(front.ilp) == len(front.budgets) == len(front.greedy)
    for budget, ilp, found in zip(front.budgets, front.ilp, front.greedy, strict=True):
        assert ilp[0] <= budget
        if found is not None:
            assert ilp[1] <= found[1] + 1e-12
    for size, objective in front.uniform.values():
        better = [ilp for budget, ilp in zip(front.budgets, front.ilp, strict=True) if budget >= size]
        assert all(ilp[1] <= objective + 1e-12 for ilp in better)


@pytest.mark.parametrize("method", ["greedy", "uniform"])
def test_baseline_methods_realise_their_own_choice(method: str) -> None:
    """method=greedy / uniform realises the baseline's assignment (for benchmarks against the ILP)."""
    assigner = _assign(_cnn(), budget="avg-bits=5", samples="2", method=method)
    expected = greedy(assigner.problem) if method == "greedy" else best_uniform(assigner.problem)
    assert assigner.solution.choice == expected.choice
    ilp = solve(assigner.problem)
    assert ilp.objective <= assigner.solution.objective + 1e-12
