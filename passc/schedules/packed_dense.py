"""A matrix product by a constant matrix, both operands packed for a register tile, and `PackedDense`.

y = x · B, with x[..., K] (M rows once its leading axes are flattened) and a constant B[K, N],
is tiled as R rows × C columns of accumulators that stay in registers for the whole of k: each
step loads C / lanes vectors of B, broadcasts R scalars of x and does R · C / lanes fused
multiply-adds (R = 6, C = 4 vectors with 32 registers: 24 accumulators, 4 loads and a broadcast).
Plain row-major operands feed that tile badly: each of B's K rows gives it C·4 bytes, N·4 bytes
apart, and each of x's R rows is a separate stream. B is packed once, at compile time, into
panels of C columns, and x at run time into tiles of R rows:

    P[n // C, k, n % C] = B[k, n]            (zero for N ≤ n < N' = C·⌈N / C⌉)
    T[m // R, k, m % R] = x[m, k]            (zero for M ≤ m < M' = R·⌈M / R⌉)
    Y'[m, n] = Σ_k T[m // R, k, m % R] · P[n // C, k, n % C]
    y[m, n] = Y'[m, n]                       (m < M, n < N; the leading axes restored)

so a tile's K steps read one contiguous run of each. `PackedDense` schedules it, panels outermost
(a panel stays in cache while every row tile passes over it). R is the row tile of `row_tile`:
one row needs no tile (a classifier).

The legalization (`passc.schedules.legalize`) takes a float matmul whose second operand is a
constant matrix; every other matmul legalizes as TVM's own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm
from tvm import relax, s_tir, te
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from passc.schedules.analysis import (
    PARALLEL_MIN,
    epilogue_block,
    inline_injective,
    inline_side_inputs,
    named_reduction,
    tile_factors,
    vectorize_flat,
)
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec, float_spec

__all__ = [
    "PACKED_DENSE",
    "PACKED_ROWS",
    "PackedDense",
    "legalize_matmul",
    "pack_panels",
    "panel_vectors",
    "ravel",
    "row_tile",
    "unravel",
]

# The reduction block of the packed product (`PackedDense`) and the block that packs its rows
# into tiles.
PACKED_DENSE = "dense_packed"
PACKED_ROWS = "dense_rows_packed"


def panel_vectors(columns: int, spec: CPUSpec) -> int:
    """Vectors in a panel: 4 with 32 registers, 2 with 16 (AVX2's 6 × 2 tile), fewer when B has
    fewer columns (10 classes would pad to 64 on AVX-512 and take one vector)."""
    return min(4 if spec.registers >= 32 else 2, -(-columns // spec.lanes))


def row_tile(rows: int, vectors: int, spec: CPUSpec) -> int:
    """R, the rows of the accumulator tile: all of them when fewer than 4; else the R from 4 up to
    6 (and what the registers hold beside the loaded vectors and a broadcast) that pads M least,
    the larger on a tie (197 tokens: 6, to 198; 128: 4, none)."""
    limit = min(6, (spec.registers - vectors - 1) // vectors)
    if rows < 4 or limit < 4:
        return min(rows, max(1, limit))
    return min(range(4, limit + 1), key=lambda r: (-(-rows // r) * r, -r))


def pack_panels(matrix: np.ndarray, columns: int) -> np.ndarray:
    """B[K, N] as P[⌈N / columns⌉, K, columns], the columns past N zero."""
    rows, count = matrix.shape
    padded = np.zeros((rows, -(-count // columns) * columns), matrix.dtype)
    padded[:, :count] = matrix
    return np.ascontiguousarray(padded.reshape(rows, -1, columns).transpose(1, 0, 2))


def unravel(flat: Any, shape: list[int]) -> list[Any]:
    """The index into `shape` of row-major position `flat` (just `flat` on the one axis longer
    than 1, if there is only one: TVM's region analysis then sees the rows as a plain range)."""
    if sum(extent > 1 for extent in shape) <= 1:
        return [flat if extent > 1 else 0 for extent in shape]
    index = []
    for extent in reversed(shape):
        index.append(flat % extent)
        flat = flat // extent
    return index[::-1]


def ravel(index: tuple[Any, ...], shape: list[int]) -> Any:
    """The row-major position of `index` into `shape` (the inverse of `unravel`)."""
    flat = 0
    for i, extent in zip(index, shape, strict=True):
        flat = flat * extent + i if extent > 1 else flat
    return flat


def _packed_dense(data: te.Tensor, packed: te.Tensor, rows: int, count: int) -> te.Tensor:
    """y of the module docstring: `data` [..., K], `packed` [N' / C, K, C], R = `rows`, N = `count`."""
    *lead, depth = (int(d) for d in data.shape)
    panels, _, columns = (int(d) for d in packed.shape)
    total = math.prod(lead)
    padded = -(-total // rows) * rows
    if rows == 1:  # one row at a time: x needs no tile

        def row(m: Any, kk: Any) -> Any:
            return data[(*unravel(m, lead), kk)]

    else:
        tiles = te.compute(
            (padded // rows, depth, rows),
            lambda t, kk, r: te.if_then_else(
                t * rows + r < total, data[(*unravel(t * rows + r, lead), kk)], tvm.tirx.const(0, data.dtype)
            ),
            name=PACKED_ROWS,
        )

        def row(m: Any, kk: Any) -> Any:
            return tiles[m // rows, kk, m % rows]

    k = te.reduce_axis((0, depth), "k")
    product = te.compute(
        (padded, panels * columns),
        lambda m, n: te.sum(row(m, k) * packed[n // columns, k, n % columns], axis=k),
        name=PACKED_DENSE,
    )
    if padded == total and panels * columns == count and len(lead) == 1:
        return product
    return te.compute((*lead, count), lambda *i: product[ravel(i[:-1], lead), i[-1]], name="dense_unpad")


def _tile_for(call: relax.Call, target: Target) -> tuple[int, int] | None:
    """(R, C) for this matmul, or None when it stays TVM's matmul."""
    data, matrix = call.args
    if not isinstance(matrix, tvm.ir.expr.Constant) or len(matrix.value.shape) != 2:
        return None
    spec = float_spec(target, call.attrs.out_dtype, data, matrix)
    shape = [int(d) for d in data.ty.shape] if spec is not None else []
    if len(shape) < 2:
        return None
    vectors = panel_vectors(int(matrix.value.shape[1]), spec)
    rows = math.prod(shape[:-1])
    return row_tile(rows, vectors, spec), vectors * spec.lanes


def legalize_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The packed product, or None (TVM's own matmul)."""
    target = Target.current(allow_none=True)
    tile = _tile_for(call, target) if target is not None else None
    if tile is None:
        return None
    rows, columns = tile
    matrix = call.args[1].value.numpy()
    packed = relax.const(pack_panels(matrix, columns))
    return bb.call_te(
        _packed_dense, call.args[0], packed, rows, matrix.shape[1], primfunc_name_hint="dense_packed"
    )


class PackedDense(Rule):
    """The packed product (`legalize_matmul`) and its epilogue: loops m, n, k of Y'[m, n] tiled as
        parallel(n / C · m / R) · k · unroll(R) · unroll(C / lanes) · vector(lanes)
    with R and C the row tile's and the panel's widths (read off the packed operands' shapes):
    a panel stays in cache while every row tile passes over it, and each step of k loads C / lanes
    vectors of the panel and broadcasts R scalars of the row tile. The epilogue (unpadding, bias,
    activation) runs per tile; the row packing runs first, over all rows.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = named_reduction(blocks, PACKED_DENSE)
        if index is None or blocks[index].dom_kind() != "SSR":
            return None
        blocks, index = inline_side_inputs(sch, blocks, index)
        main = blocks[index]
        extents = main.dom()
        packed = [r.source for r in sch.get(main.block_rv).reads if len(r.source.shape) == 3]
        producers = blocks[:index]
        tiled = [b for b in producers if b.name == PACKED_ROWS]
        rows = tiled[0].dom()[-1] if tiled else 1
        columns = int(packed[-1].shape[-1])
        if columns % spec.lanes or extents[0] % rows or extents[1] % columns:
            return None
        consumers = inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        m, n, k = sch.get_loops(main.block_rv)
        outer_m, row = sch.split(m, tile_factors(sch, m, extents[0], rows))
        outer_n, column = sch.split(n, tile_factors(sch, n, extents[1], columns))
        sch.reorder(outer_n, outer_m, k, row, column)
        tile = sch.fuse(outer_n, outer_m)
        if extents[0] * extents[1] >= PARALLEL_MIN // 4 and int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        epilogue = epilogue_block(sch, main, consumers)
        rows_shape = [int(d) for d in sch.get(epilogue).writes[0].source.shape[:-1]]
        if sum(d > 1 for d in rows_shape) <= 1:
            sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(epilogue)[-1])
        else:  # rows along several axes: a tile's rows are no box of the output, so one pass after
            vectorize_flat(sch, epilogue, spec)
        vector, lane = sch.split(column, [columns // spec.lanes, spec.lanes])
        sch.unroll(row)
        sch.unroll(vector)
        sch.vectorize(lane)
        init = sch.decompose_reduction(main.block_rv, k)
        sch.vectorize(sch.get_loops(init)[-1])
        for block in producers:
            vectorize_flat(sch, block.block_rv, spec)
        return sch
