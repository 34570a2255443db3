"""Budgets as the user writes them (`size=1.5MB`, `avg-bits=4.5`, `bops=2G`, `latency=12ms`).

size      bytes of the assigned layers' weights as stored (packed codes + scales + zero points,
          or the float16/float32 weight); B, KB/MB/GB (powers of 1000), KiB/MiB/GiB (of 1024)
avg-bits  Σ nᵢ·bᵢ / Σ nᵢ over the assigned layers' weight elements nᵢ, at the nominal width bᵢ
          (3-bit counts 3 though it is stored in 4; scales are not counted)
bops      Σ MACsᵢ · bᵢ · 32 (weights at bᵢ bits, activations stay float32); K/M/G/T suffixes
latency   Σ latencyᵢ(bᵢ) from a measured table; s, ms or us (a unit is required)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from passc.errors import UsageError

__all__ = ["KINDS", "Budget", "parse_budget", "parse_budgets", "show"]

KINDS = ("size", "avg-bits", "bops", "latency")

_UNITS = {
    "size": {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30},
    "avg-bits": {"": 1},
    "bops": {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    "latency": {"s": 1, "ms": 1e-3, "us": 1e-6},
}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    kind: str
    value: float  # bytes, bits per weight, BOPs or seconds
    text: str  # as the user wrote it


def parse_budget(text: str) -> Budget:
    """`KIND=VALUE[UNIT]` → Budget; anything else is a UsageError saying what was expected."""
    kind, eq, amount = text.strip().partition("=")
    kind = kind.strip().lower()
    if not eq or kind not in KINDS:
        raise UsageError(
            f"assign-bits.budget: bad budget {text!r}: expected KIND=VALUE, KIND one of {', '.join(KINDS)}"
        )
    match = _NUMBER.match(amount)
    units = _UNITS[kind]
    if not match or match.group(2).lower() not in units:
        shown = ", ".join(u or "none" for u in units)
        raise UsageError(f"assign-bits.budget: bad value in {text!r}: expected a number with unit ({shown})")
    value = float(match.group(1)) * units[match.group(2).lower()]
    if value <= 0:
        raise UsageError(f"assign-bits.budget: {text!r} must be positive")
    return Budget(kind, value, text.strip())


def parse_budgets(texts: tuple[str, ...]) -> tuple[Budget, ...]:
    """Each non-empty entry parsed; at most one budget of each kind."""
    budgets = tuple(parse_budget(t) for t in texts if t.strip())
    kinds = [b.kind for b in budgets]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise UsageError(f"assign-bits.budget: {kind} is given more than once")
    return budgets


def show(kind: str, value: float) -> str:
    """A budget value in the units a user would write it in."""
    if kind == "size":
        return f"{value / 1e6:.6g}MB ({value:.0f} bytes)"
    if kind == "avg-bits":
        return f"{value:.6g} bits per weight"
    if kind == "bops":
        return f"{value / 1e9:.6g}G BOPs"
    return f"{value * 1e3:.6g}ms"
