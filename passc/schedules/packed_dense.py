"""A vector times a constant matrix (a classifier's last layer) with the matrix packed in column panels.

A matmul y = x · B with one row x[1, K] and a constant B[K, N] reads B once, so it runs at the
speed B streams from memory. Plain B gives each tile of C output columns C·4 bytes of every one
of B's K rows, N·4 bytes apart: K short strided reads that the prefetcher follows badly, and when
N is no multiple of the vector (1000 classes) a tile of 25 columns, 1.6 vectors. Packing B once,
at compile time, into panels of C = 4 vectors,

    P[n // C, k, n % C] = B[k, n]    (n < N;  zero for N ≤ n < N' = C·⌈N / C⌉)

makes each tile's K × C weights one contiguous run, and the padded product

    Y'[0, n] = Σ_k x[0, k] · P[n // C, k, n % C]          (n < N')

has whole vectors only; the first N columns of Y' are y. `Contraction` schedules it as a tile of
C columns, one vector load and fused multiply-add per vector per k. MobileNetV2's 1280 × 1000
classifier on AVX-512, one thread: 645 → 220–240 µs (onnxruntime: 225–265 µs in the same runs).

The legalization (`passc.schedules.legalize`) takes a float matmul whose second operand is a
constant matrix and whose first has one row; every other matmul legalizes as TVM's own.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.target import Target

from passc.schedules.packed_conv import float_spec
from passc.schedules.rules import PACKED_DENSE

__all__ = ["legalize_matmul", "pack_panels"]

_PANEL_VECTORS = 4


def pack_panels(matrix: np.ndarray, columns: int) -> np.ndarray:
    """B[K, N] as P[⌈N / columns⌉, K, columns], the columns past N zero."""
    rows, count = matrix.shape
    padded = np.zeros((rows, -(-count // columns) * columns), matrix.dtype)
    padded[:, :count] = matrix
    return np.ascontiguousarray(padded.reshape(rows, -1, columns).transpose(1, 0, 2))


def _packed_dense(data: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """Y' of the module docstring: `data` [..., K] (one row), `packed` [N' / C, K, C]."""
    *lead, depth = (int(d) for d in data.shape)
    panels, _, columns = (int(d) for d in packed.shape)
    k = te.reduce_axis((0, depth), "k")
    return te.compute(
        (*lead, panels * columns),
        lambda *i: te.sum(data[(*i[:-1], k)] * packed[i[-1] // columns, k, i[-1] % columns], axis=k),
        name=PACKED_DENSE,
    )


def _panel_for(call: relax.Call, target: Target) -> int | None:
    """The panel width C for this matmul, or None when it stays TVM's matmul."""
    data, matrix = call.args
    if not isinstance(matrix, tvm.ir.expr.Constant) or len(matrix.value.shape) != 2:
        return None
    spec = float_spec(target, call.attrs.out_dtype, data, matrix)
    if spec is None:
        return None
    shape = [int(d) for d in data.ty.shape]
    if not shape or math.prod(shape[:-1]) != 1:
        return None  # more than one row: a matrix product, TVM's matmul and `Contraction`
    return _PANEL_VECTORS * spec.lanes


def legalize_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The packed product and a slice of its first N columns, or None (TVM's own matmul)."""
    target = Target.current(allow_none=True)
    columns = _panel_for(call, target) if target is not None else None
    if columns is None:
        return None
    matrix = call.args[1].value.numpy()
    packed = relax.const(pack_panels(matrix, columns))
    product = bb.call_te(_packed_dense, call.args[0], packed, primfunc_name_hint="dense_packed")
    count = matrix.shape[1]
    if count % columns == 0:
        return product
    padded = bb.emit(product)
    rank = len(call.args[0].ty.shape)
    return bb.call_te(
        topi.strided_slice, padded, [0] * rank, [1] * (rank - 1) + [count], primfunc_name_hint="dense_columns"
    )
