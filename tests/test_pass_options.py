"""Typed pass options, the registry and plugins."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

import pytest

from passc import PasscPass, UsageError, register_pass
from passc.pass_base import describe_options, make_options
from passc.registry import all_passes, get_pass, load_plugin

PLUGIN = Path(__file__).parent.parent / "examples" / "custom_pass" / "passc_example_pass.py"


class _Typed(PasscPass):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options:
        count: int = 2
        scale: float = 1.0
        enabled: bool = True
        name: str = "x"
        widths: tuple[int, ...] = (4, 8)
        limit: int | None = None

        def __post_init__(self) -> None:
            if self.count < 0:
                raise ValueError("count must be non-negative")

    def call(self, model):  # pragma: no cover - never run
        raise NotImplementedError


_Typed.name = "typed"


def test_options_are_coerced_from_text() -> None:
    options = make_options(
        _Typed,
        {"count": "3", "scale": "0.5", "enabled": "false", "widths": "2,4", "limit": "none"},
    )
    assert options == _Typed.Options(count=3, scale=0.5, enabled=False, widths=(2, 4), limit=None)
    assert make_options(_Typed, {"count": 7, "widths": [1]}).widths == (1,)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cuont": "3"}, "has no option 'cuont'"),
        ({"count": "three"}, "expected int"),
        ({"count": 1.5}, "expected int"),
        ({"enabled": "maybe"}, "expected true or false"),
        ({"count": "-1"}, "count must be non-negative"),
    ],
)
def test_bad_options_raise_usage_errors(values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_options(_Typed, values)


def test_options_are_frozen() -> None:
    options = make_options(_Typed, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.count = 5  # type: ignore[misc]


def test_describe_options_lists_every_field() -> None:
    names = [row[0] for row in describe_options(_Typed)]
    assert names == ["count", "scale", "enabled", "name", "widths", "limit"]


def test_pass_names_must_be_kebab_case() -> None:
    with pytest.raises(ValueError, match="kebab-case"):
        register_pass("Bad_Name")


def test_unknown_pass_lists_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown pass 'nope'.*canonicalize"):
        get_pass("nope")


def test_plugin_file_registers_its_pass() -> None:
    load_plugin(str(PLUGIN))
    assert get_pass("drop-identity-arith").name == "drop-identity-arith"


def test_missing_plugin_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="plugin file not found"):
        load_plugin("no/such/plugin.py")
    with pytest.raises(UsageError, match="not found"):
        load_plugin("no_such_module_anywhere")


def test_installed_plugin_is_found_through_its_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group="passc.passes")
    assert "drop-identity-arith" in {ep.name for ep in entry_points}, (
        "the example plugin is not installed: pip install -e examples/custom_pass"
    )
    assert "drop-identity-arith" in all_passes()
