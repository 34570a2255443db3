"""Ops that return their input unchanged at inference time, replaced by Identity (then removed).

Dropout in inference mode; Cast to the input's own type (onnxscript); Expand to the input's own
shape (onnxscript); Slice that keeps every element (start 0, end past the dim, step 1).
Identity nodes themselves are removed by the pass (rule `identity`), not by a pattern rule.
onnxscript's dropout rules match only the pre-opset-12 attribute form and its slice rules give no
reasons, so those are written here.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import no_op_cast_rule, no_op_expand_rule
from passc.passes.fuse._common import dims, fail

from passc.graph import constant, onnx_opset

__all__ = ["no_op_rules"]

_INT64_MAX = 2**63 - 1


class _InferenceDropout(pattern.RewriteRuleClassBase):
    def __init__(self) -> None:
        super().__init__(name="dropout")

    def pattern(self, op, x):
        return op.Dropout(x, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, out, **_):
        node = out.producer()
        if onnx_opset(context.model) < 7 and not node.attributes.get_int("is_test", 0):
            return fail("Dropout before opset 7 without is_test=1 is in training mode", node)
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is not None:
            flag = constant(training)
            if flag is None or flag.size != 1 or bool(flag.reshape(())):
                return fail("Dropout's training_mode is not a constant false", node)
        return pattern.MatchResult()

    def rewrite(self, op, x, **_):
        return op.Identity(x)


class _NoOpSlice(pattern.RewriteRuleClassBase):
    def __init__(self) -> None:
        super().__init__(name="noop-slice")

    def pattern(self, op, data, starts, ends):
        return op.Slice(data, starts, ends, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, data, starts, ends, out, **_):
        node = out.producer()
        optional = list(node.inputs[3:5]) + [None, None]
        axes_value, steps_value = optional[0], optional[1]
        values = [constant(v) for v in (starts, ends)]
        if any(v is None for v in values):
            return fail("Slice starts or ends are not constant", node)
        starts_list, ends_list = ([int(a) for a in v.reshape(-1)] for v in values)
        shape = dims(data)
        axes = list(range(len(starts_list)))
        if axes_value is not None:
            array = constant(axes_value)
            if array is None:
                return fail("Slice axes are not constant", node)
            axes = [int(a) for a in array.reshape(-1)]
        steps = [1] * len(axes)
        if steps_value is not None:
            array = constant(steps_value)
            if array is None:
                return fail("Slice steps are not constant", node)
            steps = [int(a) for a in array.reshape(-1)]
        if not len(axes) == len(starts_list) == len(ends_list) == len(steps):
            return fail("Slice starts, ends, axes and steps differ in length", node)
        for axis, start, end, step in zip(axes, starts_list, ends_list, steps, strict=True):
            dim = None
            if shape is not None and -len(shape) <= axis < len(shape):
                dim = shape[axis]
            known = isinstance(dim, int)
            if step != 1:
                return fail(f"Slice step on axis {axis} is {step}", node)
            if not (start == 0 or (known and start <= -dim)):
                return fail(f"Slice starts at {start} on axis {axis}", node)
            if not (end >= _INT64_MAX or (known and end >= dim)):
                return fail(f"Slice ends at {end} on axis {axis} (dim {dim})", node)
        return pattern.MatchResult()

    def rewrite(self, op, data, **_):
        return op.Identity(data)


def no_op_rules() -> dict[str, list[pattern.RewriteRule]]:
    """`dropout`, `noop-cast`, `noop-expand`, `noop-slice`."""
    return {
        "dropout": [_InferenceDropout.rule()],
        "noop-cast": [no_op_cast_rule],
        "noop-expand": [no_op_expand_rule],
        "noop-slice": [_NoOpSlice.rule()],
    }
