"""Softmax and layer norm over the last axis, summed in vector-wide partials, and `RowReduction`.

A sum or max along a row is a chain of dependent scalar operations unless it is reassociated,
and LLVM does not reassociate float reductions (without fast-math) nor TIR's schedules split them
on their own. A row x[0..L) reduces instead through P = 16 partials (one AVX-512 vector, four NEON
vectors), each the reduction of every P-th element:

    part[j] = ⊕_{c < ⌊L / P⌋} x[c·P + j]                               (j < P)
    total   = part[0] ⊕ … ⊕ part[P − 1] ⊕ x[⌊L / P⌋·P] ⊕ … ⊕ x[L − 1]   (the tail of L mod P)

(⊕ is max or +), so the long loop runs over c with the P partials as one vector. The order of
the additions changes, not what is added: a sum differs from the sequential one by rounding only.
With that, over the last axis of x [..., L]:

    softmax:     m = max_i x_i,  e_i = exp(x_i − m) (`fast_math.exp32`),  y_i = e_i · (1 / Σ_i e_i)
    layer norm:  μ = Σ_i x_i / L,  σ² = Σ_i (x_i − μ)² / L,  y_i = (x_i − μ) · rsqrt(σ² + ε) · γ_i + β_i

`RowReduction` schedules them a row at a time. Rows shorter than 2·P keep the plain reduction
(and softmax over another axis, `fast_math`'s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import relax, s_tir, te, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo

from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec
from passc.schedules.fast_math import exp32

__all__ = ["PARTIALS", "ROW_PARTIAL", "RowReduction", "legalize_layer_norm", "legalize_softmax", "row_total"]

PARTIALS = 16
# The prefix of the partial-reduction blocks (`row_total`), by which `RowReduction` knows a kernel.
ROW_PARTIAL = "row_partial"


def row_total(value: Callable[..., Any], shape: list[int], reducer: Any, name: str) -> te.Tensor:
    """The `reducer` (te.sum or te.max) of value(*row, i) over i < L for each row of shape
    [..., L], through PARTIALS partials (the module docstring's formula). Returns a tensor of
    shape [...]."""
    *rows, length = shape
    chunks = length // PARTIALS
    c = te.reduce_axis((0, chunks), "c")
    part = te.compute(
        (*rows, PARTIALS),
        lambda *rj: reducer(value(*rj[:-1], c * PARTIALS + rj[-1]), axis=c),
        name=f"{ROW_PARTIAL}_{name}",
    )
    t = te.reduce_axis((0, PARTIALS + length - chunks * PARTIALS), "t")
    return te.compute(
        rows,
        lambda *r: reducer(
            te.if_then_else(t < PARTIALS, part(*r, t), value(*r, chunks * PARTIALS + t - PARTIALS)), axis=t
        ),
        name=name,
    )


def _softmax_rows(x: te.Tensor) -> te.Tensor:
    shape = [int(d) for d in x.shape]
    peak = row_total(x, shape, te.max, "max")
    exp = te.compute(shape, lambda *i: exp32(x(*i) - peak(*i[:-1])), name="exp")
    total = row_total(exp, shape, te.sum, "sum")
    inverse = te.compute(shape[:-1], lambda *r: 1.0 / total(*r), name="inverse")
    return te.compute(shape, lambda *i: exp(*i) * inverse(*i[:-1]), name="softmax")


def _layer_norm_rows(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, epsilon: float) -> te.Tensor:
    shape = [int(d) for d in x.shape]
    length = shape[-1]
    total = row_total(x, shape, te.sum, "sum")
    mean = te.compute(shape[:-1], lambda *r: total(*r) / length, name="mean")
    centred = te.compute(shape, lambda *i: x(*i) - mean(*i[:-1]), name="centred")
    squares = row_total(lambda *i: centred(*i) * centred(*i), shape, te.sum, "squares")
    scale = te.compute(shape[:-1], lambda *r: te.rsqrt(squares(*r) / length + epsilon), name="scale")
    return te.compute(
        shape,
        lambda *i: centred(*i) * scale(*i[:-1]) * gamma(i[-1]) + beta(i[-1]),
        name="layer_norm",
    )


def _rows(x: relax.Expr, axes: list[int]) -> bool:
    """Whether `axes` is the last axis of float32 `x` with a static shape of at least 2·PARTIALS."""
    shape = x.ty.shape
    rank = len(shape) if shape is not None else 0
    if str(x.ty.dtype) != "float32" or rank == 0 or [a % rank for a in axes] != [rank - 1]:
        return False
    return all(isinstance(d, tirx.IntImm) for d in shape) and int(shape[-1]) >= 2 * PARTIALS


def legalize_softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """Softmax over the last axis in partials, or None (another axis, or a short row)."""
    if not _rows(call.args[0], [int(call.attrs.axis)]):
        return None
    return bb.call_te(_softmax_rows, call.args[0], primfunc_name_hint="softmax")


def legalize_layer_norm(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """Layer norm over the last axis in partials (with its scale and shift), or None."""
    attrs = call.attrs
    if not (attrs.center and attrs.scale) or not _rows(call.args[0], [int(a) for a in attrs.axes]):
        return None
    if any(str(arg.ty.dtype) != "float32" for arg in call.args[1:]):
        return None
    return bb.call_te(_layer_norm_rows, *call.args, float(attrs.epsilon), primfunc_name_hint="layer_norm")


class RowReduction(Rule):
    """A softmax or layer norm over the last axis with its reductions in vector-wide partials
    (`legalize_softmax`, `legalize_layer_norm`): one parallel loop over the rows, under which every
    block computes its part of the row. A partial reduction runs its chunk loop outside its
    PARTIALS lanes, which are one vector (a running max or sum per lane); the other blocks' loops
    along the row are left to LLVM's loop vectorizer, which takes any row length (ViT's 197 keys).
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        last = blocks[-1]
        partials = [b for b in blocks if b.name.startswith(ROW_PARTIAL)]
        if not partials or not last.is_injective():
            return None
        rows = last.dom()[:-1]
        if any(b.dom()[: len(rows)] != rows for b in blocks):
            return None
        loops = sch.get_loops(last.block_rv)[: len(rows)]
        tile = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block.block_rv, tile, preserve_unit_loops=True)
        for block in partials:
            *_, lane, chunk = sch.get_loops(block.block_rv)
            sch.reorder(chunk, lane)
            sch.vectorize(lane)
            init = sch.decompose_reduction(block.block_rv, chunk)
            sch.vectorize(sch.get_loops(init)[-1])
        return sch
