"""The base class of passc's schedule rules: the target check and the block analysis, once."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from passc.schedules.analysis import REFUSALS, root_blocks
from passc.schedules.cpu import CPUSpec, cpu_spec, for_bits
from passc.schedules.work import RUNS_SLACK, recomputed

__all__ = ["Rule"]

logger = logging.getLogger(__name__)


class Rule(ScheduleRule):
    """A CPU rule: `schedule` gets an LLVM target's PrimFunc as its root blocks (`root_blocks`,
    after its scalar blocks are inlined) and the CPU spec for the output's element size (`spec`,
    else the target's). It returns the schedule, or None; a refusal it raises (`REFUSALS`) also
    means "does not apply", and so does a schedule that recomputes a block (`checked`)."""

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
            scheduled = self.schedule(sch, blocks, for_bits(self.spec or cpu_spec(target), output_bits))
        except REFUSALS:
            return None
        return self.checked(func, scheduled)

    def checked(self, func: tirx.PrimFunc, scheduled: Any) -> Any:
        """`scheduled`, or None when it runs a block more than RUNS_SLACK times as often as the
        legalized loop nest `func` does (`passc.schedules.work`): the rule declines, logged, and
        the next rule (at worst the plain loops) takes the kernel."""
        if scheduled is None:
            return None
        first = scheduled[0] if isinstance(scheduled, list) else scheduled
        blocks = recomputed(func, first.mod["main"])
        if not blocks:
            return scheduled
        worst = max(blocks, key=blocks.get)
        logger.warning(
            "schedule rule %s declined a kernel: its schedule would run block %r %.0f× as often as "
            "TVM's loops do (the limit is %g×), so the next rule schedules that kernel",
            self.rule_name,
            worst,
            blocks[worst],
            RUNS_SLACK,
        )
        return None

    @property
    def rule_name(self) -> str:
        """The rule's name in the compile log."""
        return type(self).__name__

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        raise NotImplementedError


def _inline_scalars(sch: s_tir.Schedule) -> None:
    """Inlines each block without loops (a scalar: a zero point cast to int32) into its consumers,
    where it can be, so that the rules see the kernel's loops around it."""
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        if not sch.get_loops(rv):
            with contextlib.suppress(*REFUSALS):
                sch.compute_inline(rv)
