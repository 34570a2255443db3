"""The bit-assignment integer linear program (OHQ / HAWQ-V3), solved by HiGHS (scipy.optimize.milp).

One binary x[i, w] per layer i and candidate width w:

    minimise    Σᵢ Σ_w Ωᵢ(w) · x[i, w]                      (distortions measured per layer alone,
                                                              assumed additive)
    subject to  Σ_w x[i, w] = 1                 for each layer i
                x[i, w] = x[j, w]               for tied layers i, j and each w
                Σᵢ Σ_w costₖ(i, w) · x[i, w] ≤ Bₖ  for each budget k

The smallest feasible budget of one kind, the others ignored, is Σ over tie groups of the group's
cheapest width: the groups are independent once only one budget remains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from passc.errors import PasscError, UsageError

__all__ = ["Problem", "Solution", "solve", "smallest_budget", "tie_groups"]


@dataclass(frozen=True)
class Problem:
    """Layers × widths tables; `limits` bound the summed costs; `ties` index layers sharing a width."""

    layers: tuple[str, ...]
    widths: tuple[int, ...]
    distortion: np.ndarray  # [layers, widths]
    costs: dict[str, np.ndarray]  # budget kind → [layers, widths]
    limits: dict[str, float]  # budget kind → the most its costs may sum to
    ties: tuple[tuple[int, ...], ...] = ()
    show: dict[str, Callable[[float], str]] = field(default_factory=dict)  # formats a total of a kind

    def shown(self, kind: str, total: float) -> str:
        return self.show[kind](total) if kind in self.show else f"{total:g}"

    def totals(self, choice: tuple[int, ...]) -> dict[str, float]:
        """Each kind's summed cost of a choice (one width index per layer)."""
        rows = np.arange(len(self.layers))
        return {k: table[rows, list(choice)].sum().item() for k, table in self.costs.items()}

    def objective(self, choice: tuple[int, ...]) -> float:
        return float(self.distortion[np.arange(len(self.layers)), list(choice)].sum())

    def holds(self, choice: tuple[int, ...]) -> bool:
        totals = self.totals(choice)
        return all(totals[k] <= limit for k, limit in self.limits.items())


@dataclass(frozen=True)
class Solution:
    method: str
    choice: tuple[int, ...]  # width index per layer
    widths: dict[str, int]  # layer → width
    objective: float  # Σ Ω
    totals: dict[str, float]
    gap: float = 0.0  # relative optimality gap (HiGHS); 0 when proven optimal
    seconds: float = 0.0


def tie_groups(problem: Problem) -> list[list[int]]:
    """Every layer in exactly one group: the tied groups merged where they overlap, the rest alone."""
    parent = list(range(len(problem.layers)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in problem.ties:
        for a, b in zip(group, group[1:], strict=False):
            parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in range(len(problem.layers)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def solution(problem: Problem, method: str, choice: tuple[int, ...], **extra: float) -> Solution:
    widths = {name: problem.widths[j] for name, j in zip(problem.layers, choice, strict=True)}
    return Solution(method, choice, widths, problem.objective(choice), problem.totals(choice), **extra)


def smallest_budget(problem: Problem, kind: str) -> float:
    """The least total of `kind` any assignment reaches (ties respected, other budgets ignored)."""
    table = problem.costs[kind]
    return float(sum(table[group].sum(axis=0).min() for group in tie_groups(problem)))


def _infeasible(problem: Problem) -> UsageError:
    least = {k: smallest_budget(problem, k) for k in problem.limits}
    for kind, limit in problem.limits.items():
        if least[kind] > limit:
            return UsageError(
                f"assign-bits: the {kind} budget {problem.shown(kind, limit)} is infeasible: the smallest "
                f"feasible {kind} budget is {problem.shown(kind, least[kind])} (every assigned layer at "
                "its cheapest width, ties and float layers as given)"
            )
    needs = ", ".join(f"{k} ≥ {problem.shown(k, v)}" for k, v in least.items())
    return UsageError(f"assign-bits: the budgets cannot all hold at once; alone, each needs {needs}")


def check_feasible(problem: Problem) -> None:
    """Raises the UsageError naming the smallest feasible budget when one budget alone cannot hold."""
    for kind, limit in problem.limits.items():
        if smallest_budget(problem, kind) > limit:
            raise _infeasible(problem)


def solve(problem: Problem, time_limit: float = 60.0) -> Solution:
    """The assignment of least Σ Ω within the budgets; infeasible budgets are a UsageError."""
    check_feasible(problem)
    n_layers, n_widths = problem.distortion.shape
    size = n_layers * n_widths
    one_each = np.kron(np.eye(n_layers), np.ones(n_widths))
    constraints = [LinearConstraint(one_each, 1, 1)]
    tied = [(a, b) for group in tie_groups(problem) for a, b in zip(group, group[1:], strict=False)]
    if tied:
        rows = np.zeros((len(tied) * n_widths, size))
        for r, (a, b) in enumerate(tied):
            for w in range(n_widths):
                rows[r * n_widths + w, a * n_widths + w] = 1
                rows[r * n_widths + w, b * n_widths + w] = -1
        constraints.append(LinearConstraint(rows, 0, 0))
    kinds = list(problem.limits)
    # Integer tables (bytes, bits, BOPs) compare exactly against the budget's integer part.
    integral = [np.issubdtype(problem.costs[k].dtype, np.integer) for k in kinds]
    limits = np.array(
        [
            np.floor(problem.limits[k]) if i else problem.limits[k]
            for k, i in zip(kinds, integral, strict=True)
        ]
    )
    # HiGHS's absolute gap tolerance (1e-6) is meaningful only for an objective of order one.
    peak = float(np.abs(problem.distortion).max(initial=0.0))
    objective = problem.distortion.ravel() / (peak if peak > 0 else 1.0)
    table = np.stack([problem.costs[k].ravel() for k in kinds]) if kinds else None
    start = time.perf_counter()
    for attempt in range(4):
        result = milp(
            objective,
            integrality=np.ones(size),
            bounds=Bounds(0, 1),
            constraints=[*constraints, *([LinearConstraint(table, -np.inf, limits)] if kinds else [])],
            options={"time_limit": time_limit, "mip_rel_gap": 1e-9},
        )
        if result.x is None:
            if result.status == 2 and attempt == 0:
                raise _infeasible(problem)
            raise PasscError(f"assign-bits: HiGHS found no assignment ({result.message})")
        choice = tuple(int(j) for j in np.rint(result.x).reshape(n_layers, n_widths).argmax(axis=1))
        totals = problem.totals(choice)
        over = np.array([totals[k] - problem.limits[k] for k in kinds])
        if not (over > 0).any():
            gap = float(result.mip_gap) if result.mip_gap is not None else 0.0
            seconds = time.perf_counter() - start
            return solution(problem, "ilp", choice, gap=gap, seconds=seconds)
        # HiGHS accepts a row within its feasibility tolerance: tighten the rows it overshot.
        limits = limits - np.maximum(over, 0) * (1 + 1e-9)
    raise PasscError("assign-bits: HiGHS kept returning assignments over the budget")
