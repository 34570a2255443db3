"""assign-bits' section of `passc report`: the budget and what the ILP chose, each layer's width,
bytes and distortion, and the distortion-vs-size frontier where the run kept it."""

from __future__ import annotations

import json
from typing import Any

import onnx_ir as ir
from passc.passes.assign_bits import ASSIGNMENT_KEY, BIT_WIDTHS_KEY, FRONTIER_KEY, pareto

from passc.report import Figure, Num, Section, Table, Text, charts

__all__ = ["sections"]


def _width(width: int) -> str:
    return {32: "float32", 16: "float16"}.get(width, f"{width}-bit")


def _frontier_figure(data: dict[str, Any], title: str) -> Figure | Text:
    if not charts.available():
        return Text(charts.MISSING)
    front, chosen = pareto.from_json(data)
    with charts.svg_figure(6.4, 4.2) as (_, ax, out):
        pareto.draw(ax, front, chosen, title)
    return Figure(
        out[0],
        "Σ Ω against the weight bytes of the assigned layers: the ILP's assignment at "
        "each size budget, greedy's, and every uniform width; the chosen one circled.",
    )


def sections(record: dict[str, Any], model: ir.Model | None) -> list[Section]:
    """One section, when the run assigned widths (the model carries its assignment)."""
    if model is None or ASSIGNMENT_KEY not in model.metadata_props:
        return []
    assignment = json.loads(model.metadata_props[ASSIGNMENT_KEY])
    widths = json.loads(model.metadata_props.get(BIT_WIDTHS_KEY, "{}"))
    layers = assignment.get("layers", {})
    budgets = ", ".join(record.get("options", {}).get("budget", [])) or "(none)"
    chosen = "; ".join(f"{kind} {text}" for kind, text in assignment.get("shown", {}).items())
    limits = "; ".join(f"{kind} ≤ {text}" for kind, text in assignment.get("budgets", {}).items())
    counts = ", ".join(f"{n} {label}" for label, n in record.get("fired", {}).items())
    blocks: list[Any] = [
        Text(
            f"Budget {budgets} ({limits}); method {assignment['method']}: Σ Ω {assignment['objective']:.4g}, "
            f"optimality gap {assignment.get('gap', 0.0):.2g}; totals: {chosen}. Layers: {counts}."
        ),
    ]
    rows = []
    for name, width in widths.items():
        layer = layers.get(name)
        if layer is None:
            rows.append([name, _width(width), None, None, None, "kept float"])
            continue
        saved = 1 - layer["bytes"] / layer["float32_bytes"] if layer["float32_bytes"] else 0.0
        rows.append(
            [
                name,
                _width(layer["width"]),
                layer["float32_bytes"],
                layer["bytes"],
                Num(layer["distortion"], f"{layer['distortion']:.3g}"),
                f"{saved:.0%} smaller",
            ]
        )
    blocks.append(
        Table(["layer", "width", "float32 bytes", "bytes", "Ω at its width", ""], rows, sortable=True)
    )
    if FRONTIER_KEY in model.metadata_props:
        frontier = json.loads(model.metadata_props[FRONTIER_KEY])
        blocks.append(_frontier_figure(frontier, f"assign-bits: {model.graph.name or 'model'}"))
    else:
        blocks.append(
            Text(
                "No frontier kept: run with --pass-option assign-bits.frontier=true to plot "
                "distortion against size here."
            )
        )
    return [Section("Bit widths (assign-bits)", blocks)]
