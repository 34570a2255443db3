"""The Relax stage of the pipeline: registered `RelaxPass`es run on the imported Relax module,
after import and before the backend legalizes it, logged like the ONNX passes. Part of the TVM
layer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from passc.lowering import distinct_constants
from passc.pipeline import PassRecord, PassSpec, run_pass
from passc.stats import ModelStats

__all__ = ["relax_stats", "run_relax_passes"]


def _static(shape: Any) -> list[int] | None:
    try:
        return [int(d) for d in shape.values]
    except (TypeError, AttributeError):
        return None


def _call_macs(call: Any) -> int:
    """MACs of a conv2d or matmul call with static shapes: output elements × reduction length.

    conv2d: |Y| · (C_in / groups) · Kh · Kw (weight OIHW: I is already C_in / groups).
    matmul: |Y| · K, K the first operand's last dim."""
    op = getattr(call.op, "name", "")
    if op not in ("relax.nn.conv2d", "relax.matmul"):
        return 0
    out = _static(getattr(call.ty, "shape", None))
    if out is None:
        return 0
    if op == "relax.matmul":
        first = _static(getattr(call.args[0].ty, "shape", None))
        return math.prod(out) * first[-1] if first else 0
    weight = _static(getattr(call.args[1].ty, "shape", None))
    return math.prod(out) * math.prod(weight[1:]) if weight else 0


def relax_stats(mod: Any) -> ModelStats:
    """The pass log's counts for a Relax module: operator calls in its Relax functions (as nodes),
    distinct constant tensors (as initializers) and their elements, and the MACs of its conv2d and
    matmul calls."""
    import tvm
    from tvm import relax

    calls = macs = 0

    def visit(expr: Any) -> None:
        nonlocal calls, macs
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            calls += 1
            macs += _call_macs(expr)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    constants = distinct_constants(mod).values()
    return ModelStats(calls, len(constants), sum(a.size for a in constants), macs)


def run_relax_passes(
    mod: Any, specs: list[PassSpec], *, progress: Callable[[str], None] = lambda _: None
) -> tuple[Any, list[PassRecord]]:
    """Runs the Relax passes `specs` in order; returns the module and a record of each."""
    records = []
    after = relax_stats(mod)
    for spec in specs:
        instance = spec.instantiate()
        before = after  # the module as the previous pass left it
        result, seconds = run_pass(instance, mod)
        mod = result.mod
        after = relax_stats(mod)
        record = PassRecord(
            spec.name,
            dataclasses.asdict(instance.options),
            result.modified,
            seconds,
            before,
            after,
            dict(sorted(instance.fired.items())),
            instance.tolerance,
        )
        records.append(record)
        progress(record.progress_line())
    return mod, records
