"""Distortion vs size: the ILP's frontier against greedy and uniform widths, and its plot (a PNG,
or drawn into a `passc report` figure).

For size budgets swept from the smallest feasible to the all-widest size, the ILP and greedy each
pick an assignment; uniform widths are single points. Distortion is Σᵢ Ωᵢ(bᵢ), the objective the
ILP minimises (per-layer distortions, assumed additive).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from passc.passes.assign_bits.baselines import greedy, uniform
from passc.passes.assign_bits.ilp import Problem, Solution, smallest_budget, solve

from passc.atomic import atomic_file
from passc.errors import UsageError

__all__ = ["Frontier", "Point", "as_json", "draw", "frontier", "from_json", "plot"]


Point = tuple[float, float]  # (size in bytes, Σ Ω)


@dataclasses.dataclass(frozen=True)
class Frontier:
    """For each size budget, the ILP's and greedy's point (None where greedy finds none); and the
    point of each uniform width."""

    budgets: list[float]
    ilp: list[Point]
    greedy: list[Point | None]
    uniform: dict[int, Point]


def frontier(problem: Problem, size: np.ndarray, budgets: int = 12, time_limit: float = 10.0) -> Frontier:
    """Solves the size-budgeted problem at `budgets` sizes between the smallest and the largest."""
    sized = dataclasses.replace(problem, costs={"size": size}, limits={"size": float(size.max(axis=1).sum())})
    low = smallest_budget(sized, "size")
    high = float(size.max(axis=1).sum())
    limits = [float(limit) for limit in np.linspace(low, high, budgets)]
    ilp, greedy_points = [], []
    for limit in limits:
        at = dataclasses.replace(sized, limits={"size": limit})
        ilp.append(_point(solve(at, time_limit)))
        greedy_points.append(_point(greedy(at)))
    uniforms = {w: _point(uniform(sized, w)) for w in problem.widths}
    return Frontier(limits, ilp, greedy_points, uniforms)


def _point(s: Solution | None) -> Point | None:
    return None if s is None else (s.totals["size"], s.objective)


def draw(ax: Any, front: Frontier, chosen: Point | None = None, title: str = "") -> None:
    """Draws the frontier on matplotlib axes `ax`: ILP and greedy lines, uniform widths as squares,
    the chosen assignment circled."""
    for label, points, marker in (("ILP", front.ilp, "o"), ("greedy", front.greedy, "x")):
        present = sorted(p for p in points if p is not None)
        if present:
            xs, ys = zip(*present, strict=True)
            ax.plot(np.array(xs) / 1e3, ys, marker=marker, label=label)
    for width, (x, y) in front.uniform.items():
        ax.scatter([x / 1e3], [y], marker="s", color="grey")
        label = "float16" if width == 16 else "float32" if width == 32 else f"uniform {width}-bit"
        ax.annotate(label, (x / 1e3, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if chosen is not None:
        ax.scatter([chosen[0] / 1e3], [chosen[1]], s=120, facecolors="none", edgecolors="k", label="chosen")
    ax.set_xlabel("weight bytes of the assigned layers (kB)")
    ax.set_ylabel("Σ Ω (summed per-layer distortion)")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_title(title or "assign-bits: distortion vs size")
    ax.grid(alpha=0.3)
    ax.legend()


def plot(front: Frontier, path: Path, chosen: Point | None = None, title: str = "") -> Path:
    """Writes the frontier as a PNG at `path` (atomically); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("the Pareto plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw(ax, front, chosen, title)
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def as_json(front: Frontier, chosen: Point | None) -> dict[str, Any]:
    """The frontier and the chosen point as JSON data (kept in the model for `passc report`)."""
    return {
        "budgets": front.budgets,
        "ilp": front.ilp,
        "greedy": front.greedy,
        "uniform": {str(w): p for w, p in front.uniform.items()},
        "chosen": chosen,
    }


def from_json(data: dict[str, Any]) -> tuple[Frontier, Point | None]:
    """`as_json`'s inverse."""

    def point(p: Any) -> Point | None:
        return None if p is None else (float(p[0]), float(p[1]))

    front = Frontier(
        [float(b) for b in data["budgets"]],
        [point(p) for p in data["ilp"]],
        [point(p) for p in data["greedy"]],
        {int(w): point(p) for w, p in data["uniform"].items()},
    )
    return front, point(data.get("chosen"))
