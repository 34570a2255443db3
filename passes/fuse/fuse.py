"""The `fuse` pass: pattern rules that fold, fuse and remove ops, applied until none fires."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import RewriteRuleSet
from passc.passes.fuse.constants import fold_small_constants
from passc.passes.fuse.rules import CONSTANTS, IDENTITY, RULE_NAMES, RuleEntry, catalogue

from passc.errors import PasscError
from passc.explain import Match, RuleReport
from passc.pass_base import PasscPass
from passc.registry import register_pass
from passc.rule_tracing import NearMissTracer, RecordingRule

__all__ = ["Fuse"]

logger = logging.getLogger(__name__)

_ATTENTION_FORMS = ("decomposed", "onnx")


@register_pass("fuse")
class Fuse(PasscPass):
    """Folds BN/Mul/Add/Pad into convs, MatMul+Add into Gemm; fuses norms, GELU, attention; drops no-ops.

    A round folds the small constants canonicalize left for their size (constants.py), applies
    every selected rule once over the graph (see passes/fuse/rules.py for the names and order),
    then removes Identity nodes; rounds repeat until none fires. Each rule keeps
    the model standard ONNX at its own opset that onnxruntime's CPU EP and TVM's Relax frontend
    both run. Exact up to float rounding: folds reassociate products (Conv+BN, Conv+Mul).
    `self.fired` (rule → count, in the pass log) and `self.report` (where each rule matched, and with
    `explain` why near misses did not) tell what the last run did.
    """

    explains = True

    @dataclass(frozen=True, kw_only=True)
    class Options:
        rules: tuple[str, ...] = field(default=(), metadata={"help": "rules to apply (default: all)"})
        exclude: tuple[str, ...] = field(default=(), metadata={"help": "rules not to apply"})
        max_rounds: int = field(default=8, metadata={"help": "rounds before giving up on a fixed point"})
        attention: str = field(
            default="decomposed",
            metadata={"help": "decomposed, or onnx: the Attention op at opset >= 23 (not TVM)"},
        )
        onnxruntime_ops: bool = field(
            default=False,
            metadata={
                "help": "also fuse into onnxruntime's com.microsoft ops (Attention, SkipLayerNormalization, "
                "BiasGelu, …): for models onnxruntime runs (passc optimize); TVM cannot lower them"
            },
        )

        def __post_init__(self) -> None:
            unknown = [name for name in (*self.rules, *self.exclude) if name not in RULE_NAMES]
            if unknown:
                raise ValueError(f"unknown fuse rule {unknown[0]!r} (rules: {', '.join(RULE_NAMES)})")
            if self.max_rounds < 1:
                raise ValueError(f"max_rounds must be at least 1, got {self.max_rounds}")
            if self.attention not in _ATTENTION_FORMS:
                raise ValueError(f"attention must be one of {', '.join(_ATTENTION_FORMS)}")

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.report = RuleReport(fired=self.fired)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        selected = set(self.options.rules or RULE_NAMES) - set(self.options.exclude)
        entries = [e for e in catalogue(self.options.attention).values() if e.name in selected]
        self.fired.clear()
        report = self.report = RuleReport(fired=self.fired)
        snapshot = _Snapshot(model)
        created: set[ir.Node] = set()
        originals = {n for n in ir.traversal.RecursiveGraphIterator(model.graph) if _is_identity(n)}
        for _ in range(self.options.max_rounds):
            folded = fold_small_constants(model) if CONSTANTS in selected else []
            if folded:
                report.fired[CONSTANTS] += len(folded)
                report.matches.extend(Match(CONSTANTS, (name,)) for name in folded)
            changed = len(folded) + self._round(model, entries, report, snapshot, created)
            dropped = _drop_identities(model, originals if IDENTITY in selected else set(), originals)
            if dropped:
                report.fired[IDENTITY] += dropped
            if not (changed or dropped):
                break
        else:
            logger.warning("fuse: still changing after %d rounds", self.options.max_rounds)
        if self.options.onnxruntime_ops:
            report.fired.update(_onnxruntime_fusions(model))
        if self.explain:
            _infer_shapes(model, snapshot)
            report.near_misses.extend(_near_misses(model, entries, created))
        if report.fired:
            common_passes.RemoveUnusedNodesPass()(model)
            logger.info("fuse: %s", report.summary())
            for match in report.matches:
                logger.debug("fuse: %s replaced %s", match.rule, ", ".join(match.nodes))
        else:
            snapshot.restore()  # shapes inferred to check the rules are not the pass's to keep
        return ir.passes.PassResult(model, modified=bool(report.fired))

    @staticmethod
    def _round(
        model: ir.Model, entries: list[RuleEntry], report: RuleReport, snapshot: _Snapshot, created: set
    ) -> int:
        """Applies each rule once over the graph; returns how many rewrites were made."""
        _infer_shapes(model, snapshot)
        present = _op_types(model)
        changed = 0
        for entry in entries:
            if not entry.needs <= present:
                continue
            rules = [RecordingRule(entry.name, rule, report.matches, created) for rule in entry.rules]
            count = RewriteRuleSet(rules).apply_to_model(model)  # type: ignore[arg-type]
            if count:
                report.fired[entry.name] += count
                changed += count
                present = _op_types(model)
        return changed


def _near_misses(model: ir.Model, entries: list[RuleEntry], created: set[ir.Node]):
    """Matches each rule against the final graph without rewriting, to say why it did not fire."""
    present = _op_types(model)
    for entry in entries:
        if not entry.needs <= present:
            continue
        tracer = NearMissTracer(entry.name, created)
        RewriteRuleSet(list(entry.rules)).apply_to_model(model, tracer=tracer)
        yield from tracer.near_misses()


def _op_types(model: ir.Model) -> set[str]:
    return {
        n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.domain in ("", "ai.onnx")
    }


def _is_identity(node: ir.Node) -> bool:
    return node.op_type == "Identity" and node.domain in ("", "ai.onnx")


class _Snapshot:
    """Value shapes and types as the pass found them, to put back when it changes nothing."""

    def __init__(self, model: ir.Model) -> None:
        graph = model.graph
        values = [*graph.inputs, *graph.initializers.values()]
        values += [v for n in ir.traversal.RecursiveGraphIterator(graph) for v in n.outputs]
        self._graph = graph
        self._values = {v: (v.shape, v.type, v.const_value) for v in values}
        self._inputs = [(v.shape, v.type) for v in graph.inputs]
        self._outputs = [(v.shape, v.type) for v in graph.outputs]

    def restore_signature(self) -> None:
        """Graph inputs and outputs keep their declared shapes (inference may rename their dims).

        By position: a rewrite replaces an output value with a new one of the same name."""
        for values, saved in ((self._graph.inputs, self._inputs), (self._graph.outputs, self._outputs)):
            for value, (shape, type_) in zip(values, saved, strict=True):
                value.shape, value.type = shape, type_

    def restore(self) -> None:
        for value, (shape, type_, const) in self._values.items():
            value.shape, value.type, value.const_value = shape, type_, const


def _infer_shapes(model: ir.Model, snapshot: _Snapshot) -> None:
    """Shapes for the rules' checks; without them (inference failed) the checks say 'unknown'."""
    common_passes.ShapeInferencePass(strict_mode=False)(model)
    snapshot.restore_signature()


def _drop_identities(model: ir.Model, removable: set[ir.Node], originals: set[ir.Node]) -> int:
    """Removes Identity nodes made by rules, and `removable` ones; returns how many originals went.

    y = Identity(x) goes by pointing y's uses at x; when y is a graph output, x takes y's name,
    which is impossible when x is itself a graph input, output or initializer (then it stays)."""
    dropped = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if not _is_identity(node) or (node in originals and node not in removable):
            continue
        source, result = node.inputs[0], node.outputs[0]
        graph = node.graph
        if source is None or graph is None:
            continue
        is_output = result.is_graph_output()
        if is_output:
            producer = source.producer()
            if producer is None or producer.graph is not graph or source.is_graph_output():
                continue
        ir.convenience.replace_all_uses_with(result, source, replace_graph_outputs=True)
        if is_output:
            source.name = result.name
        graph.remove(node, safe=True)
        dropped += node in originals
    return dropped


def _onnxruntime_fusions(model: ir.Model) -> dict[str, int]:
    """onnxscript's fusions into onnxruntime's contrib ops (`optimize_for_ort`), in place; counts by
    fusion. They run onnxscript's whole optimizer too (its pattern rewrites included), which the
    standard path leaves out: this option is for onnxruntime deployments only.
    """
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    fused, counts = optimize_for_ort(model)
    if fused is not model:
        raise PasscError("onnxscript's ort fusions returned a new model instead of rewriting in place")
    return {f"ort-{name.replace('_', '-')}": n for name, n in counts.items() if n}
