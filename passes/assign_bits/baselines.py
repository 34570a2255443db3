"""Baselines the ILP is compared against: greedy lowering and one width for every layer.

Greedy: start with every tie group at its widest width; while a budget is exceeded, lower the one
group whose next cheaper width costs the least distortion per unit of cost saved,
ΔΩ / Σₖ (Δcostₖ / Bₖ) over the exceeded budgets k. Uniform: every layer at one width.
"""

from __future__ import annotations

import numpy as np
from passc.passes.assign_bits.ilp import Problem, Solution, solution, tie_groups

__all__ = ["greedy", "uniform", "best_uniform"]


def greedy(problem: Problem) -> Solution | None:
    """The greedy assignment, or None when lowering every group as far as it goes still misses."""
    groups = tie_groups(problem)
    widest = int(np.argmax(problem.widths))
    choice = [widest] * len(problem.layers)
    order = np.argsort(problem.widths)[::-1]  # width indices, widest first
    while not problem.holds(tuple(choice)):
        totals = problem.totals(tuple(choice))
        exceeded = [k for k, limit in problem.limits.items() if totals[k] > limit]
        best: tuple[float, list[int], int] | None = None
        for group in groups:
            now = choice[group[0]]
            rank = int(np.where(order == now)[0][0])
            cost_now = {k: problem.costs[k][group, now].sum() for k in exceeded}
            for lower in order[rank + 1 :]:
                saved = sum(
                    (cost_now[k] - problem.costs[k][group, lower].sum()) / problem.limits[k] for k in exceeded
                )
                if saved > 0:
                    worse = problem.distortion[group, lower].sum() - problem.distortion[group, now].sum()
                    ratio = worse / saved
                    if best is None or ratio < best[0]:
                        best = (ratio, group, int(lower))
                    break
        if best is None:
            return None
        for i in best[1]:
            choice[i] = best[2]
    return solution(problem, "greedy", tuple(choice))


def uniform(problem: Problem, width: int) -> Solution:
    """Every layer at `width` (which may miss the budgets: see `Problem.holds`)."""
    return solution(problem, f"uniform-{width}", (problem.widths.index(width),) * len(problem.layers))


def best_uniform(problem: Problem) -> Solution | None:
    """The widest single width that meets the budgets, or None."""
    for width in sorted(problem.widths, reverse=True):
        candidate = uniform(problem, width)
        if problem.holds(candidate.choice):
            return candidate
    return None
