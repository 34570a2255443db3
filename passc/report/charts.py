"""The report's charts, drawn with matplotlib and written as inline SVG (text kept as text, so
the page stays small and searchable). matplotlib is optional (`pip install 'passc[plot]'`):
without it each chart is None and the page says so.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["MISSING", "available", "bars", "svg_figure", "waterfall"]

MISSING = "charts need matplotlib, which is not installed (pip install 'passc[plot]')"
_salts = itertools.count()


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def svg_figure(width: float, height: float, **subplots: Any) -> Iterator[tuple[Any, Any, list[str]]]:
    """A matplotlib figure and its axes; on leaving, the figure's SVG is appended to the yielded
    list. Each figure gets its own id salt, so that several on one page never share an element id."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[str] = []
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"passc-{next(_salts)}"}):
        fig, axes = plt.subplots(figsize=(width, height), **subplots)
        try:
            yield fig, axes, out
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        finally:
            plt.close(fig)
    text = buffer.getvalue()
    out.append(re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S))


def _draw(width: float, height: float, draw: Callable[[Any], None], **subplots: Any) -> str | None:
    if not available():
        return None
    with svg_figure(width, height, **subplots) as (_, axes, out):
        draw(axes)
    return out[0]


def bars(labels: list[str], values: list[float], xlabel: str, title: str = "") -> str | None:
    """A horizontal bar chart, largest value on top, each bar labelled with its value."""

    def draw(ax: Any) -> None:
        order = sorted(range(len(values)), key=lambda i: values[i])
        ys = range(len(order))
        ax.barh(list(ys), [values[i] for i in order], color="#4c72b0")
        ax.set_yticks(list(ys), [labels[i] for i in order])
        for y, i in zip(ys, order, strict=True):
            ax.annotate(
                f"{values[i]:.3g}",
                (values[i], y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.set_xlabel(xlabel)
        ax.margins(x=0.15)
        if title:
            ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)

    return _draw(7.0, 0.8 + 0.32 * len(values), draw)


def waterfall(steps: list[str], series: dict[str, tuple[float, list[float]]]) -> str | None:
    """One panel per series: the starting value as a bar, then each step's change as a bar floating
    from the value before it to the value after (green where it fell, red where it rose).

    `series` maps a name to (value before the first step, value after each step)."""

    def draw(axes: Any) -> None:
        for ax, (name, (start, after)) in zip(list(axes), series.items(), strict=True):
            before = [start, *after[:-1]]
            xs = range(len(steps) + 1)
            ax.bar([0], [start], color="#8c96a8")
            for x, b, a in zip(xs[1:], before, after, strict=True):
                colour = "#55a868" if a < b else "#c44e52" if a > b else "#8c96a8"
                ax.bar([x], [a - b if a != b else 0.0], bottom=[b], color=colour)
                ax.plot([x - 0.4, x + 0.4], [a, a], color="#1d2330", linewidth=0.8)
            ax.set_xticks(list(xs), ["input", *steps], rotation=30, ha="right")
            ax.set_title(name)
            ax.grid(axis="y", alpha=0.3)

    return _draw(max(6.0, 1.1 * len(steps) + 3.0), 3.2, draw, ncols=len(series))
