"""int8 matrix products that stay int8 in the kernel, for the CPU's dot products; `Int8Tiles`, `Int8Dot`.

ONNX's MatMulInteger imports as matmul(astype(A, int32) [- Z], astype(W, int32) [- Z_W]), with
zero points Z and Z_W: a kernel multiplying int32s, four times the bytes and no use of the int8
dot products of Armv8.2 (`sdot`), Armv8.6 (`smmla`) or x86 (`vpdpbusd`). `narrow_int8_matmul` (a
Relax pass, before legalize) rewrites it, for A int8 or uint8 and a constant W, to

    matmul(A, B, out_dtype=int32) [- Z · Σ_k B[k, :]]       B = W [- Z_W] as int8

when B fits int8 (int8 weights with zero point 0, as onnxruntime's dynamic quantization writes
them, or uint8 ones around 128): Σ_k (A - Z)·B = Σ_k A·B - Z·Σ_k B, and Z (a scalar or one per
row, often computed at run time) only enters the epilogue. `legalize_int8_matmul` then turns the
matmul with its constant B[K, N] into one of three kernels, by the target's instructions. A[..., K]
counts as M rows; each sum is exact in int32 for K < 2¹⁶ (a product is at most 2¹⁵ in magnitude),
so every kernel equals onnxruntime's result bit for bit.

1. **Tiles of `vpdpbusd`** (x86 with AVX-512 VNNI, 16 int32 lanes, or AVX-VNNI, 8). `vpdpbusd`
   multiplies *unsigned* by signed bytes, 4 per lane. uint8 rows go in as they are; int8 ones
   as A' = A + 128 (uint8), with

       C[m, n] = Σ_k A'[m, k] · B[k, n] − 128 · Σ_k B[k, n]

   and the last sum is a constant, folded at compile time. A' is packed at run time into tiles of
   R rows, B once into panels of C columns, both in groups of 4 along k (zero past K):

       A'ᵖ[m // R, k // 4, m % R, k % 4] = A'[m, k]         Bᵖ[n // C, k // 4, n % C, k % 4] = B[k, n]

   so one instruction takes a row's 4 bytes (broadcast) and 4 bytes of each of a vector's columns,
   64 contiguous bytes of the panel. The kernel writes R × C tiles as R × C / L vectors of the
   instruction's L lanes; the epilogue reads them back into C[m, n] and subtracts the constant.
   C = 2 vectors, R up to 8: 16 accumulators.
2. **Tiles of `smmla`** (aarch64 with i8mm). `smmla` multiplies a 2 × 8 block of A by an 8 × 2
   block of B into a 2 × 2 int32 tile. A is packed at run time, B once, in groups of 8 along k:

       Aᵖ[m // R, k // 8, m % R, k % 8] = A[m, k]           Bᵖ[n // C, k // 8, n % C, k % 8] = B[k, n]

   so each 2 × 8 block is 16 contiguous bytes; the kernel writes 2 × 2 tiles, R / 2 × C / 2 of
   them per register tile (R and C up to 8: 16 accumulators). `smmla` is signed: int8 rows go in
   as they are, uint8 ones as A - 128, with 128 · Σ_k B[k, n] added back in the epilogue.
3. **Dot products** (every other target): C[..., i, j] = Σ_k A[..., i, k] · Bᵀ[j, k], Bᵀ
   transposed once, k innermost and unvectorized in TIR, so that LLVM's loop vectorizer sums the
   products 16 bytes at a time: `sdot` on Armv8.2+dotprod (rpi5) for int8 rows, `vpmaddwd` on
   AVX2 / AVX-512 without VNNI (LLVM 22 forms neither `vpdpbusd` nor `smmla` from loops).

`Int8Tiles` schedules kernels 1 and 2, `Int8Dot` kernel 3; `passc.schedules.int8_intrinsics`
holds the two instructions as TIR tensor intrinsics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm
from tvm import relax, s_tir, te
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from passc.schedules.analysis import (
    PARALLEL_MIN,
    REFUSALS,
    epilogue_block,
    inline_injective,
    named_reduction,
    vectorize_flat,
)
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec
from passc.schedules.int8_intrinsics import SMMLA, vnni_dot
from passc.schedules.packed_dense import ravel, unravel

__all__ = [
    "INT8_DOT",
    "INT8_ROWS",
    "INT8_TILES",
    "VNNI_LANES",
    "Int8Dot",
    "Int8Tiles",
    "int8_instruction",
    "int8_tile",
    "legalize_int8_matmul",
    "narrow_int8_matmul",
    "pack_int8",
]

# The reduction block of kernel 3, int8 products summed in int32 (`Int8Dot`).
INT8_DOT = "matmul_int8"
# The register tiles of kernels 1 and 2, by `vpdpbusd` or `smmla` (`Int8Tiles`), and its rows
# packed for them.
INT8_TILES = "matmul_int8_tiles"
INT8_ROWS = "matmul_int8_rows"

_ROWS, _ZERO = wildcard(), wildcard()
_WEIGHT, _WEIGHT_ZERO = is_const(), is_const()
_WIDENED = is_op("relax.astype")(_ROWS)
_WIDE_WEIGHT = is_op("relax.astype")(_WEIGHT)
_WIDE_WEIGHT_ZERO = is_op("relax.astype")(_WEIGHT_ZERO)
_PRODUCT = is_op("relax.matmul")(
    _WIDENED | is_op("relax.subtract")(_WIDENED, _ZERO),
    _WIDE_WEIGHT
    | is_op("relax.subtract")(
        _WIDE_WEIGHT, _WIDE_WEIGHT_ZERO | is_op("relax.expand_dims")(_WIDE_WEIGHT_ZERO)
    ),
)


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _narrow(call: relax.Call, matches: dict[Any, relax.Expr]) -> relax.Expr:
    rows, zero = matches[_ROWS], matches.get(_ZERO)
    if _dtype(rows) not in ("int8", "uint8") or _dtype(call) != "int32":
        return call
    if zero is not None and not _constant_along_k(zero):
        return call  # not a zero point: Σ_k (A - Z)·B needs Z the same for every k
    matrix = matches[_WEIGHT].value.numpy().astype(np.int64)
    if _WEIGHT_ZERO in matches:  # a scalar, or one per column
        matrix = matrix - matches[_WEIGHT_ZERO].value.numpy().astype(np.int64)
    if matrix.ndim != 2 or matrix.min(initial=0) < -128 or matrix.max(initial=0) > 127:
        return call
    narrow = matrix.astype(np.int8)
    product = relax.op.matmul(rows, relax.const(narrow), out_dtype="int32")
    if zero is None:
        return product
    sums = relax.const(narrow.astype(np.int32).sum(axis=0))
    return relax.op.subtract(product, relax.op.multiply(zero, sums))


def _constant_along_k(zero: relax.Expr) -> bool:
    """Whether `zero` is a scalar, or its last axis (A's k, when it broadcasts against A) has
    length 1: a zero point per tensor or per row."""
    shape = zero.ty.shape if isinstance(zero.ty, relax.TensorType) else None
    if shape is None or not isinstance(shape, relax.ShapeExpr):
        return False
    dims = list(shape.values)
    return not dims or (isinstance(dims[-1], tvm.tirx.IntImm) and int(dims[-1]) == 1)


@tvm.transform.module_pass(opt_level=0, name="NarrowInt8Matmul")
def narrow_int8_matmul(mod: tvm.IRModule, _context: Any) -> tvm.IRModule:
    """matmul(astype(A, int32) [- Z], astype(W, int32) [- Z_W]) → matmul(A, B, out_dtype=int32)
    [- Z · Σ_k B[k, :]], for A int8 or uint8 and a constant 8-bit W whose B = W [- Z_W] (Z_W a
    constant, scalar or per column) fits int8, B taken as int8. ONNX's MatMulInteger with zero
    points imports as the left side: Σ_k (A - Z)·B = Σ_k A·B - Z·Σ_k B, exactly, in int32."""
    for var, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[var] = rewrite_call(_PRODUCT, _narrow, func)
    return mod


# The int32 lanes of `vpdpbusd` for each VNNI of `int8_instruction`.
VNNI_LANES = {"vnni16": 16, "vnni8": 8}


def int8_instruction(target: Target) -> str | None:
    """ "vnni16" (AVX-512 VNNI), "vnni8" (AVX-VNNI) or "i8mm" when the target has that int8
    matrix instruction (LLVM's features for its triple, mcpu and mattr), else None."""
    from tvm.target.codegen import llvm_cpu_has_features

    for feature, name in (("avx512vnni", "vnni16"), ("avxvnni", "vnni8"), ("i8mm", "i8mm")):
        try:
            if llvm_cpu_has_features(feature, target):
                return name
        except (RuntimeError, ValueError):  # a feature this triple's LLVM backend does not know
            continue
    return None


def _rows(rows: int, smallest: int, largest: int, step: int) -> int:
    """The row tile: every row (rounded up to `step`) when there are at most `largest`, else the
    tile from `smallest` to `largest` that pads the rows least, the larger on a tie."""
    if rows <= largest:
        return -(-rows // step) * step
    return min(range(smallest, largest + 1, step), key=lambda r: (-(-rows // r) * r, -r))


def int8_tile(instruction: str, rows: int, columns: int) -> tuple[int, int, int]:
    """(R, C, the group along k) of the register tile for M = `rows` and N = `columns`:
    `vpdpbusd` two vectors of columns by up to 8 rows (6 at 8 lanes, where AVX2 has 16 registers),
    groups of 4; `smmla` up to 8 by 8 in 2 × 2 tiles, groups of 8."""
    if instruction == "i8mm":
        return _rows(rows, 4, 8, 2), min(8, -(-columns // 2) * 2), 8
    lanes = VNNI_LANES[instruction]
    return _rows(rows, 4, 8 if lanes == 16 else 6, 1), lanes * min(2, -(-columns // lanes)), 4


def pack_int8(matrix: np.ndarray, columns: int, group: int) -> np.ndarray:
    """B[K, N] as Bᵖ[⌈N / columns⌉, ⌈K / group⌉, columns, group], zero past K and N."""
    depth, count = matrix.shape
    padded = np.zeros((-(-depth // group) * group, -(-count // columns) * columns), np.int8)
    padded[:depth, :count] = matrix
    panels = padded.reshape(-1, group, padded.shape[1] // columns, columns)
    return np.ascontiguousarray(panels.transpose(2, 0, 3, 1))


def _int8_tiles(
    data: te.Tensor,
    packed: te.Tensor,
    rows: int,
    count: int,
    lanes: int,
    offset: te.Tensor | None = None,
) -> te.Tensor:
    """Kernel 1 (`lanes` the int32 lanes of `vpdpbusd`, uint8 rows) or 2 (`lanes` 0, int8 rows) of
    the module docstring: `data` A[..., K] int8 or uint8, `packed` Bᵖ, R = `rows`, N = `count`.
    Rows of the other signedness are shifted by 128 on packing (A + s, s = ±128) and `offset`,
    s · Σ_k B[k, n], subtracted."""
    *lead, depth = (int(d) for d in data.shape)
    panels, groups, columns, group = (int(d) for d in packed.shape)
    total = math.prod(lead)
    tiles = -(-total // rows)
    signed = lanes == 0
    dtype = "int8" if signed else "uint8"

    def row(t: Any, g: Any, r: Any, q: Any) -> Any:
        value = data[(*unravel(t * rows + r, lead), g * group + q)]
        if str(data.dtype) != dtype:
            value = (value.astype("int32") + (-128 if signed else 128)).astype(dtype)
        inside = tvm.tirx.all(t * rows + r < total, g * group + q < depth)
        return te.if_then_else(inside, value, tvm.tirx.const(0, dtype))

    packed_rows = te.compute((tiles, groups, rows, group), row, name=INT8_ROWS)
    k = te.reduce_axis((0, groups * group), "k")

    def product(t: Any, u: Any, r: Any, c: Any) -> Any:
        left = packed_rows[t, k // group, r, k % group].astype("int32")
        return left * packed[u, k // group, c, k % group].astype("int32")

    if not signed:  # R × C / L vectors of L lanes
        result = te.compute(
            (tiles, panels, rows, columns // lanes, lanes),
            lambda t, u, r, v, j: te.sum(product(t, u, r, v * lanes + j), axis=k),
            name=INT8_TILES,
        )

        def tile(m: Any, n: Any) -> Any:
            return result[m // rows, n // columns, m % rows, n % columns // lanes, n % lanes]

    else:  # R / 2 × C / 2 tiles of 2 × 2
        result = te.compute(
            (tiles, panels, rows // 2, columns // 2, 2, 2),
            lambda t, u, p, q, i, j: te.sum(product(t, u, 2 * p + i, 2 * q + j), axis=k),
            name=INT8_TILES,
        )

        def tile(m: Any, n: Any) -> Any:
            return result[m // rows, n // columns, m % rows // 2, n % columns // 2, m % 2, n % 2]

    def read(m: Any, n: Any) -> Any:
        return tile(m, n) - offset[n] if offset is not None else tile(m, n)

    return te.compute((*lead, count), lambda *i: read(ravel(i[:-1], lead), i[-1]), name="matmul_int8_unpack")


def _int8_dot(data: te.Tensor, transposed: te.Tensor) -> te.Tensor:
    """Kernel 3 of the module docstring: `data` [..., M, K] int8 or uint8, `transposed` Bᵀ [N, K]
    int8."""
    *lead, depth = (int(d) for d in data.shape)
    count = int(transposed.shape[0])
    k = te.reduce_axis((0, depth), "k")
    return te.compute(
        (*lead, count),
        lambda *i: te.sum(data[(*i[:-1], k)].astype("int32") * transposed[i[-1], k].astype("int32"), axis=k),
        name=INT8_DOT,
    )


def legalize_int8_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The int8 kernel for the current target of an int8 or uint8 × constant int8 matmul into
    int32, else None."""
    data, matrix = call.args
    if not isinstance(matrix, tvm.ir.expr.Constant) or len(matrix.value.shape) != 2:
        return None
    if _dtype(data) not in ("int8", "uint8") or _dtype(matrix) != "int8":
        return None
    if str(call.attrs.out_dtype) != "int32":
        return None
    if any(not isinstance(d, tvm.tirx.IntImm) for d in data.ty.shape) or len(data.ty.shape) < 2:
        return None
    weight = matrix.value.numpy()
    target = Target.current(allow_none=True)
    instruction = int8_instruction(target) if target is not None else None
    if instruction is None:
        transposed = relax.const(np.ascontiguousarray(weight.T))
        return bb.call_te(_int8_dot, data, transposed, primfunc_name_hint="matmul_int8")
    shape = [int(d) for d in data.ty.shape]
    rows, columns, group = int8_tile(instruction, math.prod(shape[:-1]), weight.shape[1])
    packed = relax.const(pack_int8(weight, columns, group))
    lanes = VNNI_LANES.get(instruction, 0)
    shift = 0 if _dtype(data) == ("uint8" if lanes else "int8") else (128 if lanes else -128)
    offset = [relax.const(shift * weight.astype(np.int32).sum(axis=0))] if shift else []
    count = weight.shape[1]
    return bb.call_te(
        _int8_tiles, data, packed, rows, count, lanes, *offset, primfunc_name_hint="matmul_int8"
    )


class Int8Tiles(Rule):
    """Kernel 1 or 2, an int8 matmul in register tiles of `vpdpbusd` or `smmla`, with its epilogue.
    Loops t, u (row tile, column panel), then the tile's, then k:

        parallel(u · t) · k / g · unroll(tile) · instruction(the 16 or 8 lanes × 4 of `vpdpbusd`;
                                                          the 2 × 2 × 8 of `smmla`)

    with g the instruction's group along k (4 or 8). A panel stays in cache while every row tile
    passes over it; each step of k / g runs one instruction per accumulator of the tile. The
    epilogue (unpacking the tiles, the VNNI offset, then any dequantizing) runs per tile where its
    rows are one range of the output, else in one pass after; the rows are packed first, once.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = named_reduction(blocks, INT8_TILES)
        if index is None:
            return None
        main = blocks[index]
        kinds = main.dom_kind()
        if kinds == "SSSSSR":  # R × C / L vectors of L lanes
            intrinsic, group = vnni_dot(main.dom()[4]), 4
        elif kinds == "SSSSSSR":  # R / 2 × C / 2 tiles of 2 × 2
            intrinsic, group = SMMLA, 8
        else:
            return None
        rows = [b for b in blocks[:index] if b.name == INT8_ROWS]
        for block in blocks[:index]:  # a zero point per row cast to int32: into its consumer
            if block.name != INT8_ROWS:
                sch.compute_inline(block.block_rv)
        consumers = inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1 or len(rows) != 1:
            return None
        # t, u, the tile's two loops (rows and vectors, or row and column pairs), the instruction's
        # (lanes, or a 2 × 2 tile), k
        t, u, *loops, k = sch.get_loops(main.block_rv)
        tile_loops, instruction_loops = loops[:2], loops[2:]
        outer_k, inner_k = sch.split(k, [None, group])
        sch.reorder(u, t, outer_k, *tile_loops, *instruction_loops, inner_k)
        tile = sch.fuse(u, t)
        if math.prod(main.dom()) >= PARALLEL_MIN and int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        epilogue = epilogue_block(sch, main, consumers)
        try:
            sch.reverse_compute_at(epilogue, tile)
            sch.vectorize(sch.get_loops(epilogue)[-1])
        except REFUSALS:
            vectorize_flat(sch, epilogue, spec)
        init = sch.decompose_reduction(main.block_rv, outer_k)
        init_lanes = sch.get_loops(init)[-len(instruction_loops) :]
        sch.vectorize(sch.fuse(*init_lanes) if len(init_lanes) > 1 else init_lanes[0])
        sch.tensorize(instruction_loops[0], intrinsic)
        for loop in tile_loops:
            sch.unroll(loop)
        *outer, bytes_ = sch.get_loops(rows[0].block_rv)  # a vector of a group's bytes where K fills each
        sch.parallel(sch.fuse(*outer))
        if all(int(r.source.shape[-1]) % group == 0 for r in sch.get(rows[0].block_rv).reads):
            sch.vectorize(bytes_)
        return sch


class Int8Dot(Rule):
    """Kernel 3, an int8 matmul as dot products, with its epilogue: one parallel loop over the
    outputs, each a dot product over k left innermost and unvectorized in TIR. LLVM's loop
    vectorizer then sums the int8 products 16 bytes at a time (`sdot` with Armv8.2's dotprod,
    `vpmaddwd` on x86); TIR's vectors would run along the outputs and widen every byte to int32.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = named_reduction(blocks, INT8_DOT)
        if index is None:
            return None
        main = blocks[index]
        kinds, extents = main.dom_kind(), main.dom()
        if kinds != "S" * (len(kinds) - 1) + "R":
            return None
        consumers = inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        *spatial, k = sch.get_loops(main.block_rv)
        outputs = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        if math.prod(extents[:-1]) * extents[-1] >= PARALLEL_MIN:
            sch.parallel(outputs)
        epilogue = epilogue_block(sch, main, consumers)
        sch.reverse_compute_at(epilogue, outputs)
        sch.decompose_reduction(main.block_rv, k)
        return sch
