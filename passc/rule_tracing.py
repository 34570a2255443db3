"""How a rule-based pass fills its `passc.explain.RuleReport`: where rules matched, why near misses failed.

Matches are recorded by wrapping each onnxscript rule (`RecordingRule`); near misses come from
onnxscript's tracer hook (`MatchingTracer.log`), which sees every attempted match with its status
and the reason a `check()` gave.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchingTracer, MatchResult, MatchStatus, RewriteRule

from passc.explain import Match, NearMiss
from passc.graph import describe

__all__ = ["NOT_A_NEAR_MISS", "NearMissTracer", "RecordingRule"]

_OTHER_USES = "other uses"
# A check() reason that starts with this rejects a match the pattern could not rule out by its
# structure alone (a Mul whose other operand is not a constant): it is not reported as a near miss.
NOT_A_NEAR_MISS = "(no near miss) "


class RecordingRule:
    """Wraps a rewrite rule for a `RewriteRuleSet` and records each match that it rewrites."""

    def __init__(self, name: str, rule: RewriteRule, matches: list[Match], created: set[ir.Node]) -> None:
        self.name = name
        self._rule, self._matches, self._created = rule, matches, created
        self.remove_nodes = rule.remove_nodes
        self.as_function = rule.as_function
        self.graph_pre_visitor = rule.graph_pre_visitor
        self.graph_post_visitor = rule.graph_post_visitor

    def try_rewrite(self, model, graph_or_function, node, *, verbose=None, tracer=None):
        delta = self._rule.try_rewrite(model, graph_or_function, node, verbose=verbose, tracer=tracer)
        # The rule set skips rewrites that add initializers inside a function; so does the record.
        skipped = delta is not None and delta.new_initializers and isinstance(graph_or_function, ir.Function)
        if delta is not None and tracer is None and not skipped:
            self._matches.append(Match(self.name, tuple(describe(n) for n in delta.match.nodes)))
            self._created.update(delta.new_nodes)
        return delta


class NearMissTracer(MatchingTracer):
    """Keeps, per root node, the best failed match of one rule: a `check()` that said no, or a
    complete match blocked because an intermediate value has another consumer.

    Matches that fail on the pattern's structure (a different op, a missing input) are not near
    misses; nor are rejections of one-node patterns (every Cast that changes type is not a
    "near miss" of noop-cast), nor a rule looking at what this run's rules wrote."""

    def __init__(self, rule: str, created: set[ir.Node]) -> None:
        super().__init__()
        self._rule, self._created = rule, created
        self._best: dict[ir.Node, tuple[int, NearMiss]] = {}

    def log(self, rule, container, node, match_result: MatchResult, status: MatchStatus) -> None:
        matched = list(match_result.nodes)
        if len(matched) < 2 or node in self._created:
            return
        reason = match_result.reason
        if reason.startswith(NOT_A_NEAR_MISS):
            return
        if status == MatchStatus.NO_MATCH and _OTHER_USES in reason:
            reason = "an intermediate value has another consumer or is a graph output"
        elif status != MatchStatus.CONDITION_FAILED:
            return
        score = len(matched) + 100 * int(status)
        if node in self._best and self._best[node][0] >= score:
            return
        self._best[node] = (score, NearMiss(self._rule, tuple(describe(n) for n in matched), reason))

    def near_misses(self) -> list[NearMiss]:
        return [miss for _, miss in self._best.values()]
