"""What a pass that explains itself (`PasscPass.explains`) reports about one run, for
`passc optimize --explain`: where its rules fired, and why they did not where they nearly did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Match", "NearMiss", "RuleReport"]


@dataclass(frozen=True)
class Match:
    rule: str
    nodes: tuple[str, ...]  # the nodes the rule replaced, its root (last op) first


@dataclass(frozen=True)
class NearMiss:
    rule: str
    nodes: tuple[str, ...]  # the nodes that matched the pattern, its root (last op) first
    reason: str


@dataclass
class RuleReport:
    """One run of a rule-based pass: rewrites by rule, where each fired, and near misses (these only
    when the pass ran with `explain`)."""

    fired: Counter[str] = field(default_factory=Counter)
    matches: list[Match] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)

    def summary(self) -> str:
        """`rule xN, …` in firing order, or `nothing fired`."""
        if not self.fired:
            return "nothing fired"
        return ", ".join(f"{rule} x{count}" for rule, count in self.fired.items())
