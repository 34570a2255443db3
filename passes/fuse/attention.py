"""Scaled dot-product attention recognised from its decomposed form, rewritten to its smallest one.

Matched:  MatMul(Softmax(MatMul(q·s_q, kᵀ·s_k)·s_qk [+ mask], axis=-1), v)   with q, kᵀ, v of rank 4,
where each scale is an optional scalar Mul or Div and kᵀ is Transpose(k, [0, 1, 3, 2]) (k is
[B, H, S, d]), Transpose(k, [0, 2, 3, 1]) (k is [B, S, H, d]), the Reshape → Transpose([0, 2, 1])
→ Reshape chain torch's exporter writes for the former, or any other [B, H, d, S] tensor.
Emitted (default, `attention="decomposed"`):
    MatMul(Softmax(MatMul(q · s, kᵀ) [+ mask]), v),   s = s_q · s_k · s_qk,  kᵀ one Transpose of k
only when that has fewer nodes than the match (torch's SDPA export scales q and k separately and
transposes k through two Reshapes). Standard opset-13 ops, which onnxruntime and TVM both run.
Scaling q once by s rather than q and k by √s each is exact up to float rounding.
With `attention="onnx"` and a model at opset ≥ 23, one ONNX Attention op is emitted instead;
onnxruntime runs it, TVM 0.27's Relax frontend cannot import it (its converter is com.microsoft's).
onnxscript's SDPA fusion is the model for this rule; it emits an internal-domain op, so it is not
reused as is.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern
from passc.passes.fuse._common import FLOAT_TYPES, dims, fail, same_dim, scalar

from passc.graph import fresh_initializer, onnx_opset

__all__ = ["attention_rules"]

_PERMS = {"bhsd": [0, 1, 3, 2], "bshd": [0, 2, 3, 1]}


def _scaled(op, value, factor, tag):
    return pattern.OrValue(
        [op.Mul(value, factor), op.Div(value, factor), value], tag_var=tag, tag_values=["mul", "div", None]
    )


class _Attention(pattern.RewriteRuleClassBase):
    def __init__(self, emit: str) -> None:
        super().__init__(name="attention")
        self._emit = emit

    def pattern(self, op, q, k, key, v, mask, q_scale, k_scale, qk_scale, shape_3d, shape_4d):
        key_t = pattern.OrValue(
            [
                op.Transpose(k, perm=_PERMS["bhsd"]),
                op.Reshape(
                    op.Transpose(op.Reshape(k, shape_3d, _outputs=["k_3d"]), perm=[0, 2, 1]),
                    shape_4d,
                    _outputs=["k_t"],
                ),
                op.Transpose(k, perm=_PERMS["bshd"]),
                key,
            ],
            tag_var="key_path",
            tag_values=["bhsd", "reshape", "bshd", "other"],
        )
        scores = op.MatMul(_scaled(op, q, q_scale, "q_op"), _scaled(op, key_t, k_scale, "k_op"))
        scores = _scaled(op, scores, qk_scale, "qk_op")
        masked = pattern.OrValue([op.Add(scores, mask), scores], tag_var="has_mask", tag_values=[True, False])
        weights = op.Softmax(masked, _outputs=["weights"])
        return op.MatMul(weights, v, _outputs=["out"])

    def check(self, context, q, k, key, v, mask, key_path, weights, out, k_3d=None, k_t=None, **scales):
        softmax = weights.producer()
        opset = onnx_opset(context.model)
        axis = softmax.attributes.get_int("axis", -1 if opset >= 13 else 1)
        if axis not in (-1, 3):
            return fail(f"Softmax runs over axis {axis}, not the last one", softmax)
        if key_path == "reshape" and self._reshape_chain_reason(dims(k), dims(k_3d), dims(k_t)):
            key_path = "chain"  # not provably a transpose of a 4-D k: kept as it is
        shapes = [dims(t) for t in (q, k_t if key_path == "chain" else key if key_path == "other" else k, v)]
        if any(s is None or len(s) != 4 for s in shapes):
            return fail("q, kᵀ and v are not all of known rank 4", out.producer())
        if q.dtype not in FLOAT_TYPES:
            return fail(f"attention is computed in {q.dtype}, not float or double", out.producer())
        scale = 1.0
        for tag, name in (("q_op", "q_scale"), ("k_op", "k_scale"), ("qk_op", "qk_scale")):
            kind = scales.get(tag)
            if kind is None:
                continue
            factor = scalar(scales[name])
            if factor is None or factor == 0:
                return fail(f"{name} is not a non-zero scalar constant", out.producer())
            scale *= factor if kind == "mul" else 1.0 / factor
        if self._emit == "onnx":
            if key_path in ("other", "chain"):
                return fail("kᵀ is not provably a Transpose of a 4-D k", out.producer())
            if opset < 23:
                return fail(f"ONNX Attention needs opset 23, the model is opset {opset}", out.producer())
            mask_dims = None if mask is None else dims(mask)
            if mask is not None and (mask_dims is None or len(mask_dims) > 4):
                return fail("the mask's rank is unknown or above 4", out.producer())
        else:
            key_nodes = {"other": 0, "chain": 3}.get(key_path, 1)
            smallest = 3 + key_nodes + (mask is not None) + (scale != 1.0)
            if len(context.nodes) <= smallest:
                return fail(f"already minimal ({len(context.nodes)} nodes)", out.producer())
        key_format = {"bshd": "bshd", "other": None, "chain": "chain"}.get(key_path, "bhsd")
        self._plan = (scale, key_format, context.graph_or_function)
        return pattern.MatchResult()

    @staticmethod
    def _reshape_chain_reason(k_dims, k3_dims, kt_dims) -> str:
        """Why Reshape([B·H, S, d]) → Transpose → Reshape([B, H, d, S]) is not k transposed, or ""."""
        if k_dims is None or len(k_dims) != 4:
            return "the key is not of known rank 4"
        if k3_dims is None or kt_dims is None or len(k3_dims) != 3 or len(kt_dims) != 4:
            return "the shapes around the key's Reshape-Transpose-Reshape are unknown"
        batch, heads, seq, depth = k_dims
        if not (same_dim(k3_dims[1], seq) and same_dim(k3_dims[2], depth)):
            return f"the key's first Reshape gives {list(k3_dims)}, not [B*H, S, d]"
        expected = (batch, heads, depth, seq)
        if not all(same_dim(a, b) for a, b in zip(kt_dims, expected, strict=True)):
            return f"the key's second Reshape gives {list(kt_dims)}, not [B, H, d, S]"
        return ""

    def rewrite(self, op, q, k, key, v, mask, out, shape_3d=None, shape_4d=None, k_3d=None, k_t=None, **_):
        scale, key_format, graph = self._plan
        name = out.producer().name
        if self._emit == "onnx":
            if key_format == "bshd":
                k = op.Transpose(k, perm=[0, 2, 1, 3])
            inputs = [q, k, v] + ([mask] if mask is not None else [])
            return op.Attention(*inputs, scale=scale, _name=name)
        if scale != 1.0:
            factor = fresh_initializer(
                op, graph, np.array(scale, q.dtype.numpy()), f"{name or 'attention'}_scale"
            )
            q = op.Mul(q, factor)
        if key_format is None:
            key_t = key
        elif key_format == "chain":
            first, second = k_3d.producer().attributes, k_t.producer().attributes
            key_3d = op.Reshape(k, shape_3d, **first)
            key_t = op.Reshape(op.Transpose(key_3d, perm=[0, 2, 1]), shape_4d, **second)
        else:
            key_t = op.Transpose(k, perm=_PERMS[key_format])
        scores = op.MatMul(q, key_t)
        if mask is not None:
            scores = op.Add(scores, mask)
        return op.MatMul(op.Softmax(scores, axis=-1), v, _name=name)


def attention_rules(emit: str) -> dict[str, list[pattern.RewriteRule]]:
    """`attention`: scaled dot-product attention, emitted decomposed or as ONNX Attention."""
    return {"attention": list(_Attention.rule(emit).commute())}
