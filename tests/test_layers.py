"""Layers point one way: the core never imports a pass, and a pass uses the core's public names and
its own package's modules, never a sibling pass's private ones."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _imports(path: Path) -> Iterator[str]:
    """What each absolute import in the file names: `module` or `module.name`, as a dotted path."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def test_the_core_never_imports_a_pass() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in [*(ROOT / "passc").rglob("*.py"), *(ROOT / "targets").rglob("*.py")]
        for module in _imports(path)
        if f"{module}.".startswith("passc.passes.")
    ]
    assert not offenders, offenders


def test_passes_use_public_names_and_never_a_sibling_pass_private_module() -> None:
    offenders = []
    for path in (ROOT / "passes").rglob("*.py"):
        own = path.relative_to(ROOT / "passes").parts[0].removesuffix(".py")
        for module in _imports(path):
            if module.startswith("passc.passes."):
                if module.split(".")[2] != own and _private(module):
                    offenders.append(f"{path.relative_to(ROOT)}: {module}")
            elif module.startswith("passc.") and _private(module):
                offenders.append(f"{path.relative_to(ROOT)}: {module} (a private name of the core)")
    assert not offenders, offenders
