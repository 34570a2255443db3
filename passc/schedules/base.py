"""The base class of passc's schedule rules: the target check and the block analysis, once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from passc.schedules.analysis import REFUSALS, root_blocks
from passc.schedules.cpu import CPUSpec, cpu_spec, for_bits
from passc.schedules.work import RUNS_SLACK, recomputed

__all__ = ["Rule", "collecting_declines", "scheduling_kernel"]

logger = logging.getLogger(__name__)

_KERNEL: ContextVar[str] = ContextVar("passc_kernel", default="a kernel")
_DECLINES: ContextVar[list[str] | None] = ContextVar("passc_declines", default=None)


@contextlib.contextmanager
def scheduling_kernel(name: str) -> Iterator[None]:
    """Names the kernel the rules are scheduling, for their declines."""
    token = _KERNEL.set(name)
    try:
        yield
    finally:
        _KERNEL.reset(token)


@contextlib.contextmanager
def collecting_declines() -> Iterator[list[str]]:
    """A list that gets one line per schedule a rule declines (`Rule.checked`) inside the block."""
    declines: list[str] = []
    token = _DECLINES.set(declines)
    try:
        yield declines
    finally:
        _DECLINES.reset(token)


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
        """`scheduled`, or None when it recomputes (`passc.schedules.work.recomputed`: a block run
        more than RUNS_SLACK times as often as in the legalized loop nest `func`, or more
        arithmetic inside a reduction): the rule declines, the decline is logged and collected
        (`collecting_declines`), and the next rule (at worst the plain loops) takes the kernel."""
        if scheduled is None:
            return None
        first = scheduled[0] if isinstance(scheduled, list) else scheduled
        counts = recomputed(func, first.mod["main"])
        if not counts:
            return scheduled
        worst = max(counts, key=counts.get)
        doing = _doing(worst, counts[worst])
        line = f"{_KERNEL.get()}: rule {self.rule_name} declined it, its schedule would {doing}"
        logger.info("%s", line)
        declines = _DECLINES.get()
        if declines is not None:
            declines.append(line)
        return None

    @property
    def rule_name(self) -> str:
        """The rule's name in the compile log."""
        return type(self).__name__

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        raise NotImplementedError


def _doing(count: str, ratio: float) -> str:
    """What a `recomputed` count that grew `ratio` times means, as a verb phrase."""
    if count == "math in reductions":
        return (
            f"evaluate {ratio:.0f}× the arithmetic of the blocks it inlined inside reductions (a "
            f"prologue computed at every step of a reduction; the limit is {RUNS_SLACK:g}×)"
        )
    name = count.removeprefix("block ")
    return f"run block {name!r} {ratio:.0f}× as often as TVM's loops do (the limit is {RUNS_SLACK:g}×)"


def _inline_scalars(sch: s_tir.Schedule) -> None:
    """Inlines each block without loops (a scalar: a zero point cast to int32) into its consumers,
    where it can be, so that the rules see the kernel's loops around it."""
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        if not sch.get_loops(rv):
            with contextlib.suppress(*REFUSALS):
                sch.compute_inline(rv)
