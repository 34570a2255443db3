"""MatMul followed by Add of a bias, as one Gemm — only when it is exactly a 2-D Gemm.

Add(MatMul(A, B), C) = Gemm(A, B, C) with α = β = 1 when A is [M, K], B is [K, N] and C broadcasts
one-way to [M, N] (C of shape [N], [1, N], [M, 1], [M, N] or a scalar). Rank > 2 products are left
alone: folding them needs Reshapes around the Gemm, which is not cheaper for TVM or onnxruntime.
onnxscript's `matmul_add_to_gemm_rule` is not reused: it does not check C's shape (a [B, M, N]
bias would be silently broadcast away) and matches only Add(MatMul, C), not Add(C, MatMul).
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from passc.passes.fuse._common import FLOAT_TYPES, dims, fail, same_dim

from passc.graph import onnx_opset

__all__ = ["gemm_rules"]


class _MatMulAddToGemm(pattern.RewriteRuleClassBase):
    def __init__(self) -> None:
        super().__init__(name="matmul-add-gemm")

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b, _outputs=["product"]), c, _outputs=["out"])

    def check(self, context, a, b, c, product, out, **_):
        matmul, add = product.producer(), out.producer()
        if onnx_opset(context.model) < 11:
            return fail("Gemm with a broadcast bias needs opset 11", add)
        a_dims, b_dims, c_dims = dims(a), dims(b), dims(c)
        if a_dims is None or b_dims is None:
            return fail("the MatMul operands' ranks are unknown", matmul)
        if len(a_dims) != 2 or len(b_dims) != 2:
            return fail(f"MatMul operands have ranks {len(a_dims)} and {len(b_dims)}, not 2 and 2", matmul)
        if a.dtype not in FLOAT_TYPES:
            return fail(f"MatMul is {a.dtype}, not float or double (onnxruntime's Gemm types)", matmul)
        if c_dims is None:
            return fail(f"the shape of bias {c.name!r} is unknown", add)
        if len(c_dims) > 2:
            return fail(f"bias {c.name!r} has rank {len(c_dims)} > 2: the Add broadcasts the product", add)
        out_dims = (a_dims[0], b_dims[1])
        for have, want in zip(reversed(c_dims), reversed(out_dims), strict=False):
            if not (have == 1 or same_dim(have, want)):
                return fail(
                    f"bias {c.name!r} of shape {list(c_dims)} does not broadcast one-way to "
                    f"[{out_dims[0]}, {out_dims[1]}]",
                    add,
                )
        return pattern.MatchResult()

    def rewrite(self, op, a, b, c, out, **_):
        return op.Gemm(a, b, c, _name=out.producer().name)


def gemm_rules() -> dict[str, list[pattern.RewriteRule]]:
    """`matmul-add-gemm`, with the Add's operands in either order."""
    return {"matmul-add-gemm": list(_MatMulAddToGemm.rule().commute())}
