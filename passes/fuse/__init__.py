"""The `fuse` pass family: pattern rules that fold, fuse and remove ops (see rules.py for the list)."""

from passc.passes.fuse.fuse import Fuse, collect_reports
from passc.passes.fuse.rules import RULE_NAMES
from passc.passes.fuse.tracing import FuseReport, Match, NearMiss

__all__ = ["Fuse", "FuseReport", "Match", "NearMiss", "RULE_NAMES", "collect_reports"]
