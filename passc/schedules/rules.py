"""The schedule rules, parameterised by the target's vector width and register count.

A rule takes one legalized PrimFunc and returns a `tvm.s_tir.Schedule`, or None when it does not
apply; `ApplyDefaultSchedule` then tries the next rule, and a function no rule takes stays as
legalized (correct, just slow). Any schedule primitive that refuses (a `ScheduleError`) makes the
whole rule return None, so a rule can only ever change how a kernel runs, never what it computes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target
from tvm.tirx.analysis import undefined_vars

from passc.schedules.int8_intrinsics import SMMLA, vnni_dot

# What TVM raises when a schedule primitive or analysis refuses a kernel (ScheduleError is a
# RuntimeError; FFI checks surface as ValueError, TypeError or IndexError).
_REFUSALS = (RuntimeError, ValueError, TypeError, IndexError)

__all__ = [
    "DEPTHWISE_BLOCKS",
    "INT8_DOT",
    "INT8_ROWS",
    "INT8_TILES",
    "PACKED_CONV",
    "PACKED_DEPTHWISE",
    "PACKED_DENSE",
    "PACKED_ROWS",
    "ROW_PARTIAL",
    "POINTWISE_CONV",
    "AxisReduction",
    "CPUSpec",
    "Contraction",
    "PackedConv",
    "PackedDense",
    "PackedDepthwise",
    "PointwiseConv",
    "RowReduction",
    "TrailingSum",
    "WideDepthwise",
    "Elementwise",
    "Int8Dot",
    "Int8Tiles",
    "conv_tile",
    "pointwise_tile",
    "cpu_spec",
    "default_rules",
    "default_schedule",
    "register_tile",
    "schedule_passes",
    "weight_chunk",
]

_AVX512 = ("avx512", "skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake", "sapphirerapids")
_AVX512 += ("graniterapids", "znver4", "znver5", "x86-64-v4")
_AVX2 = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "znver1", "znver2", "znver3")
_AVX2 += ("x86-64-v3", "avx2", "avx")


@dataclass(frozen=True)
class CPUSpec:
    """What the rules need to know about a CPU: lanes per vector (float32 lanes in `cpu_spec`; the
    rules scale them to each kernel's element size), vector registers and the L1 data cache."""

    lanes: int
    registers: int
    l1_bytes: int = 32 * 1024  # L1 data cache (32 KB: Cortex-A72, most x86; 48 KB here, 64 KB A76)


def cpu_spec(target: Target) -> CPUSpec:
    """The vector shape LLVM will generate code for, from the target's triple, mcpu and mattr.

    LLVM itself says which features the (triple, mcpu, mattr) has; if it cannot (a triple this
    LLVM was built without), the mcpu and mattr names decide. A target without an mcpu compiles for
    the architecture's baseline (SSE2 on x86-64: 4 lanes, 16 registers); NEON has 4 lanes and 32
    registers; AVX2 8 and 16; AVX-512 16 and 32.
    """
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "")).lower()
    mattr = " ".join(str(a).lower() for a in attrs.get("mattr", []))
    triple = str(attrs.get("mtriple", "")).lower()
    if triple.startswith(("aarch64", "arm")) or "+neon" in mattr or mcpu.startswith(("cortex", "neoverse")):
        return CPUSpec(lanes=4, registers=32)
    try:
        from tvm.target.codegen import llvm_cpu_has_features

        if llvm_cpu_has_features("avx512f", target):
            return CPUSpec(lanes=16, registers=32)
        if llvm_cpu_has_features("avx2", target):
            return CPUSpec(lanes=8, registers=16)
        if llvm_cpu_has_features("sse2", target):
            return CPUSpec(lanes=4, registers=16)
    except _REFUSALS:
        pass
    features = f"{mcpu} {mattr}"
    if any(name in features for name in _AVX512):
        return CPUSpec(lanes=16, registers=32)
    if any(name in features for name in _AVX2):
        return CPUSpec(lanes=8, registers=16)
    return CPUSpec(lanes=4, registers=16)


def _for_bits(spec: CPUSpec, bits: int) -> CPUSpec:
    """The spec for kernels whose output elements have `bits` bits: a vector holds 32/bits times
    as many of them as of float32 (8 fp16 lanes on NEON, so `fmla v.8h`; 2 float64 on SSE)."""
    lanes = max(1, spec.lanes * 32 // max(8, bits))  # bool: 1 bit
    return CPUSpec(lanes=lanes, registers=spec.registers, l1_bytes=spec.l1_bytes)


# ---------------------------------------------------------------------------------------------
# Analysis: blocks directly under the root, with loops bound one to one to their block iterators.


@dataclass
class _Block:
    rv: Any
    name: str
    kinds: str  # one letter per block iterator: S (spatial) or R (reduction)
    extents: list[int]

    @property
    def injective(self) -> bool:
        return "R" not in self.kinds


def _blocks(sch: s_tir.Schedule) -> list[_Block] | None:
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
        kinds, extents = "", []
        for loop_rv, iter_var, value in zip(loops, block.iter_vars, realize.iter_values, strict=True):
            loop = sch.get(loop_rv)
            if not isinstance(value, tirx.Var) or not value.same_as(loop.loop_var):
                return None
            if not isinstance(loop.extent, tirx.IntImm) or not isinstance(loop.min, tirx.IntImm):
                return None
            if iter_var.iter_type == tirx.IterVar.DataPar:
                kinds += "S"
            elif iter_var.iter_type == tirx.IterVar.CommReduce:
                kinds += "R"
            else:
                return None
            extents.append(int(loop.extent))
        blocks.append(_Block(rv, block.name_hint, kinds, extents))
    return blocks


def _inline_scalars(sch: s_tir.Schedule) -> None:
    """Inlines each block without loops (a scalar: a zero point cast to int32) into its consumers,
    where it can be, so that the rules see the kernel's loops around it."""
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        if not sch.get_loops(rv):
            with contextlib.suppress(*_REFUSALS):
                sch.compute_inline(rv)


def _tile(sch: s_tir.Schedule, loop: Any, extent: int, factor: int) -> list[Any]:
    """The split (extent / factor, factor) of `loop`, as a sampled perfect tile whose decision is
    that split. Compiling, it is just the split; in a tuning record it is a choice MetaSchedule's
    tile-size mutator can change, so the search can explore around the default schedule."""
    decision = [extent // factor, factor]
    return list(sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(64, factor), decision=decision))


def vector_lanes(spec: CPUSpec, extent: int) -> int | None:
    """The vector width that divides `extent`: a full vector, else half of one (MobileNet's 24
    channels on AVX-512: 3 vectors of 8); None when neither does (or half is under 4 lanes)."""
    return next((v for v in (spec.lanes, spec.lanes // 2) if v >= 4 and extent % v == 0), None)


def _divisor(extent: int, limit: int, multiple_of: int = 1) -> int:
    """The largest divisor of `extent` not above `limit`, preferring multiples of `multiple_of`."""
    divisors = [d for d in range(1, min(extent, limit) + 1) if extent % d == 0]
    aligned = [d for d in divisors if d % multiple_of == 0]
    return (aligned or divisors)[-1]


# The most bands of rows a packed conv's parallel loop cuts first (`row_bands`): a band per thread
# for 1, 2 or 4 threads.
ROW_BANDS = 4
_PARALLEL_MIN = 4096  # elements of work below which a thread pool launch costs more than it saves


def row_bands(height: int) -> int:
    """How many bands of rows a map of `height` rows splits into as the outermost parallel loop:
    the largest divisor of `ROW_BANDS` that divides `height` (1: no bands)."""
    return math.gcd(height, ROW_BANDS)


def _banded(sch: s_tir.Schedule, loops: list[Any], bands: int) -> list[Any]:
    """NCHW loops n, c, y, x as band, n, c, y, x, with y cut into `bands` bands of rows."""
    n, c, y, x = loops
    band, rows = sch.split(y, [bands, None])
    sch.reorder(band, n, c, rows, x)
    return [band, n, c, rows, x]


def _vectorize_flat(sch: s_tir.Schedule, block: Any, spec: CPUSpec, bands: int = 1) -> None:
    """A spatial block as one parallel loop over vectors of `lanes`. When the innermost extent is
    a multiple of `lanes` it splits into vectors and every loop outside fuses, so only the
    innermost index depends on the lane: a condition on an outer axis (a concat's, on channels)
    stays one branch per vector, where a split of all loops fused made it a per-lane select that
    loads from both inputs (two 16×256² inputs concatenated, 1 thread: 1.81 -> 1.53 ms; two
    32×64²: 324 -> 232 µs). With `bands`, an NCHW block whose rows they divide cuts its rows into
    that many bands first (`PackedConv`'s pad).

    Otherwise the outer loops fuse and no vector crosses rows (it would need per-lane division to
    index). A long row (at least `_LLVM_ROW` vectors) is left to LLVM's loop vectorizer. A short
    one is where LLVM goes wrong inside a parallel loop: it unrolls the row and vectorizes the
    fused outer loop instead, with gathers and scatters. So a short row whose accesses all step
    by one element along it (`_unit_stride`: a split, a concat, a pad; not an upsample's x // 2)
    takes vectors of its largest power-of-two divisor up to `lanes` (8 of 40 and 56, 4 of 28, 2
    of 14), and any other is left as it was. Measured on AVX-512, one thread, against the row
    left to LLVM: channel splits of 64×40² 80 -> 22 µs (17 µs unscheduled), 64×28² 36 -> 10 µs,
    192×14² 28 -> 7 µs; two 64×56² concatenated 170 -> 124 µs (100 -> 78 µs at two threads). In
    YOLOv8n-style's C2f blocks, its two largest splits 125 -> 50 and 90 -> 34 µs."""
    loops = sch.get_loops(block)
    extents = [int(sch.get(loop).extent) for loop in loops]
    total = math.prod(extents)
    if bands > 1 and len(loops) == 4 and extents[2] % bands == 0:
        loops = _banded(sch, loops, bands)
    row = extents[-1]
    if row % spec.lanes == 0:
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
    if total >= _PARALLEL_MIN:
        sch.parallel(outer)


# Rows of at least this many vectors are vectorized well by LLVM inside a parallel loop
# (`_vectorize_flat`); shorter ones are not.
_LLVM_ROW = 4


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


class _Rule(ScheduleRule):
    """A CPU rule; `schedule` may raise a schedule error, which means "does not apply"."""

    def __init__(self, spec: CPUSpec | None = None) -> None:
        self.spec = spec

    def apply(self, func: Any, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            sch = s_tir.Schedule(func)
            _inline_scalars(sch)
            blocks = _blocks(sch)
            if not blocks:
                return None
            output_bits = sch.get(blocks[-1].rv).writes[0].source.dtype.bits
            return self.schedule(sch, blocks, _for_bits(self.spec or cpu_spec(target), output_bits))
        except _REFUSALS:
            return None

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        raise NotImplementedError


class Elementwise(_Rule):
    """Kernels with no reduction (activations, adds, pads, transposes, gathers): inline the chain
    into as few blocks as possible, then each remaining block is one flat parallel, vector loop."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        if not all(b.injective for b in blocks):
            return None
        remaining = _inline_injective(sch, blocks)
        for block in remaining:
            _vectorize_flat(sch, block.rv, spec)
        return sch


def _inline_injective(sch: s_tir.Schedule, blocks: list[_Block]) -> list[_Block]:
    """Inlines every injective block that can be (into its consumer, else its producer)."""
    blocks = list(blocks)
    changed = True
    while changed:
        changed = False
        for i, block in enumerate(blocks):
            if not block.injective:
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block.rv)
                except _REFUSALS:
                    continue
                blocks.pop(i)
                changed = True
                break
            if changed:
                break
    return blocks


def register_tile(
    extents: list[int], spec: CPUSpec, *, rows: bool = True, reuse: list[bool] | None = None
) -> list[int]:
    """Tile factors for a reduction's spatial loops: the accumulators a tile keeps in registers.

    The innermost loop (the output's contiguous axis) gets one vector: `lanes` if it divides the
    extent, else its largest divisor that fills half a vector (14 of 56 on AVX-512) or up to two
    vectors (7 of 7 on SSE); four vectors when no outer loop can add rows (a matrix-vector product
    needs independent accumulators to hide FMA latency). Then up to two outer loops, the one
    allowing the most rows first (often the output channels: 7×7 feature maps divide badly), share
    the register budget of `registers - 4` (kept for the loaded vector and broadcasts), at most 16
    rows per loop. Factors divide their extents,
    so no tile needs a tail loop. Rows only come from loops in `reuse` (some operand does not
    depend on them, so its load serves every row: a conv's output channels or rows, but not a
    depthwise conv's channels); `rows=False` (pooling: nothing to reuse) keeps one vector.
    """
    reuse = reuse or [True] * len(extents)
    budget = max(1, spec.registers - 4)
    factors = [1] * len(extents)
    column = extents[-1]
    factors[-1] = _divisor(column, spec.lanes)
    if factors[-1] < spec.lanes // 2:
        factors[-1] = _divisor(column, 2 * spec.lanes)
    vectors = -(-factors[-1] // spec.lanes)  # a column of 7 on SSE takes two registers a row
    count = 1
    for _ in range(2 if rows else 0):
        left = min(16, budget // (count * vectors))
        options = [
            (_divisor(e, left), -i)
            for i, e in enumerate(extents[:-1])
            if factors[i] == 1 and e > 1 and reuse[i]
        ]
        best = max(options, default=(1, 0))
        if best[0] <= 1:
            break
        factors[-best[1]] = best[0]
        count *= best[0]
    if rows and count == 1 and column % spec.lanes == 0:
        factors[-1] = spec.lanes * _divisor(column // spec.lanes, 4)
    return factors


def _reuse(sch: s_tir.Schedule, block: Any) -> list[bool]:
    """Per block iterator: whether some operand the block reads (not its own output) is indexed
    without it, so that one load of that operand serves every value of the iterator."""
    stmt = sch.get(block)
    written = {region.source.name for region in stmt.writes}
    operands = []
    for region in stmt.reads:
        if region.source.name not in written:
            operands.append([v for r in region.region for v in undefined_vars(r.min)])
    return [any(not any(v.same_as(it.var) for v in used) for used in operands) for it in stmt.iter_vars]


def _pad_einsum(sch: s_tir.Schedule, main: _Block, spec: CPUSpec) -> bool:
    """Pads a matmul's last two spatial extents that divide badly (197 tokens of a ViT) to
    multiples of the vector and of 8 rows, with padding blocks around it, so the tile needs no
    tail. Only plain-index (einsum) blocks qualify; a conv's `y + ry` refuses, and is left alone."""
    spatial = [i for i, k in enumerate(main.kinds) if k == "S"]
    padding = [1] * len(main.kinds)
    for axis, unit in zip(spatial[-2:], (8, spec.lanes)[-len(spatial[-2:]) :], strict=True):
        extent = main.extents[axis]
        if extent > unit and _divisor(extent, unit) < unit // 2:
            padding[axis] = unit
    if padding == [1] * len(main.kinds):
        return False
    try:
        sch.pad_einsum(main.rv, padding)
    except _REFUSALS:
        return False
    return True


class Contraction(_Rule):
    """One reduction block (conv2d of any group count, matmul, batch matmul, pooling, mean) with
    injective producers (pads) and consumers (bias, residual add, activations).

    The reduction's spatial loops S and reduction loops R are tiled as
        parallel(fuse(S outer)) · R · unroll(rows) · vector(column)
    with the factors of `register_tile`: each step of R loads one vector of the input, broadcasts
    one scalar per row (a weight, for a conv with output-channel rows) and does one fused
    multiply-add per accumulator, the accumulator tile staying in registers for the whole
    reduction; small inner reduction loops (3×3 taps) are unrolled.
    The consumers are inlined into one epilogue, computed per tile while it is still hot.
    Producers stay separate stages (a pad is cheap next to the conv it feeds).
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        reductions = [i for i, b in enumerate(blocks) if not b.injective]
        if len(reductions) != 1:
            return None
        index = reductions[0]
        main = blocks[index]
        if "S" not in main.kinds or main.kinds.index("R") < main.kinds.rindex("S"):
            return None  # spatial loops first, then reductions: the form legalize emits
        operands = {region.source.name for region in sch.get(main.rv).reads}
        contraction = len(operands - {region.source.name for region in sch.get(main.rv).writes}) >= 2
        if contraction and _pad_einsum(sch, main, spec):
            blocks = _blocks(sch)
            if blocks is None:
                return None
            index = next(i for i, b in enumerate(blocks) if not b.injective)
            main = blocks[index]
        consumers = _inline_injective(sch, blocks[index + 1 :])
        producers = blocks[:index]
        if len(consumers) > 1:
            return None

        loops = sch.get_loops(main.rv)
        spatial = [(loop, e) for loop, k, e in zip(loops, main.kinds, main.extents, strict=True) if k == "S"]
        reduce_loops = [loop for loop, k in zip(loops, main.kinds, strict=True) if k == "R"]
        factors = register_tile([e for _, e in spatial], spec, rows=contraction, reuse=_reuse(sch, main.rv))
        outer: list[Any] = []
        inner: list[Any] = []
        for (loop, extent), factor in zip(spatial, factors, strict=True):
            if factor == 1:
                outer.append(loop)
            elif factor == extent:
                inner.append(loop)
            else:
                o, n = sch.split(loop, _tile(sch, loop, extent, factor))
                outer.append(o)
                inner.append(n)
        if not outer:
            outer.append(sch.add_unit_loop(inner[0]))
        sch.reorder(*outer, *reduce_loops, *inner)
        tile = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        work = math.prod(main.extents[: main.kinds.index("R")])
        if work >= _PARALLEL_MIN // 4 and int(sch.get(tile).extent) > 1:
            sch.parallel(tile)

        epilogue = _epilogue(sch, main, consumers)
        sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
        epilogue_loops = sch.get_loops(epilogue)[1:]
        if epilogue_loops and int(sch.get(epilogue_loops[-1]).extent) > 1:
            sch.vectorize(epilogue_loops[-1])

        if factors[-1] > 1:
            sch.vectorize(inner[-1])
        for loop in inner[:-1] if factors[-1] > 1 else inner:
            sch.unroll(loop)
        init = sch.decompose_reduction(main.rv, reduce_loops[0])
        init_loops = sch.get_loops(init)
        if len(init_loops) > 1 and factors[-1] > 1:
            sch.vectorize(init_loops[-1])
        # Unrolls the filter taps (3×3 × rows of a tile), not the channel loop around them.
        sch.annotate(reduce_loops[0], "pragma_auto_unroll_max_step", 128)
        sch.annotate(reduce_loops[0], "pragma_unroll_explicit", 1)

        for block in producers:
            if _is_copy(sch, block.rv):
                sch.compute_inline(block.rv)  # a zero-width pad: a whole copy of the input, for nothing
            else:
                _vectorize_flat(sch, block.rv, spec)
        return sch


class TrailingSum(_Rule):
    """A sum (or max) of one tensor over its trailing, contiguous axes: a global average pool's
    mean over H×W (NCHW), with its epilogue (the division).

    Summed in place, each output is one chain of dependent scalar adds (4 cycles each), and no
    loop is vectorized: MobileNetV3's squeeze-excite pool over 16×56² took 39 µs. Here the
    reduced axes fuse into one loop of length L, split by P lanes (a vector, or half of one, that
    divides L at least twice), and `rfactor` gives P partials:

        part[s, j] = ⊕_{c < L/P} x[s, c·P + j]     (one vector per s, j < P)
        y[s]       = ⊕_{j < P} part[s, j]

    The order of the additions changes, not what is added (rounding only). The loops over s run
    in parallel when there is enough work; each s finishes (its P partials, then the epilogue)
    before the next. Hot, 1 thread, AVX-512: 16×56² 42 -> 17 µs, 72×28² 41 -> 15. L with no such P
    (7×7 = 49, 14×14 = 196 with 4-lane partials no faster) is left to `Contraction`. With no s (a
    max or min over a whole tensor, as DynamicQuantizeLinear takes for its scale) there is one row
    of partials, then the one output: BERT's 128 × 1024 activations, 150 -> 12 µs in the model.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        reductions = [i for i, b in enumerate(blocks) if not b.injective]
        if len(reductions) != 1 or reductions[0] != 0:
            return None  # producers (pads) before it: not a plain pool
        main = blocks[0]
        count = main.kinds.count("R")
        if main.kinds != "S" * (len(main.kinds) - count) + "R" * count:
            return None
        stmt = sch.get(main.rv)
        written = {region.source.name for region in stmt.writes}
        inputs = [region for region in stmt.reads if region.source.name not in written]
        reduced = [it.var for it in stmt.iter_vars[-count:]]
        if len(inputs) != 1 or not _indexed_last_by(inputs[0], reduced, main.extents[-count:]):
            return None
        length = math.prod(main.extents[-count:])
        lanes = next(
            (p for p in (spec.lanes, spec.lanes // 2) if p >= 4 and length % p == 0 and length >= 2 * p),
            None,
        )
        if lanes is None:
            return None
        consumers = _inline_injective(sch, blocks[1:])
        if len(consumers) > 1:
            return None
        loops = sch.get_loops(main.rv)
        spatial, reduce_loops = loops[: len(loops) - count], loops[len(loops) - count :]
        fused = sch.fuse(*reduce_loops) if count > 1 else reduce_loops[0]
        _, lane = sch.split(fused, [None, lanes])
        partial = sch.rfactor(lane, factor_axis=len(spatial))
        *rows, chunk, lane = sch.get_loops(partial)  # rfactor keeps the chunks outside the lanes
        sch.vectorize(lane)
        if rows:  # else one output (a tensor's max, for its quantization): the partials, then it
            outer = sch.fuse(*rows) if len(rows) > 1 else rows[0]
            sch.reverse_compute_at(main.rv, outer)
            if consumers:
                sch.reverse_compute_at(consumers[0].rv, outer)
            if math.prod(main.extents) >= _PARALLEL_MIN and int(sch.get(outer).extent) > 1:
                sch.parallel(outer)
        init = sch.decompose_reduction(partial, chunk)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch


def _indexed_last_by(region: Any, variables: list[Any], extents: list[int]) -> bool:
    """Whether the buffer region's last indices are exactly `variables`, in order, over the whole
    of their axes (`extents`): walking them walks the buffer's trailing axes contiguously."""
    ranges = list(region.region)
    shape = [int(d) for d in region.source.shape]
    if len(ranges) < len(variables) or shape[len(shape) - len(variables) :] != extents:
        return False
    return all(
        isinstance(r.min, tirx.Var) and r.min.same_as(var)
        for r, var in zip(ranges[len(ranges) - len(variables) :], variables, strict=True)
    )


def _is_copy(sch: s_tir.Schedule, block: Any) -> bool:
    """Whether a block reads one buffer of its output's shape (a pad of zero width is one)."""
    stmt = sch.get(block)
    shapes = {tuple(int(d) for d in region.source.shape) for region in stmt.reads}
    return len(stmt.reads) == 1 and shapes == {tuple(int(d) for d in stmt.writes[0].source.shape)}


def _named_reduction(blocks: list[_Block], name: str) -> int | None:
    """The index of the block called `name` (a legalization of passc's), if every other block of
    the kernel is injective (its pads and epilogue); else None."""
    index = next((i for i, b in enumerate(blocks) if b.name == name), None)
    if index is None or any(not b.injective for i, b in enumerate(blocks) if i != index):
        return None
    return index


def _epilogue(sch: s_tir.Schedule, main: _Block, consumers: list[_Block]) -> Any:
    """The block that writes the kernel's output after `main`: its one consumer left after
    inlining, or else a copy of `main`'s output (so `main` itself can keep its tile elsewhere)."""
    return consumers[0].rv if consumers else sch.cache_write(main.rv, 0, "global")


# The reduction block of `passc.schedules.packed_conv`'s conv2d, which `PackedConv` schedules.
PACKED_CONV = "conv2d_nchw_packed"
# The reduction block of its 1×1 conv at stride 1 (`_pointwise_conv2d`), which `PointwiseConv` takes.
POINTWISE_CONV = "conv2d_nchw_pointwise"
# The reduction block of `passc.schedules.packed_dense` (row tiles times packed panels;
# `PackedDense`) and the block that packs its rows into tiles.
PACKED_DENSE = "dense_packed"
PACKED_ROWS = "dense_rows_packed"
# The prefix of the partial-reduction blocks of `passc.schedules.row_reduction` (`RowReduction`).
ROW_PARTIAL = "row_partial"
# The reduction block of `passc.schedules.int8_matmul` (int8 products summed in int32; `Int8Dot`).
INT8_DOT = "matmul_int8"
# The register tiles of `passc.schedules.int8_matmul`'s int8 matmul by `vpdpbusd` or `smmla`
# (`Int8Tiles`), and its rows packed for them.
INT8_TILES = "matmul_int8_tiles"
INT8_ROWS = "matmul_int8_rows"
# The reduction block of `passc.schedules.packed_depthwise` (`PackedDepthwise`) and the block that
# copies its input into channel blocks.
PACKED_DEPTHWISE = "depthwise_conv2d_nchw_packed"
DEPTHWISE_BLOCKS = "depthwise_input_blocks"


def _per_load(rows: int, vectors: int) -> tuple[float, int]:
    """How a register tile of `rows` broadcast operands × `vectors` loaded vectors ranks: by
    multiply-adds per load (rows · vectors of them for rows + vectors loads a step), then by
    accumulators. Larger is better; `conv_tile` and `pointwise_tile` choose by it."""
    return rows * vectors / (rows + vectors), rows * vectors


# Input channels from which a 1×1 conv's whole row takes two vectors (`conv_tile`).
_LONG_REDUCTION = 128


def conv_tile(
    out_width: int,
    vector_blocks: int,
    spec: CPUSpec,
    kernel_width: int = 1,
    *,
    whole_rows: bool = False,
    reduction: int = 0,
) -> tuple[int, int]:
    """(rows, vectors) of a packed conv's accumulator tile: `rows` output columns × `vectors`
    vectors of output channels, at most (registers - 4) / 2 accumulators (14 with 32 registers;
    the rest hold the weight vectors and broadcasts). Rows divide the output width, vectors the
    channel blocks: no tail loops.

    With a kernel 2 to 4 wide (3×3), rows come first (`vectors` fills what they leave): adjacent columns share
    input taps, so wide rows need fewer loads than the count below says (on AVX-512, 7 × 2
    against 14 × 1: ResNet's 3×3 convs at 56², 1.18× slower; YOLO's at 80², 1.45×; a 3×3
    stride-2 256 → 512 to 7², 1.22×). A 1×1 conv shares nothing: each step loads `vectors` weight
    vectors and broadcasts `rows` inputs for rows × vectors multiply-adds, and the tile with the
    most per load wins, then the one with the most accumulators (7 × 2 against 14 × 1: 576 → 96
    channels at 14², 249 → 206 µs; a stride-2 1×1 conv 64 → 128 at 56², 792 → 709 µs). Kernels 5
    or more wide rank the same way as 1×1: ResNet's 7×7 stride-2 stem 1741 → 1387 µs, a 5×5
    stride-2 conv 32 → 64 to 56² 2185 → 1707, a 5×5 at stride 1 1751 → 1579 (7×7 at stride 1:
    2917 against 3019, even).

    With `whole_rows` (`PackedConv`: a conv with more weights than input, whose channel blocks
    run outermost), a 1×1 conv whose row fills more than half the accumulators (8 to 14 columns
    with 32 registers) takes the whole row and one vector. MobileNetV2's expansions at 14², in
    the model: 96 → 576 channels 895 → 760 µs and 64 → 384 channels 575 → 508 µs at one thread,
    542 → 448 and 390 → 312 µs at two. A 1×1 conv with more input than weights keeps the ranking
    (576 → 96 channels at 14²: 191 µs as 7 × 2, 279 µs as 14 × 1), and so does a row of 7 (160 →
    960 channels at 7² ran the same as 7 × 1 and 7 × 2).

    A 1×1 conv whose row fills more than half those accumulators and whose `reduction` (input
    channels) is at least `_LONG_REDUCTION` takes the whole row and two vectors instead, up to
    registers - 4 accumulators (28 on AVX-512: all but the two weight vectors and two spare), with
    or without `whole_rows`. On AVX-512, 14 × 2 against the tile above, alone: at 14², 256 → 256
    channels 184 → 168 µs, 128 → 256 99 → 94, 576 → 96 162 → 149, 384 → 96 103 → 96, 384 → 64 73 →
    69; with fewer input channels it does not pay (96 → 576 172 → 170, 64 → 384 87 → 91). Rows of
    7 (7²) keep 2 vectors: 7 × 4 ran 1-4% slower or the same (512 → 512, 960 → 320, 160 → 960)."""
    budget = max(1, (spec.registers - 4) // 2)
    if kernel_width == 1 and budget // 2 < out_width <= budget:
        if reduction >= _LONG_REDUCTION and 2 * out_width <= spec.registers - 4 and vector_blocks % 2 == 0:
            return out_width, 2
        if whole_rows:
            return out_width, 1
    if 1 < kernel_width < 5:
        rows = _divisor(out_width, budget)
        vectors = max(k for k in (1, 2, 4) if k == 1 or (k * rows <= budget and vector_blocks % k == 0))
        return rows, vectors
    options = [
        (*_per_load(rows, vectors), rows, vectors)
        for rows in range(1, min(out_width, budget) + 1)
        if out_width % rows == 0
        for vectors in (1, 2, 4)
        if vector_blocks % vectors == 0 and rows * vectors <= budget
    ]
    return max(options)[2:]


def weight_chunk(channels: int, channel_bytes: int, spec: CPUSpec) -> int | None:
    """How many input channels a 1×1 packed conv whose channel blocks run outermost reduces over
    before it moves to the next row, or None for all of them.

    A tile's weights are `channel_bytes` per input channel (its vectors of output channels). The
    tiles of one channel block, one per row of the map, read the same weights: when they fit in
    the L1 data cache, they stay there from one row to the next. When they do not (a 7² map with
    hundreds of input channels), the reduction is cut into chunks of channels whose weights take
    at most a quarter of L1, and each chunk runs over every row before the next: the rows'
    accumulators go to memory and back between chunks, and the weights come from L1. On
    AVX-512, in chunks of 64 channels against whole: MobileNetV2's 960 → 320 channels at 7²,
    258 → 191 µs (weights 120 KB a tile), 320 → 1280 293 → 268 µs (40 KB), 576 → 160 71 → 67 µs
    (72 KB). Under L1 it does not pay: 160 → 960 (20 KB) 122 → 119 µs alone but slower in the
    model (3 convs, 421 → 458 µs), and 256 → 256 at 14² (16 KB) 179 → 195 µs. Chunks of 32 or 160
    channels instead of 64: 320 → 1280 at 278 and 275 µs. Chunks under 16 channels are not worth
    the accumulators' round trips (None)."""
    return _reduction_chunk(channels, channel_bytes, spec.l1_bytes // 4, spec)


def _reduction_chunk(channels: int, channel_bytes: int, budget: int, spec: CPUSpec) -> int | None:
    """The most of `channels` (a divisor, at least 16) whose `channel_bytes` each fit in `budget`
    bytes, when all of them would not fit in L1; None when they fit, or no such divisor exists."""
    if channels * channel_bytes <= spec.l1_bytes:
        return None
    chunk = _divisor(channels, max(1, budget // channel_bytes))
    return chunk if chunk >= 16 else None


class PackedConv(_Rule):
    """The packed conv2d (`passc.schedules.packed_conv`) with its pad and its epilogue.

    Loops n, o, y, x, i, kh, kw are tiled as
        parallel(n · o/(vectors·V) · y · x/rows) · i · kh · kw · unroll(rows) · unroll(vectors) · vector(V)
    so the rows × vectors accumulators stay in registers for the whole reduction: each step loads
    `vectors` weight vectors and broadcasts `rows` input scalars (any stride: no gathers). A 1×1
    conv whose tile's weights would not stay in L1 from one row to the next (`weight_chunk`)
    runs the reduction in chunks of input channels instead, each over all the rows. The
    accumulator tile is laid out channels-last, so a vector of it is contiguous; the epilogue
    (bias, activation, residual add) writes it back to NCHW per tile, while it is still hot.

    When the input is larger than the weights, the parallel loop cuts the rows into `row_bands`
    bands first, and so does the pad's copy when the bands divide its rows: each thread takes a
    band of rows of every output channel rather than every row of some channels, so it reads the
    rows that it wrote in the kernel before (in its core's cache) and writes those that it reads
    in the next. Two threads, ResNet-18, in the model: its 64 → 64 3×3 convs at 56², 3.3 → 2.8 and
    2.8 → 2.5 ms; the whole model 7–13% faster (MobileNetV2 6–10%, U-Net 9%), one thread within
    ±2%. With more weights than input (ResNet's 256 and 512 channels at 14² and 7²), each band
    would read all the weights again (256 → 256 at 14², two threads: 2.4 → 2.8 ms), so those convs
    keep the channel blocks outermost.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        index = _named_reduction(blocks, PACKED_CONV)
        if index is None:
            return None
        main = blocks[index]
        if main.kinds != "SSSSRRR":
            return None
        consumers = _inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        block = sch.get(main.rv)
        output = block.writes[0].source
        weight = next(r.source for r in block.reads if len(r.region) == 5)
        data = next(r.source for r in block.reads if len(r.region) == 4 and not r.source.same_as(output))
        lanes = int(weight.shape[-1])
        n, o, y, x, i, kh, kw = sch.get_loops(main.rv)
        channel_blocks = main.extents[1] // lanes
        blocks_o, lane = sch.split(o, [None, lanes])
        smaller = math.prod(int(d) for d in weight.shape) < math.prod(int(d) for d in data.shape)
        width, kernel_width = main.extents[3], main.extents[6]
        rows, vectors = conv_tile(
            width, channel_blocks, spec, kernel_width, whole_rows=not smaller, reduction=main.extents[4]
        )
        outer_o, vector = sch.split(blocks_o, _tile(sch, blocks_o, channel_blocks, vectors))
        outer_x, row = sch.split(x, _tile(sch, x, width, rows))
        bands = row_bands(main.extents[2]) if smaller else 1
        band, y = sch.split(y, [bands, None])
        channel_bytes = vectors * lanes * weight.dtype.bits // 8
        one_by_one = kernel_width == 1 and main.extents[5] == 1
        chunk = None if smaller or not one_by_one else weight_chunk(main.extents[4], channel_bytes, spec)
        if chunk is None:
            outer, inner = [band, n, outer_o, y, outer_x], [i]
        else:
            chunks, i = sch.split(i, _tile(sch, i, main.extents[4], chunk))
            outer, inner = [band, n, outer_o], [chunks, y, outer_x, i]
        sch.reorder(*outer, *inner, kh, kw, row, vector, lane)
        tile = sch.fuse(*outer)
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)

        epilogue = _epilogue(sch, main, consumers)
        sch.transform_layout(main.rv, ("write", 0), lambda n, c, h, w: (n, h, w, c))
        sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
        sch.vectorize(lane)
        sch.unroll(vector)
        sch.unroll(row)
        init = sch.decompose_reduction(main.rv, inner[0])
        sch.vectorize(sch.get_loops(init)[-1])
        sch.annotate(i, "pragma_auto_unroll_max_step", 128)
        sch.annotate(i, "pragma_unroll_explicit", 1)
        for block in blocks[:index]:
            _vectorize_flat(sch, block.rv, spec, bands)
        return sch


class PackedDepthwise(_Rule):
    """The channel-blocked depthwise conv (`passc.schedules.packed_depthwise`) with its epilogue.

    Loops n, c, y, x, kh, kw are tiled as
        parallel(n · c/V · y · x/columns) · kh · kw · unroll(columns) · vector(V)
    so a row of `columns` output columns (at most 14, the largest divisor of the width) stays in
    registers as channel vectors for the whole reduction: each tap loads one weight vector and one
    input vector per column. The tile is laid out channel-blocked, so its vectors are contiguous,
    and the epilogue (bias, activation) writes it back to NCHW per tile. The input's copy into
    channel blocks runs first, over all of it, as one parallel loop with the channels vectorized.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        index = _named_reduction(blocks, PACKED_DEPTHWISE)
        if index is None or blocks[index].kinds != "SSSSRR":
            return None
        if [b.name for b in blocks[:index]] != [DEPTHWISE_BLOCKS]:
            return None
        main, copy = blocks[index], blocks[0]
        consumers = _inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        lanes = copy.extents[-1]
        n, c, y, x, kh, kw = sch.get_loops(main.rv)
        block, lane = sch.split(c, [None, lanes])
        columns = _divisor(main.extents[3], min(14, spec.registers - 2))
        outer_x, column = sch.split(x, _tile(sch, x, main.extents[3], columns))
        sch.reorder(n, block, y, outer_x, kh, kw, column, lane)
        tile = sch.fuse(n, block, y, outer_x)
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)

        epilogue = _epilogue(sch, main, consumers)
        sch.transform_layout(main.rv, ("write", 0), lambda n, c, h, w: (n, c // lanes, h, w, c % lanes))
        sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
        sch.vectorize(lane)
        sch.unroll(column)
        init = sch.decompose_reduction(main.rv, kh)
        sch.vectorize(sch.get_loops(init)[-1])

        *rows, _, copy_lane = sch.get_loops(copy.rv)
        sch.parallel(sch.fuse(*rows))
        sch.vectorize(copy_lane)
        return sch


def pointwise_tile(height: int, width: int, out_channels: int, spec: CPUSpec) -> tuple[int, int, int] | None:
    """(lanes, vectors, rows) of a pointwise conv's accumulator tile: `vectors` vectors of `lanes`
    pixels of one plane × `rows` output channels, or None when no vector size divides the plane.

    A tile spans a divisor of an image row or a whole number of rows (56 columns on AVX-512: two
    rows, 7 vectors), so its pixels are a box of the plane that the epilogue can take. Its
    accumulators, plus the `vectors` input vectors each step loads, fill at most `registers - 1`
    registers (the weight is a broadcast operand of the multiply-add). The tile with the most
    multiply-adds per load, rows · vectors / (rows + vectors), wins, then the one with the most
    accumulators: on AVX-512, 16→96 channels at 112² runs 1.8× faster as 3 rows × 7 vectors
    (2.1 per load) than as 24 rows × 1 vector (0.96 per load), which saturates the load ports.
    """
    options = []
    for lanes in (spec.lanes, spec.lanes // 2):
        if lanes < 4 or (height * width) % lanes:
            continue
        for vectors in range(1, 9):
            pixels = lanes * vectors
            if (height * width) % pixels or (width % pixels and pixels % width):
                continue
            most_rows = (spec.registers - 1 - vectors) // vectors
            if most_rows < 1:  # no room for one row of accumulators (AVX2's 16 registers)
                continue
            rows = _divisor(out_channels, most_rows)
            options.append((*_per_load(rows, vectors), lanes, vectors, rows))
        if options:
            break
    return max(options)[2:] if options else None


# An expanding pointwise conv whose output is larger than this writes a few output planes at a
# time: MobileNetV2's 16→96 channels at 112² (4.8 MB) took 1.7 ms writing all 96 planes a row at a
# time, 0.9 ms a plane at a time; convs whose input is the larger re-read it less pixel-major.
_STREAMED_OUTPUT = 1 << 20


class PointwiseConv(_Rule):
    """A 1×1 conv at stride 1 (`passc.schedules.packed_conv._pointwise_conv2d`) with its epilogue:
    a matrix product of the weight T[I, O] and the input's pixels X[i, y·W + x], vectorized along
    the pixels, so loads and the epilogue's stores are contiguous in NCHW (`PackedConv`'s
    channels-last tile would transpose in its epilogue, which costs more than a short 1×1
    reduction). Loops n, o, (y, x) are tiled as
        parallel(n · pixels/(vectors·lanes) · o/rows) · i · unroll(rows) · unroll(vectors) · vector(lanes)
    with `pointwise_tile`'s factors: each step of i loads `vectors` input vectors and broadcasts
    `rows` weights, one fused multiply-add per accumulator. An expanding conv with a large output
    runs o/rows outside the pixels instead (`_STREAMED_OUTPUT`).

    Every output channel's tile reads the same pixels of every input channel. When those would
    not stay in L1, the reduction runs in chunks of input channels whose pixels fill at most L1,
    each for every output channel before the next (`parallel(n · pixels/(vectors·lanes) · 2) · i/chunk
    · o/(2·rows) · chunk · ...`: halves of the output channels in parallel, so that two threads
    balance over a plane of 7 tiles). On AVX-512, one thread, alone: 128 → 128 channels at 28²
    (57 KB of pixels a tile) 278 → 226 µs, 192 → 32 at 28² 107 → 92, 144 → 24 at 28² 47 → 41 and
    at 56² 346 → 322; in the model, PP-LCNet's 128 → 128 at 28² 237 → 198 µs (two threads, 144 →
    125), PP-LCNet 1.5% faster, MobileNetV2 1-2% at one thread, YOLOv8n-style within noise.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        index = _named_reduction(blocks, POINTWISE_CONV)
        if index is None:
            return None
        main = blocks[index]
        _, out_channels, height, width, _ = main.extents
        tile = pointwise_tile(height, width, out_channels, spec)
        if main.kinds != "SSSSR" or tile is None:
            return None
        lanes, vectors, rows = tile
        consumers = _inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        n, o, y, x, i = sch.get_loops(main.rv)
        pixels = height * width
        outer_p, vector, lane = sch.split(sch.fuse(y, x), [pixels // (vectors * lanes), vectors, lanes])
        outer_o, row = sch.split(o, _tile(sch, o, out_channels, rows))
        in_channels = main.extents[4]
        element_bytes = sch.get(main.rv).writes[0].source.dtype.bits // 8
        streamed = out_channels > in_channels and out_channels * pixels * element_bytes > _STREAMED_OUTPUT
        tile_bytes = vectors * lanes * element_bytes  # of one input channel
        chunk = None if streamed else _reduction_chunk(in_channels, tile_bytes, spec.l1_bytes, spec)
        if streamed:
            outer, inner = [n, outer_o, outer_p], [i]  # a few output planes at a time, in order
        elif chunk is None:
            outer, inner = [n, outer_p, outer_o], [i]  # a few pixels at a time, for every channel
        else:
            # A few pixels of a chunk of input channels at a time, for every output channel (half
            # of them per parallel iteration, so that threads balance over few pixel tiles).
            chunks, i = sch.split(i, _tile(sch, i, in_channels, chunk))
            half, outer_o = sch.split(outer_o, [2 if out_channels // rows % 2 == 0 else 1, None])
            outer, inner = [n, outer_p, half], [chunks, outer_o, i]
        sch.reorder(*outer, *inner, row, vector, lane)
        tile_loop = sch.fuse(*outer)
        if int(sch.get(tile_loop).extent) > 1:
            sch.parallel(tile_loop)

        epilogue = _epilogue(sch, main, consumers)
        sch.reverse_compute_at(epilogue, tile_loop, preserve_unit_loops=True)
        *_, epilogue_y, epilogue_x = sch.get_loops(epilogue)
        _, epilogue_lane = sch.split(sch.fuse(epilogue_y, epilogue_x), [None, lanes])
        sch.vectorize(epilogue_lane)
        sch.vectorize(lane)
        sch.unroll(vector)
        sch.unroll(row)
        init = sch.decompose_reduction(main.rv, inner[0])
        sch.vectorize(sch.get_loops(init)[-1])
        for block in blocks[:index]:
            _vectorize_flat(sch, block.rv, spec)
        return sch


class RowReduction(_Rule):
    """A softmax or layer norm over the last axis with its reductions in vector-wide partials
    (`passc.schedules.row_reduction`): one parallel loop over the rows, under which every block
    computes its part of the row. A partial reduction runs its chunk loop outside its PARTIALS
    lanes, which are one vector (a running max or sum per lane); the other blocks' loops along
    the row are left to LLVM's loop vectorizer, which takes any row length (ViT's 197 keys).
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        last = blocks[-1]
        partials = [b for b in blocks if b.name.startswith(ROW_PARTIAL)]
        if not partials or not last.injective:
            return None
        rows = last.extents[:-1]
        if any(b.extents[: len(rows)] != rows for b in blocks):
            return None
        loops = sch.get_loops(last.rv)[: len(rows)]
        tile = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block.rv, tile, preserve_unit_loops=True)
        for block in partials:
            *_, lane, chunk = sch.get_loops(block.rv)
            sch.reorder(chunk, lane)
            sch.vectorize(lane)
            init = sch.decompose_reduction(block.rv, chunk)
            sch.vectorize(sch.get_loops(init)[-1])
        return sch


class PackedDense(_Rule):
    """A matrix product with packed operands (`passc.schedules.packed_dense`) and its epilogue:
    loops m, n, k of Y'[m, n] tiled as
        parallel(n / C · m / R) · k · unroll(R) · unroll(C / lanes) · vector(lanes)
    with R and C the row tile's and the panel's widths (read off the packed operands' shapes):
    a panel stays in cache while every row tile passes over it, and each step of k loads C / lanes
    vectors of the panel and broadcasts R scalars of the row tile. The epilogue (unpadding, bias,
    activation) runs per tile; the row packing runs first, over all rows.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        index = _named_reduction(blocks, PACKED_DENSE)
        if index is None or blocks[index].kinds != "SSR":
            return None
        main = blocks[index]
        packed = [r.source for r in sch.get(main.rv).reads if len(r.source.shape) == 3]
        producers = blocks[:index]
        tiled = [b for b in producers if b.name == PACKED_ROWS]
        rows = tiled[0].extents[-1] if tiled else 1
        columns = int(packed[-1].shape[-1])
        if columns % spec.lanes or main.extents[0] % rows or main.extents[1] % columns:
            return None
        consumers = _inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        m, n, k = sch.get_loops(main.rv)
        outer_m, row = sch.split(m, _tile(sch, m, main.extents[0], rows))
        outer_n, column = sch.split(n, _tile(sch, n, main.extents[1], columns))
        sch.reorder(outer_n, outer_m, k, row, column)
        tile = sch.fuse(outer_n, outer_m)
        if main.extents[0] * main.extents[1] >= _PARALLEL_MIN // 4 and int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        epilogue = _epilogue(sch, main, consumers)
        rows_shape = [int(d) for d in sch.get(epilogue).writes[0].source.shape[:-1]]
        if sum(d > 1 for d in rows_shape) <= 1:
            sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(epilogue)[-1])
        else:  # rows along several axes: a tile's rows are no box of the output, so one pass after
            _vectorize_flat(sch, epilogue, spec)
        vector, lane = sch.split(column, [columns // spec.lanes, spec.lanes])
        sch.unroll(row)
        sch.unroll(vector)
        sch.vectorize(lane)
        init = sch.decompose_reduction(main.rv, k)
        sch.vectorize(sch.get_loops(init)[-1])
        for block in producers:
            _vectorize_flat(sch, block.rv, spec)
        return sch


class AxisReduction(_Rule):
    """Reductions over one axis that is not the innermost (softmax over YOLO's 16 box bins of a
    [1, 16, 4, 2100] tensor), with the injective blocks around them: every block works on whole
    rows of the innermost axis, which it reads contiguously, and the reduced axis is a loop.

    Loops are parallel(the other axes) · reduced axis · row, every block computed under the one
    parallel loop, so a tile's max, exponentials and sum stay in cache. A reduction's loop runs
    outside its row (a running max or sum per column). The row loop is left to LLVM's loop
    vectorizer, which takes any row length (2100 is no multiple of 16 lanes). Measured on the
    YOLO softmax (1 thread, AVX-512): 106 µs; TVM's unscheduled loops take 131 µs, and dlight's
    `Reduction`, which took it before, takes 2.4 ms.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        blocks = _inline_single_use(sch, blocks)
        reductions = [b for b in blocks if not b.injective]
        last = blocks[-1]
        axis = _reduced_axis(reductions, last) if last.injective else None
        if axis is None or axis == len(last.extents) - 1:
            return None
        if any(b.extents != last.extents for b in blocks if b.injective):
            return None
        loops = sch.get_loops(last.rv)
        others = [loop for i, loop in enumerate(loops[:-1]) if i != axis]
        sch.reorder(*others, loops[axis], loops[-1])
        tile = sch.fuse(*others) if len(others) > 1 else others[0]
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block.rv, tile, preserve_unit_loops=True)
        for block in reductions:  # the reduction loop outside the row: a running max or sum per column
            *_, row, reduce = sch.get_loops(block.rv)
            sch.reorder(reduce, row)
        return sch


def _inline_single_use(sch: s_tir.Schedule, blocks: list[_Block]) -> list[_Block]:
    """Inlines each injective block, but the last, that has one consumer (an exponential that
    both a sum and a division read stays a block, computed once)."""
    kept = []
    for block in blocks[:-1]:
        if block.injective and len(sch.get_consumers(block.rv)) == 1:
            try:
                sch.compute_inline(block.rv)
                continue
            except _REFUSALS:
                pass
        kept.append(block)
    return kept + blocks[-1:]


def _reduced_axis(reductions: list[_Block], last: _Block) -> int | None:
    """The one axis that every reduction keeps with extent 1 and the last block spans, if each
    reduction is the last block's loops (that axis reduced) plus one reduction loop."""
    rank = len(last.extents)
    axes = set()
    for block in reductions:
        if block.kinds != "S" * rank + "R":
            return None
        differ = [i for i in range(rank) if block.extents[i] != last.extents[i]]
        if len(differ) != 1 or block.extents[differ[0]] != 1:
            return None
        if block.extents[rank] != last.extents[differ[0]]:
            return None
        axes.add(differ[0])
    return axes.pop() if len(axes) == 1 else None


class Int8Dot(_Rule):
    """An int8 matmul (`passc.schedules.int8_matmul`) with its epilogue: one parallel loop over the
    outputs, each a dot product over k left innermost and unvectorized in TIR. LLVM's loop
    vectorizer then sums the int8 products 16 bytes at a time (`sdot` with Armv8.2's dotprod,
    `vpmaddwd` on x86); TIR's vectors would run along the outputs and widen every byte to int32.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        index = _named_reduction(blocks, INT8_DOT)
        if index is None:
            return None
        main = blocks[index]
        if main.kinds != "S" * (len(main.kinds) - 1) + "R":
            return None
        consumers = _inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        *spatial, k = sch.get_loops(main.rv)
        outputs = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        if math.prod(main.extents[:-1]) * main.extents[-1] >= _PARALLEL_MIN:
            sch.parallel(outputs)
        epilogue = _epilogue(sch, main, consumers)
        sch.reverse_compute_at(epilogue, outputs)
        sch.decompose_reduction(main.rv, k)
        return sch


class Int8Tiles(_Rule):
    """An int8 matmul in register tiles of `vpdpbusd` or `smmla` (`passc.schedules.int8_matmul`)
    with its epilogue. Loops t, u (row tile, column panel), then the tile's, then k:

        parallel(u · t) · k / g · unroll(tile) · instruction(the 16 or 8 lanes × 4 of `vpdpbusd`;
                                                          the 2 × 2 × 8 of `smmla`)

    with g the instruction's group along k (4 or 8). A panel stays in cache while every row tile
    passes over it; each step of k / g runs one instruction per accumulator of the tile. The
    epilogue (unpacking the tiles, the VNNI offset, then any dequantizing) runs per tile where its
    rows are one range of the output, else in one pass after; the rows are packed first, once.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        index = _named_reduction(blocks, INT8_TILES)
        if index is None:
            return None
        main = blocks[index]
        if main.kinds == "SSSSSR":  # R × C / L vectors of L lanes
            intrinsic, group = vnni_dot(main.extents[4]), 4
        elif main.kinds == "SSSSSSR":  # R / 2 × C / 2 tiles of 2 × 2
            intrinsic, group = SMMLA, 8
        else:
            return None
        rows = [b for b in blocks[:index] if b.name == INT8_ROWS]
        for block in blocks[:index]:  # a zero point per row cast to int32: into its consumer
            if block.name != INT8_ROWS:
                sch.compute_inline(block.rv)
        consumers = _inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1 or len(rows) != 1:
            return None
        # t, u, the tile's two loops (rows and vectors, or row and column pairs), the instruction's
        # (lanes, or a 2 × 2 tile), k
        t, u, *loops, k = sch.get_loops(main.rv)
        tile_loops, instruction_loops = loops[:2], loops[2:]
        outer_k, inner_k = sch.split(k, [None, group])
        sch.reorder(u, t, outer_k, *tile_loops, *instruction_loops, inner_k)
        tile = sch.fuse(u, t)
        if math.prod(main.extents) >= _PARALLEL_MIN and int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        epilogue = _epilogue(sch, main, consumers)
        try:
            sch.reverse_compute_at(epilogue, tile)
            sch.vectorize(sch.get_loops(epilogue)[-1])
        except _REFUSALS:
            _vectorize_flat(sch, epilogue, spec)
        init = sch.decompose_reduction(main.rv, outer_k)
        init_lanes = sch.get_loops(init)[-len(instruction_loops) :]
        sch.vectorize(sch.fuse(*init_lanes) if len(init_lanes) > 1 else init_lanes[0])
        sch.tensorize(instruction_loops[0], intrinsic)
        for loop in tile_loops:
            sch.unroll(loop)
        *outer, bytes_ = sch.get_loops(rows[0].rv)  # a vector of a group's bytes where K fills each
        sch.parallel(sch.fuse(*outer))
        if all(int(r.source.shape[-1]) % group == 0 for r in sch.get(rows[0].rv).reads):
            sch.vectorize(bytes_)
        return sch


# Depthwise convs at least this wide (output columns) take `WideDepthwise`'s schedule; narrower
# ones (MobileNet's 14×14 and 7×7 stages) run faster with `Contraction`'s register tile.
WIDE_DEPTHWISE = 24


class WideDepthwise(_Rule):
    """A depthwise conv2d (TVM's `group_conv2d_nchw` with one input channel per group) with a wide
    output, with its pad and epilogue. Channels run in parallel, each padding its own input plane
    first. Two loop nests:

    - At stride 1, when whole vectors (or half vectors) tile the output row: loops
      c, y, x/(vectors·lanes), kh, kw, unroll(vectors), vector(lanes), with `vectors` the largest
      divisor of the row's vectors that leaves 4 registers free. The row's accumulators stay in
      registers through every tap: each tap loads `vectors` input vectors (unaligned, shifted by
      kw) and broadcasts one weight. On AVX-512, one thread, in PaddleOCR's direction classifier
      (5×5, 2 and 3 rows of 96 columns, 32 to 200 channels) 20–25% faster per conv than the
      loop nest below; MobileNetV2's 32 channels at 112², 364 → 339 µs.
    - Otherwise loops c, y, kh, kw, x with x innermost and not vectorized in TIR, so that LLVM's
      loop vectorizer takes x. At stride 2 it loads the input row as interleaved vectors and
      shuffles (TIR's vectors would gather lane by lane). Each (kh, kw) tap sweeps one output
      row held in cache.

    Measured on AVX-512 against `Contraction`: 2–2.6× faster at 56 and 112 columns, slower at 14
    and 7 at stride 1 (`WIDE_DEPTHWISE`). At stride 2 it takes narrow outputs too, where
    `Contraction`'s vectors would gather lane by lane: MobileNetV2's 192 channels from 28² to
    14², 205 → 81 µs; 576 from 14² to 7², 116 → 73 µs. Max and average pools (loops c, y, x, kh,
    kw) as wide take the second loop nest: ResNet's 3×3 stride-2 max pool to 56 columns,
    0.9–1.1 ms → 0.35–0.44 ms (one thread).
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[_Block], spec: CPUSpec) -> s_tir.Schedule | None:
        index = next((i for i, b in enumerate(blocks) if not b.injective), None)
        if index is None or any(not b.injective for b in blocks[index + 1 :]):
            return None
        main = blocks[index]
        depthwise = main.name.startswith("group_conv2d_nchw") and main.kinds == "SSSSRRR"
        pool = main.name.startswith(("pool_max", "pool_sum")) and main.kinds == "SSSSRR"
        if not (depthwise or pool):
            return None
        width = main.extents[3]
        input_width = max(int(r.source.shape[-1]) for r in sch.get(main.rv).reads)
        strided = depthwise and width >= 4 and input_width >= 2 * width
        if width < WIDE_DEPTHWISE and not strided:
            return None  # narrow, at stride 1
        if depthwise and main.extents[4] != 1:
            return None  # not one input channel per output channel
        consumers = _inline_injective(sch, blocks[index + 1 :])
        producers = blocks[:index]
        if len(consumers) > 1 or len(producers) > 1:
            return None
        n, c, y, x, *window = sch.get_loops(main.rv)
        lanes = vector_lanes(spec, width)
        row = depthwise and not strided and lanes is not None
        if row:
            vectors = _divisor(width // lanes, spec.registers - 4)
            outer_x, vector, lane = sch.split(x, [None, vectors, lanes])
            sch.reorder(n, c, y, outer_x, *window, vector, lane)
        else:
            sch.reorder(n, c, y, *window, x)
        plane = sch.fuse(n, c)
        sch.parallel(plane)
        epilogue = _epilogue(sch, main, consumers)
        sch.reverse_compute_at(epilogue, outer_x if row else y)
        if producers:
            sch.compute_at(producers[0].rv, plane)
        if row:
            sch.vectorize(lane)
            sch.unroll(vector)
        sch.decompose_reduction(main.rv, window[0])  # the init keeps the vectorized lane
        for tap in window[-2:]:
            sch.unroll(tap)
        if row:
            _, epilogue_lane = sch.split(sch.get_loops(epilogue)[-1], [None, lanes])
            sch.vectorize(epilogue_lane)
        return sch


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


class _Guarded(_Rule):
    """A dlight rule whose schedule errors count as "does not apply", like passc's own."""

    def __init__(self, rule: ScheduleRule) -> None:
        super().__init__()
        self.rule = rule

    def apply(self, func: Any, target: Target, tunable: bool) -> s_tir.Schedule | None:
        try:
            return self.rule.apply(func, target, tunable)
        except _REFUSALS:
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
    return [dlight.ApplyDefaultSchedule(*default_rules())]
