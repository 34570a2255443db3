"""Mixed-precision weight bit widths by integer linear programming (OHQ / HAWQ-V3): `assign-bits`."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from passc.passes.assign_bits import pareto
from passc.passes.assign_bits.baselines import best_uniform, greedy, uniform
from passc.passes.assign_bits.budgets import parse_budgets, show
from passc.passes.assign_bits.calibration import load_calibration
from passc.passes.assign_bits.costs import LatencyTable, cost_table, stored_bytes
from passc.passes.assign_bits.decode import MIN_OPSET, realise
from passc.passes.assign_bits.ilp import Problem, Solution, check_feasible, solve
from passc.passes.assign_bits.latency import MeasuredLatency
from passc.passes.assign_bits.layers import Layer, find_layers, weight_bytes
from passc.passes.assign_bits.pareto import Frontier, frontier, plot
from passc.passes.assign_bits.quantize import INTEGER_WIDTHS, Scheme, view_shape
from passc.passes.assign_bits.sensitivity import METRICS, Probe, distortion
from passc.targets import get_target

from passc import cache_dir, oracle
from passc.errors import UsageError
from passc.graph import onnx_opset
from passc.pass_base import BIT_WIDTHS_KEY, RUNTIME_PARAMS_KEY, PasscPass
from passc.registry import register_pass

__all__ = [
    "ASSIGNMENT_KEY",
    "FRONTIER_KEY",
    "AssignBits",
    "BIT_WIDTHS_KEY",
    "LatencyTable",
    "Problem",
    "RUNTIME_PARAMS_KEY",
    "Solution",
    "best_uniform",
    "greedy",
    "solve",
    "stored_bytes",
    "uniform",
    "weight_bytes",
]

logger = logging.getLogger(__name__)

# JSON {method, objective (Σ Ω), totals and budgets per kind (as numbers, and as shown), gap,
# layers: {name: {width, bytes, float32_bytes, distortion}}}
ASSIGNMENT_KEY = "passc.assignment"
FRONTIER_KEY = "passc.assign_bits.frontier"  # JSON `pareto.as_json`: with the frontier/pareto_plot options
WIDTHS = (*INTEGER_WIDTHS, 16, 32)


def _names(texts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t.strip() for t in texts if t.strip())


@register_pass("assign-bits")
class AssignBits(PasscPass):
    """Gives each Conv/Gemm/MatMul weight a bit width (2, 3, 4, 8, float16) by ILP under budgets.

    Ωᵢ(b) is the calibration-set output distortion with layer i alone at b bits (sensitivity.py); the
    ILP (ilp.py) picks one width per layer minimising Σ Ωᵢ(bᵢ) within the budgets (budgets.py). Each
    chosen width is realised as packed uint8 codes + float32 scales (+ uint8 zero points) decoded by
    standard ONNX ops in front of the layer (decode.py), or as a float16 weight and a Cast. The model's
    metadata gets "passc.runtime_params" (the new initializers, which the artifact keeps as they are
    stored) and "passc.bit_widths". Lossy: after a run, `tolerance` is the measured max relative output
    error on the calibration batches (as passc.oracle.compare measures it) times `tolerance_margin`.
    Budgets count the assigned layers only: not the layers kept float, not biases.
    Options: `--pass-option assign-bits.budget=size=1.5MB,avg-bits=4.5`, `…tie=a+b,c+d`.
    It runs last (`runs_last`): constant folding after it would fold decode graphs back into floats.
    """

    tolerance: ClassVar[float | None] = None  # measured by each run
    runs_last: ClassVar[bool] = True

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options:
        widths: tuple[int, ...] = dataclasses.field(
            default=(2, 3, 4, 8, 16),
            metadata={"help": "candidate widths: 2, 3, 4, 8 (packed integers), 16 (float16), 32 (kept)"},
        )
        budget: tuple[str, ...] = dataclasses.field(
            default=("avg-bits=4",),
            metadata={"help": "KIND=VALUE, comma-separated: size=1.5MB, avg-bits=4.5, bops=2G, latency=12ms"},
        )
        granularity: str = dataclasses.field(
            default="channel", metadata={"help": "a scale per output channel, or per group of weights"}
        )
        group_size: int = dataclasses.field(
            default=64, metadata={"help": "weights per scale with granularity=group; must divide each row"}
        )
        symmetric: bool = dataclasses.field(
            default=True, metadata={"help": "symmetric codes (no zero points) or asymmetric"}
        )
        keep_first: bool = dataclasses.field(default=True, metadata={"help": "keep the first layer float"})
        keep_last: bool = dataclasses.field(default=True, metadata={"help": "keep the last layer float"})
        keep_float: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "more layers (node names) to keep float32"}
        )
        tie: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "groups of layers sharing a width, as a+b+c, comma-separated"}
        )
        calibration: str | None = dataclasses.field(
            default=None, metadata={"help": "a .npy/.npz file or a directory of them (default: random)"}
        )
        samples: int = dataclasses.field(
            default=8, metadata={"help": "random calibration batches when no calibration data is given"}
        )
        metric: str = dataclasses.field(default="mse", metadata={"help": "distortion: mse or kl"})
        method: str = dataclasses.field(
            default="ilp", metadata={"help": "ilp; or greedy / uniform (the widest single width), to compare"}
        )
        time_limit: float = dataclasses.field(default=60.0, metadata={"help": "ILP time limit, seconds"})
        tolerance_margin: float = dataclasses.field(
            default=2.0, metadata={"help": "declared tolerance = margin × measured max relative error"}
        )
        latency_target: str = dataclasses.field(
            default="host", metadata={"help": "the passc target whose latency a latency budget measures"}
        )
        rpc: str | None = dataclasses.field(
            default=None, metadata={"help": "HOST:PORT of a TVM RPC server on the device to time layers on"}
        )
        latency_repeat: int = dataclasses.field(
            default=5, metadata={"help": "timings per layer and width (median; each ≥ 20 ms of runs)"}
        )
        pareto_plot: str | None = dataclasses.field(
            default=None, metadata={"help": "write distortion vs size (ILP, greedy, uniform) to this PNG"}
        )
        frontier: bool = dataclasses.field(
            default=False,
            metadata={
                "help": "keep distortion vs size in the model, for `passc report` (pareto_plot does too)"
            },
        )

        def __post_init__(self) -> None:
            bad = [w for w in self.widths if w not in WIDTHS]
            if bad or not self.widths:
                raise UsageError(
                    f"assign-bits.widths: unknown width {bad[0] if bad else 'none'} "
                    f"(choose from {', '.join(map(str, WIDTHS))})"
                )
            parse_budgets(self.budget)
            if self.granularity not in ("channel", "group"):
                raise UsageError("assign-bits.granularity must be channel or group")
            if self.group_size < 1:
                raise UsageError("assign-bits.group_size must be at least 1")
            if self.method not in ("ilp", "greedy", "uniform"):
                raise UsageError("assign-bits.method must be ilp, greedy or uniform")
            if self.metric not in METRICS:
                raise UsageError(f"assign-bits.metric must be one of {', '.join(METRICS)}")
            get_target(self.latency_target)  # an unknown target is a UsageError now
            if self.rpc is not None and not re.fullmatch(r"[^:\s]+:\d+", self.rpc):
                raise UsageError(f"assign-bits.rpc must be HOST:PORT, got {self.rpc!r}")
            if self.latency_repeat < 1:
                raise UsageError("assign-bits.latency_repeat must be at least 1")
            if self.samples < 1 or self.time_limit <= 0 or self.tolerance_margin < 1:
                raise UsageError("assign-bits: samples ≥ 1, time_limit > 0 and tolerance_margin ≥ 1 please")

        @property
        def scheme(self) -> Scheme:
            return Scheme(self.group_size if self.granularity == "group" else None, self.symmetric)

    def __init__(
        self,
        options: Options | None = None,
        *,
        calibration: list[dict[str, np.ndarray]] | None = None,
        latency_table: LatencyTable | None = None,
        ties: Sequence[Sequence[str]] = (),
    ) -> None:
        """`calibration` batches replace the calibration option; `latency_table` enables latency
        budgets; `ties` adds to the tie option's groups."""
        super().__init__(options)
        self.calibration = calibration
        self.latency_table = latency_table
        self.ties = [list(g) for g in ties]
        self.solution: Solution | None = None  # the last run's assignment
        self.problem: Problem | None = None
        self.frontier: Frontier | None = None  # with the pareto_plot option

    def _tie_groups(self) -> list[list[str]]:
        return [[n.strip() for n in g.split("+")] for g in _names(self.options.tie)] + self.ties

    def _assigned(self, layers: list[Layer]) -> list[Layer]:
        """The layers to assign widths to (not kept float), checking every named layer exists."""
        o = self.options
        names = {layer.name for layer in layers}
        keep = set(_names(o.keep_float))
        tied = {n for g in self._tie_groups() for n in g}
        for name in keep | tied:
            if name not in names:
                raise UsageError(
                    f"assign-bits: no quantizable layer named {name!r} (layers: {', '.join(sorted(names))})"
                )
        if o.keep_first:
            keep.add(layers[0].name)
        if o.keep_last:
            keep.add(layers[-1].name)
        if keep & tied:
            raise UsageError(
                f"assign-bits: layer {sorted(keep & tied)[0]!r} is kept float and cannot be tied"
            )
        for layer in layers:
            if layer.name not in keep:
                try:
                    view_shape(layer.shape, layer.channels_last, o.scheme.group)
                except ValueError as err:
                    raise UsageError(f"assign-bits: layer {layer.name!r}: {err}") from None
        return [layer for layer in layers if layer.name not in keep]

    def build_problem(self, model: ir.Model, layers: list[Layer]) -> Problem:
        """The ILP's cost tables and budgets for `layers`; distortions are zero until measured."""
        o = self.options
        widths = tuple(sorted(o.widths))
        index = {layer.name: i for i, layer in enumerate(layers)}
        ties = tuple(tuple(index[n] for n in g) for g in self._tie_groups() if len(g) > 1)
        costs, limits, shows = {}, {}, {}
        elements = sum(layer.elements for layer in layers)
        for budget in parse_budgets(o.budget):
            kind = budget.kind
            costs[kind] = cost_table(kind, model, layers, widths, o.scheme, self.latency_table)
            scale = elements if kind == "avg-bits" else 1
            limits[kind] = budget.value * scale
            shows[kind] = lambda v, kind=kind, scale=scale: show(kind, v / scale)
        names = tuple(layer.name for layer in layers)
        return Problem(names, widths, np.zeros((len(layers), len(widths))), costs, limits, ties, shows)

    def _choose(self, problem: Problem) -> Solution:
        """The assignment by the `method` option: the ILP, or a baseline for comparison."""
        method = self.options.method
        if method == "ilp":
            return solve(problem, self.options.time_limit)
        found = greedy(problem) if method == "greedy" else best_uniform(problem)
        if found is None:
            raise UsageError(f"assign-bits: method={method} finds no assignment within the budgets")
        return found

    def _sweep(self, model: ir.Model, assigned: list[Layer]) -> None:
        """The size frontier of the measured problem, with the chosen assignment circled: kept in
        the model's metadata (FRONTIER_KEY) and, with pareto_plot, plotted."""
        problem, s = self.problem, self.solution
        size = cost_table("size", model, assigned, problem.widths, self.options.scheme, None)
        self.frontier = frontier(problem, size)
        chosen = (float(size[np.arange(len(assigned)), list(s.choice)].sum()), s.objective)
        model.metadata_props[FRONTIER_KEY] = json.dumps(pareto.as_json(self.frontier, chosen))
        if self.options.pareto_plot:
            path = Path(self.options.pareto_plot)
            plot(self.frontier, path, chosen, title=f"assign-bits: {model.graph.name or 'model'}")
            logger.info("assign-bits: wrote the Pareto plot to %s", path)

    def _layer_table(self, assigned: list[Layer]) -> dict[str, dict[str, float]]:
        """Per assigned layer: its width, stored bytes at it and at float32, and Ω at it."""
        s, problem, scheme = self.solution, self.problem, self.options.scheme
        return {
            layer.name: {
                "width": s.widths[layer.name],
                "bytes": stored_bytes(layer, s.widths[layer.name], scheme),
                "float32_bytes": stored_bytes(layer, 32, scheme),
                "distortion": float(problem.distortion[i, s.choice[i]]),
            }
            for i, layer in enumerate(assigned)
        }

    @classmethod
    def report_sections(cls, record: dict, model: ir.Model | None) -> list:
        from passc.passes.assign_bits.report import sections

        return sections(record, model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.fired.clear()
        self.tolerance = 0.0
        if BIT_WIDTHS_KEY in model.metadata_props:
            return ir.passes.PassResult(model, modified=False)  # widths were assigned already
        layers = find_layers(model.graph)
        assigned = self._assigned(layers) if layers else []
        if not assigned:
            return ir.passes.PassResult(model, modified=False)
        opset = onnx_opset(model)
        if opset < MIN_OPSET:
            raise UsageError(
                f"assign-bits: the decode graph needs opset ≥ {MIN_OPSET}; the model has {opset}"
            )
        o = self.options
        if self.latency_table is None and any(b.kind == "latency" for b in parse_budgets(o.budget)):
            target = get_target(o.latency_target)
            cache = cache_dir() / "latency"
            self.latency_table = MeasuredLatency(target, o.scheme, o.rpc, o.latency_repeat, cache)
        costs = self.build_problem(model, assigned)
        check_feasible(costs)  # before the costly measurements
        specs = oracle.input_specs(model)
        if not all(isinstance(d, int) for _, shape, _ in specs for d in shape):
            raise UsageError("assign-bits: input shapes must be static (bind them) to calibrate")
        batches = self.calibration or load_calibration(o.calibration, specs, o.samples)
        probe = Probe(model, assigned, batches)
        table = probe.sensitivities(assigned, sorted(o.widths), o.scheme, o.metric)
        self.problem = dataclasses.replace(costs, distortion=table)
        self.solution = s = self._choose(self.problem)
        if o.pareto_plot or o.frontier:
            self._sweep(model, assigned)
        params: list[str] = []
        for layer in assigned:
            width = s.widths[layer.name]
            params += realise(model.graph, layer, width, o.scheme)
            if width != 32:
                self.fired[f"{width}-float" if width == 16 else f"{width}-bit"] += 1
        if not self.fired:
            return ir.passes.PassResult(model, modified=False)  # every layer stays float32
        widths = {layer.name: s.widths.get(layer.name, 32) for layer in layers}
        model.metadata_props[BIT_WIDTHS_KEY] = json.dumps(widths)
        model.metadata_props[RUNTIME_PARAMS_KEY] = json.dumps(params)
        model.metadata_props[ASSIGNMENT_KEY] = json.dumps(
            {
                "method": s.method,
                "objective": s.objective,
                "totals": s.totals,
                "gap": s.gap,
                "budgets": {k: self.problem.shown(k, v) for k, v in self.problem.limits.items()},
                "shown": {k: self.problem.shown(k, v) for k, v in s.totals.items()},
                "layers": self._layer_table(assigned),
            }
        )
        outputs = [oracle.run_onnxruntime(model, batch) for batch in batches]
        worst = max(
            e.max_rel for y, r in zip(outputs, probe.reference, strict=True) for e in oracle.compare(y, r)
        )
        self.tolerance = o.tolerance_margin * worst
        joint = np.mean([distortion(y, r, o.metric) for y, r in zip(outputs, probe.reference, strict=True)])
        logger.info(
            "assign-bits: %s; Σ Ω %.3g (measured together %.3g), gap %.2g, %.2fs; max rel err %.3g; %s",
            dict(self.fired),
            s.objective,
            joint,
            s.gap,
            s.seconds,
            worst,
            ", ".join(f"{k} {self.problem.shown(k, v)}" for k, v in s.totals.items()),
        )
        return ir.passes.PassResult(model, modified=True)
