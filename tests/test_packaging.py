"""The package list in pyproject.toml names every package directory, so a wheel install is complete."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
INSTALLED_AS = {"passc": ROOT / "passc", "passc.passes": ROOT / "passes", "passc.targets": ROOT / "targets"}


def test_every_package_directory_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for name, top in INSTALLED_AS.items():
        for init in top.rglob("__init__.py"):
            parts = init.parent.relative_to(top).parts
            found.add(".".join((name, *parts)))
    found.add("passc.runtime")  # data only: passc_run.cc
    assert found == listed
