"""The base class of passc's schedule rules: the target check and the block analysis, once."""

from __future__ import annotations

import contextlib
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from passc.schedules.analysis import REFUSALS, root_blocks
from passc.schedules.cpu import CPUSpec, cpu_spec, for_bits

__all__ = ["Rule"]


class Rule(ScheduleRule):
    """A CPU rule: `schedule` gets an LLVM target's PrimFunc as its root blocks (`root_blocks`,
    after its scalar blocks are inlined) and the CPU spec for the output's element size (`spec`,
    else the target's). It returns the schedule, or None; a refusal it raises (`REFUSALS`) also
    means "does not apply"."""

    def __init__(self, spec: CPUSpec | None = None) -> None:
        self.spec = spec

    def apply(self, func: Any, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            sch = s_tir.Schedule(func)
            _inline_scalars(sch)
            blocks = root_blocks(sch)
            if not blocks:
                return None
            output_bits = sch.get(blocks[-1].block_rv).writes[0].source.dtype.bits
            return self.schedule(sch, blocks, for_bits(self.spec or cpu_spec(target), output_bits))
        except REFUSALS:
            return None

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        raise NotImplementedError


def _inline_scalars(sch: s_tir.Schedule) -> None:
    """Inlines each block without loops (a scalar: a zero point cast to int32) into its consumers,
    where it can be, so that the rules see the kernel's loops around it."""
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        if not sch.get_loops(rv):
            with contextlib.suppress(*REFUSALS):
                sch.compute_inline(rv)
