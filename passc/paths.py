"""Where passc keeps files between runs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """passc's cache (runtime libraries, runners, tuning records, measured latencies);
    PASSC_CACHE_DIR overrides the user cache dir."""
    return Path(os.environ.get("PASSC_CACHE_DIR") or platformdirs.user_cache_dir("passc"))
