"""Kernels with no reduction (activations, adds, pads, transposes, gathers), as TVM legalizes them."""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo

from passc.schedules.analysis import inline_injective, vectorize_flat
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec

__all__ = ["Elementwise"]


class Elementwise(Rule):
    """Kernels with no reduction: inline the chain into as few blocks as possible, then each
    remaining block is one flat parallel, vector loop (`vectorize_flat`)."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        if not all(b.is_injective() for b in blocks):
            return None
        remaining = inline_injective(sch, blocks)
        for block in remaining:
            vectorize_flat(sch, block.block_rv, spec)
        return sch
