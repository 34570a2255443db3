"""The `fuse` pass family: pattern rules that fold, fuse and remove ops (see rules.py for the list)."""

from passc.passes.fuse.fuse import Fuse
from passc.passes.fuse.rules import RULE_NAMES

__all__ = ["Fuse", "RULE_NAMES"]
