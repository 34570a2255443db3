"""passc's schedule rules in the order tried, and the module pass that applies them.

A rule takes one legalized PrimFunc and returns a `tvm.s_tir.Schedule`, or None when it does not
apply; `ApplyDefaultSchedule` then tries the next rule, and a function no rule takes stays as
legalized (correct, just slow). Any schedule primitive that refuses (a `ScheduleError`) makes the
whole rule return None, so a rule can only ever change how a kernel runs, never what it computes.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from passc.schedules.analysis import REFUSALS
from passc.schedules.axis_reduction import AxisReduction
from passc.schedules.base import Rule, scheduling_kernel
from passc.schedules.contraction import Contraction
from passc.schedules.cpu import CPUSpec
from passc.schedules.elementwise import Elementwise
from passc.schedules.int8_matmul import Int8Dot, Int8Tiles
from passc.schedules.packed_conv import PackedConv
from passc.schedules.packed_dense import PackedDense
from passc.schedules.packed_depthwise import PackedDepthwise
from passc.schedules.pointwise_conv import PointwiseConv
from passc.schedules.row_reduction import RowReduction
from passc.schedules.trailing_sum import TrailingSum
from passc.schedules.wide_depthwise import WideDepthwise

__all__ = ["default_rules", "default_schedule", "schedule_passes"]


def default_rules(spec: CPUSpec | None = None) -> list[ScheduleRule]:
    """passc's rules in the order tried, then dlight's CPU rules for multi-reduction kernels
    (softmax, layer norm). `spec` fixes the CPU; by default each function's target decides."""
    return [
        PackedConv(spec),
        PointwiseConv(spec),
        PackedDense(spec),
        PackedDepthwise(spec),
        RowReduction(spec),
        Int8Tiles(spec),
        Int8Dot(spec),
        WideDepthwise(spec),
        TrailingSum(spec),
        Contraction(spec),
        Elementwise(spec),
        AxisReduction(spec),
        _Guarded(dlight.cpu.Reduction()),
    ]


class _Guarded(Rule):
    """A dlight rule whose schedule errors, and schedules that recompute a block, count as "does
    not apply", like passc's own."""

    def __init__(self, rule: ScheduleRule) -> None:
        super().__init__()
        self.rule = rule

    @property
    def rule_name(self) -> str:
        return f"dlight {type(self.rule).__name__}"

    def apply(self, func: Any, target: Target, tunable: bool) -> s_tir.Schedule | None:
        try:
            return self.checked(func, self.rule.apply(func, target, tunable))
        except REFUSALS:
            return None


def default_schedule(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
    """The first default rule's schedule of `func` for `target`, or None when no rule applies."""
    for rule in default_rules():
        schedule = rule.apply(func, target, False)
        if schedule is not None:
            return schedule[0] if isinstance(schedule, list) else schedule
    return None


def schedule_passes(target: Target) -> list[Any]:
    """The module passes that schedule every legalized PrimFunc (run under `target`)."""
    del target  # each function's own target (or the current one) picks the CPU spec
    return [ApplyRules()]


@tvm.transform.module_pass(opt_level=0, name="passc.ApplyRules")
class ApplyRules:
    """dlight's `ApplyDefaultSchedule` with passc's rules (`default_schedule`): each PrimFunc not
    yet scheduled gets the first rule's schedule that applies; the rules also learn the kernel's
    name (`scheduling_kernel`), for their declines."""

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        scheduled = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
                continue
            target = func.attrs.get("target") if func.attrs else None
            with scheduling_kernel(gv.name_hint):
                schedule = default_schedule(func, target or Target.current(allow_none=False))
            if schedule is not None:
                scheduled[gv] = schedule.mod["main"].with_attr("tirx.is_scheduled", True)
        for gv, func in scheduled.items():
            mod[gv] = func
        return mod
