"""An explicit Pad folded into the `pads` of the Conv, AveragePool or MaxPool that reads it.

Conv(Pad(x, p, 0)) = Conv(x, pads + p): a conv pads with zeros.
AveragePool(Pad(x, p, 0)) = AveragePool(x, pads + p, count_include_pad=1): the explicit zeros are
counted in each window's mean, so the pool must count its pads too (only possible when it was
already counting them, or had none).
MaxPool(Pad(x, p, −inf)) = MaxPool(x, pads + p): a max pool's padding is −inf.
Only spatial axes may be padded, only in constant mode, and pools keep ceil_mode = 0 and pads
smaller than the kernel (onnxruntime's limit). onnxscript's `fuse_pad_into_conv_rule` covers
Conv only and indexes a Pad's inputs without checking the opset-2 attribute form; this rule
reads both forms.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern
from passc.passes.fuse._common import fail, scalar

from passc.graph import constant

__all__ = ["pad_rules"]


def _pad_amounts(pad, out_rank: int | None):
    """(begin+end pads per axis as [b0…, e0…], fill value) of a constant-mode Pad, or a failure."""
    mode = pad.attributes.get_string("mode", "constant")
    if mode != "constant":
        return fail(f"Pad mode is {mode!r}, not 'constant'", pad)
    if "pads" in pad.attributes:  # opset 2–10
        amounts = list(pad.attributes.get_ints("pads"))
        value = pad.attributes.get_float("value", 0.0)
        axes = None
    else:
        amounts_array = constant(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if amounts_array is None:
            return fail("Pad amounts are not a constant", pad)
        amounts = [int(a) for a in amounts_array.reshape(-1)]
        fill = pad.inputs[2] if len(pad.inputs) > 2 else None
        value = 0.0 if fill is None else scalar(fill)
        if value is None:
            return fail("Pad value is not a constant", pad)
        axes_value = pad.inputs[3] if len(pad.inputs) > 3 else None
        axes = None
        if axes_value is not None:
            axes_array = constant(axes_value)
            if axes_array is None:
                return fail("Pad axes are not a constant", pad)
            axes = [int(a) for a in axes_array.reshape(-1)]
    if axes is None:
        if out_rank is not None and len(amounts) != 2 * out_rank:
            return fail(f"Pad has {len(amounts)} amounts for a rank-{out_rank} input", pad)
        return amounts, value
    if out_rank is None:
        return fail("Pad names axes but the input rank is unknown", pad)
    full = [0] * (2 * out_rank)
    for i, axis in enumerate(axes):
        axis = axis + out_rank if axis < 0 else axis
        full[axis], full[axis + out_rank] = amounts[i], amounts[i + len(axes)]
    return full, value


class _PadInto(pattern.RewriteRuleClassBase):
    """Pad → Conv / AveragePool / MaxPool, the Pad's amounts added to the consumer's pads."""

    def __init__(self, consumer: str) -> None:
        super().__init__(name=f"pad-{consumer.lower()}")
        self._consumer = consumer

    def pattern(self, op, x):
        padded = op.Pad(x, _allow_other_inputs=True, _outputs=["padded"])
        return getattr(op, self._consumer)(padded, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, padded, out, **_):
        pad, node = padded.producer(), out.producer()
        spatial = self._spatial_rank(node)
        amounts_value = _pad_amounts(pad, None if spatial is None else spatial + 2)
        if isinstance(amounts_value, pattern.MatchResult):
            return amounts_value
        amounts, value = amounts_value
        out_rank = len(amounts) // 2
        if spatial is not None and out_rank != spatial + 2:
            return fail(f"Pad rank {out_rank} does not match {node.op_type}", pad)
        if any(a < 0 for a in amounts):
            return fail("Pad crops (negative amounts)", pad)
        if any(amounts[i] or amounts[i + out_rank] for i in (0, 1)):
            return fail("Pad pads the batch or channel axis", pad)
        auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            return fail(f"{node.op_type} uses auto_pad={auto_pad}", node)
        added = amounts[2:out_rank] + amounts[out_rank + 2 :]
        own = list(node.attributes.get_ints("pads", [0] * len(added)))
        if auto_pad == "VALID":
            own = [0] * len(added)
        pads = [a + b for a, b in zip(own, added, strict=True)]
        reason = self._consumer_reason(node, value, own, pads)
        if reason:
            return fail(reason, node, pad)
        self._pads = pads
        return pattern.MatchResult()

    def _spatial_rank(self, node) -> int | None:
        if self._consumer == "Conv":
            weight = node.inputs[1] if len(node.inputs) > 1 else None
            shape = None if weight is None else weight.shape
            array = constant(weight)
            if array is not None:
                return array.ndim - 2
            return None if shape is None else len(shape) - 2
        kernel = node.attributes.get_ints("kernel_shape", None)
        return None if kernel is None else len(kernel)

    def _consumer_reason(self, node, value: float, own: list[int], pads: list[int]) -> str:
        """Why the Pad cannot fold into this consumer, or "" when it can."""
        if self._consumer == "Conv":
            return "" if value == 0 else f"Pad value is {value:g}; Conv pads with 0"
        if node.attributes.get_int("ceil_mode", 0):
            return f"{node.op_type} uses ceil_mode=1"
        kernel = list(node.attributes.get_ints("kernel_shape"))
        half = len(pads) // 2
        if any(p >= k for p, k in zip(pads[:half] + pads[half:], kernel + kernel, strict=True)):
            return f"folded pads {pads} would reach the kernel size {kernel} (onnxruntime rejects that)"
        if self._consumer == "MaxPool":
            if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
                return "MaxPool's Indices output is used (indices would change)"
            return "" if value == -math.inf else f"Pad value is {value:g}; MaxPool pads with -inf"
        if value != 0:
            return f"Pad value is {value:g}; AveragePool pads with 0"
        if not node.attributes.get_int("count_include_pad", 0) and any(own):
            return "AveragePool has its own pads with count_include_pad=0 (explicit zeros are counted)"
        return ""

    def rewrite(self, op, x, out, **_):
        node = out.producer()
        attributes = {k: v for k, v in node.attributes.items() if k not in ("pads", "auto_pad")}
        if self._consumer == "AveragePool":
            attributes.pop("count_include_pad", None)
            attributes["count_include_pad"] = 1
        return op.op(self._consumer, x, *node.inputs[1:], pads=self._pads, _name=node.name, **attributes)


def pad_rules() -> dict[str, list[pattern.RewriteRule]]:
    """`pad-conv`, `pad-averagepool`, `pad-maxpool`."""
    rules = (_PadInto.rule(consumer) for consumer in ("Conv", "AveragePool", "MaxPool"))
    return {rule.name: [rule] for rule in rules}
