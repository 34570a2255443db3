"""The pass registry: kebab-case names, plugins from entry points and from `--plugin`."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

from passc.errors import UsageError
from passc.pass_base import PasscPass, RelaxPass

PassClass = type[PasscPass] | type[RelaxPass]

__all__ = ["register_pass", "get_pass", "all_passes", "load_plugin", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "passc.passes"
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_REGISTRY: dict[str, PassClass] = {}
_discovered = False


def register_pass(name: str) -> Callable[[PassClass], PassClass]:
    """Class decorator: registers a `PasscPass` (ONNX-level) or `RelaxPass` (Relax-level) subclass
    under a kebab-case name."""
    if not _NAME.match(name):
        raise ValueError(f"pass name {name!r} is not kebab-case (like 'fold-linear-blocks')")

    def decorate(cls: PassClass) -> PassClass:
        if not (isinstance(cls, type) and issubclass(cls, PasscPass | RelaxPass)):
            raise TypeError(f"{cls!r} must subclass passc.PasscPass or passc.RelaxPass to be registered")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"pass name {name!r} is already taken by {existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Imports the built-in passes and every installed `passc.passes` entry point, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("passc.passes")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:
            raise UsageError(
                f"plugin entry point {entry.name!r} ({entry.value}) failed to load: {err}"
            ) from err


def get_pass(name: str) -> PassClass:
    """The pass registered as `name`; an unknown name is a UsageError listing the known ones."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UsageError(f"unknown pass {name!r} (known passes: {known})") from None


def all_passes() -> dict[str, PassClass]:
    """Every registered pass by name, built-in and plugin."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def load_plugin(spec: str) -> None:
    """Imports a plugin given as a path to a .py file or as a module name; it registers passes."""
    _discover()
    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise UsageError(f"plugin file not found: {spec}")
            module_name = f"passc_plugin_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            loader_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except UsageError:
        raise
    except ModuleNotFoundError as err:
        raise UsageError(f"plugin {spec!r} not found: {err}") from None
    except Exception as err:
        raise UsageError(f"plugin {spec!r} failed to load: {type(err).__name__}: {err}") from None
