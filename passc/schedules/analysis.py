"""The block analysis and loop helpers that passc's schedule rules share.

A rule sees a legalized PrimFunc as the blocks directly under its root (`root_blocks`), each
described by dlight's `SBlockInfo`: `dom_kind()` (S or R per iterator), `dom()` (the extents of
its loops, bound one to one to its iterators) and `block_rv`. dlight's `normalize_prim_func` is
not used: it folds unit iterators away (`transform_block_layout`), and the rules read the loops
as legalize emitted them, unit ones included (a packed conv's batch, a 1×1 kernel's taps). Nor
is its `try_inline`: it tries `compute_inline` on every block before any
`reverse_compute_inline`, where `inline_injective` tries both on each block in turn, so the
blocks each leaves can differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tvm import s_tir, tirx
from tvm.ir.expr import Expr
from tvm.s_tir.dlight.analysis import IterInfo, SBlockInfo
from tvm.tirx.analysis import undefined_vars

if TYPE_CHECKING:
    from passc.schedules.cpu import CPUSpec

__all__ = [
    "PARALLEL_MIN",
    "REFUSALS",
    "divisor",
    "epilogue_block",
    "inline_injective",
    "inline_prologues",
    "inline_side_inputs",
    "named_reduction",
    "per_load",
    "reduction_chunk",
    "root_blocks",
    "tile_factors",
    "vector_lanes",
    "vectorize_flat",
]

# What TVM raises when a schedule primitive or analysis refuses a kernel (ScheduleError is a
# RuntimeError; FFI checks surface as ValueError, TypeError or IndexError).
REFUSALS = (RuntimeError, ValueError, TypeError, IndexError)

PARALLEL_MIN = 4096  # elements of work below which a thread pool launch costs more than it saves


def root_blocks(sch: s_tir.Schedule) -> list[SBlockInfo] | None:
    """The root's child blocks in order, or None if a block is nested, has a non-constant loop, or
    its loops are not its iterators one to one (the form legalize emits; anything else is left)."""
    blocks = []
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        block = sch.get(rv)
        loops = sch.get_loops(rv)
        if not loops or sch.get_child_blocks(rv) or len(loops) != len(block.iter_vars):
            return None
        realize = sch.get(loops[-1]).body
        if not isinstance(realize, s_tir.SBlockRealize):
            return None
        iters = []
        for loop_rv, iter_var, value in zip(loops, block.iter_vars, realize.iter_values, strict=True):
            loop = sch.get(loop_rv)
            if not isinstance(value, tirx.Var) or not value.same_as(loop.loop_var):
                return None
            if not isinstance(loop.extent, tirx.IntImm) or not isinstance(loop.min, tirx.IntImm):
                return None
            if iter_var.iter_type == tirx.IterVar.DataPar:
                kind = "S"
            elif iter_var.iter_type == tirx.IterVar.CommReduce:
                kind = "R"
            else:
                return None
            iters.append(IterInfo(kind, iter_var.var, loop.extent, loop_rv))
        reduction = any(i.kind == "R" for i in iters)
        blocks.append(SBlockInfo(block.name_hint, iters, rv, reduction_block=reduction))
    return blocks


def inline_injective(sch: s_tir.Schedule, blocks: list[SBlockInfo]) -> list[SBlockInfo]:
    """Inlines every injective block that can be (into its consumer, else its producer), the
    first that can be first, until none can; returns the blocks left."""
    blocks = list(blocks)
    changed = True
    while changed:
        changed = False
        for i, block in enumerate(blocks):
            if not block.is_injective():
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block.block_rv)
                except REFUSALS:
                    continue
                blocks.pop(i)
                changed = True
                break
            if changed:
                break
    return blocks


def inline_side_inputs(
    sch: s_tir.Schedule, blocks: list[SBlockInfo], index: int
) -> tuple[list[SBlockInfo], int]:
    """Inlines into its consumers each injective block before the reduction `blocks[index]` that the
    reduction does not read, directly or through other blocks: an operand of the epilogue alone
    (MetaFormer's res_scale · x + mlp(x)), which the epilogue then computes per output element,
    under the reduction's tile. A rule that computes its epilogue there needs that: the tile loop
    must hold every producer of the epilogue. Returns the blocks left and the reduction's index."""
    feeding: set[str] = set()
    pending = [blocks[index].block_rv]
    while pending:
        for producer in sch.get_producers(pending.pop()):
            name = sch.get(producer).name_hint
            if name not in feeding:
                feeding.add(name)
                pending.append(producer)
    return _inline_before(sch, blocks, index, lambda block: block.name not in feeding)


def inline_prologues(
    sch: s_tir.Schedule, blocks: list[SBlockInfo], index: int
) -> tuple[list[SBlockInfo], int]:
    """Inlines into its readers each injective block before the reduction `blocks[index]` that
    only other blocks before it read: an elementwise prologue (a scale, an activation) on an
    input that a pad or a copy into blocks reads. It is then computed in that stage, once per
    input element, and never in the reduction, which keeps reading the stage's output. Returns
    the blocks left and the reduction's index."""
    main = blocks[index].name

    def only_before(block: SBlockInfo) -> bool:
        readers = [sch.get(c).name_hint for c in sch.get_consumers(block.block_rv)]
        return bool(readers) and main not in readers

    return _inline_before(sch, blocks, index, only_before)


def _inline_before(
    sch: s_tir.Schedule, blocks: list[SBlockInfo], index: int, wanted: Callable[[SBlockInfo], bool]
) -> tuple[list[SBlockInfo], int]:
    """Inlines into its consumers each injective block before `blocks[index]` that is `wanted`,
    in order, where it can be; returns the blocks left and `blocks[index]`'s index among them."""
    left = []
    for i, block in enumerate(blocks):
        if i < index and block.is_injective() and wanted(block):
            try:
                sch.compute_inline(block.block_rv)
                continue
            except REFUSALS:
                pass
        left.append(block)
    return left, left.index(blocks[index])


def named_reduction(blocks: list[SBlockInfo], name: str) -> int | None:
    """The index of the block called `name` (a legalization of passc's), if every other block of
    the kernel is injective (its pads and epilogue); else None."""
    index = next((i for i, b in enumerate(blocks) if b.name == name), None)
    if index is None or any(not b.is_injective() for i, b in enumerate(blocks) if i != index):
        return None
    return index


def epilogue_block(sch: s_tir.Schedule, main: SBlockInfo, consumers: list[SBlockInfo]) -> Any:
    """The block that writes the kernel's output after `main`: its one consumer left after
    inlining, or else a copy of `main`'s output (so `main` itself can keep its tile elsewhere)."""
    return consumers[0].block_rv if consumers else sch.cache_write(main.block_rv, 0, "global")


def tile_factors(sch: s_tir.Schedule, loop: Any, extent: int, factor: int) -> list[Any]:
    """The split (extent / factor, factor) of `loop`, as a sampled perfect tile whose decision is
    that split. Compiling, it is just the split; in a tuning record it is a choice MetaSchedule's
    tile-size mutator can change, so the search can explore around the default schedule."""
    decision = [extent // factor, factor]
    return list(sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(64, factor), decision=decision))


def vector_lanes(spec: CPUSpec, extent: int) -> int | None:
    """The vector width that divides `extent`: a full vector, else half of one (MobileNet's 24
    channels on AVX-512: 3 vectors of 8); None when neither does (or half is under 4 lanes)."""
    return next((v for v in (spec.lanes, spec.lanes // 2) if v >= 4 and extent % v == 0), None)


def divisor(extent: int, limit: int, multiple_of: int = 1) -> int:
    """The largest divisor of `extent` not above `limit`, preferring multiples of `multiple_of`."""
    divisors = [d for d in range(1, min(extent, limit) + 1) if extent % d == 0]
    aligned = [d for d in divisors if d % multiple_of == 0]
    return (aligned or divisors)[-1]


def per_load(rows: int, vectors: int) -> tuple[float, int]:
    """How a register tile of `rows` broadcast operands × `vectors` loaded vectors ranks: by
    multiply-adds per load (rows · vectors of them for rows + vectors loads a step), then by
    accumulators. Larger is better."""
    return rows * vectors / (rows + vectors), rows * vectors


def reduction_chunk(channels: int, channel_bytes: int, budget: int, spec: CPUSpec) -> int | None:
    """The most of `channels` (a divisor, at least 16) whose `channel_bytes` each fit in `budget`
    bytes, when all of them would not fit in L1; None when they fit, or no such divisor exists."""
    if channels * channel_bytes <= spec.l1_bytes:
        return None
    chunk = divisor(channels, max(1, budget // channel_bytes))
    return chunk if chunk >= 16 else None


def vectorize_flat(sch: s_tir.Schedule, block: Any, spec: CPUSpec, bands: int = 1) -> None:
    """A spatial block as one parallel loop over vectors of `lanes`.

        When the innermost extent is a multiple of `lanes` it splits into vectors and every loop
        outside fuses, so only the innermost index depends on the lane: a condition on an outer axis
        (a concat's, on channels) stays one branch per vector, not a per-lane select that loads from
        both inputs. With `bands`, an NCHW block whose rows they divide cuts its rows into that many
        bands first (`PackedConv`'s pad).

        Otherwise, and when the block reads along the row at its index divided by a constant
        (`_gathers_along_row`: an upsample's x // 2), the outer loops fuse and no vector crosses
        rows (it would need per-lane division to index). A long row (at least `_LLVM_ROW` vectors)
        is left to LLVM's loop vectorizer. A short one is where LLVM goes wrong inside a parallel
        loop: it unrolls the row and vectorizes the fused outer loop instead, with gathers and
        scatters. So a short row whose accesses all step by one element along it (`_unit_stride`:
        a split, a concat, a pad; not an upsample's x // 2) takes vectors of its largest
        power-of-two divisor up to `lanes` (8 of 40 and 56, 4 of 28, 2
    of 14), and any other is left as it was."""
    loops = sch.get_loops(block)
    extents = [int(sch.get(loop).extent) for loop in loops]
    total = math.prod(extents)
    if bands > 1 and len(loops) == 4 and extents[2] % bands == 0:
        loops = _banded(sch, loops, bands)
    row = extents[-1]
    if row % spec.lanes == 0 and not _gathers_along_row(sch.get(block)):
        chunk, inner = sch.split(loops[-1], [None, spec.lanes])
        outer = sch.fuse(*loops[:-1], chunk) if len(loops) > 1 else chunk
        sch.vectorize(inner)
    elif len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        vector = math.gcd(row, spec.lanes)
        if row < _LLVM_ROW * spec.lanes and vector > 1 and _unit_stride(sch.get(block)):
            sch.vectorize(sch.split(loops[-1], [None, vector])[1])
    else:
        outer = loops[0]
    if total >= PARALLEL_MIN:
        sch.parallel(outer)


# Rows of at least this many vectors are vectorized well by LLVM inside a parallel loop
# (`vectorize_flat`); shorter ones are not.
_LLVM_ROW = 4


def _banded(sch: s_tir.Schedule, loops: list[Any], bands: int) -> list[Any]:
    """NCHW loops n, c, y, x as band, n, c, y, x, with y cut into `bands` bands of rows."""
    n, c, y, x = loops
    band, rows = sch.split(y, [bands, None])
    sch.reorder(band, n, c, rows, x)
    return [band, n, c, rows, x]


def _gathers_along_row(block: Any) -> bool:
    """Whether the block reads some buffer's last axis at its last iterator divided by a
    constant (an upsample's x // 2): TIR's vectors would compute that index lane by lane and
    gather, where LLVM's loop vectorizer does better."""
    last = block.iter_vars[-1].var

    def divides(expr: Any) -> bool:
        if isinstance(expr, tirx.Div | tirx.FloorDiv):
            return any(v.same_as(last) for v in undefined_vars(expr.a))
        children = [getattr(expr, name, None) for name in ("a", "b", "value", "true_value", "false_value")]
        return any(divides(c) for c in children if isinstance(c, Expr))

    return any(region.region and divides(region.region[-1].min) for region in block.reads)


def _unit_stride(block: Any) -> bool:
    """Whether every buffer the block reads or writes is indexed along its last axis by the
    block's last iterator plus a constant (or not at all), and along no other axis by it."""
    last = block.iter_vars[-1].var

    def uses(expr: Any) -> bool:
        return any(v.same_as(last) for v in undefined_vars(expr))

    def shifted(expr: Any) -> bool:
        if isinstance(expr, tirx.Var):
            return expr.same_as(last)
        return isinstance(expr, tirx.Add | tirx.Sub) and shifted(expr.a) and not uses(expr.b)

    for region in list(block.reads) + list(block.writes):
        if not region.region:
            continue  # a scalar
        *outer, inner = region.region
        if any(uses(r.min) or uses(r.extent) for r in outer):
            return False
        single = isinstance(inner.extent, tirx.IntImm) and inner.extent.value == 1
        if uses(inner.min) and not (shifted(inner.min) and single):
            return False
    return True
