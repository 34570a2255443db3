"""The base classes of passc passes, and typed options parsed from text.

A passc pass runs at one of two stages: on the ONNX graph (`PasscPass`, an `onnx_ir` in-place
pass) or on TVM's Relax module after import (`RelaxPass`). Both have a frozen, typed `Options`
dataclass and a declared numerical tolerance. Options are declared once; the CLI
(`--pass-option name.key=value`), TOML pipeline files and `passc passes` all read that declaration.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

import onnx_ir as ir

from passc.errors import UsageError
from passc.explain import RuleReport

if TYPE_CHECKING:
    from passc.report.page import Section

__all__ = [
    "BIT_WIDTHS_KEY",
    "ONNX_STAGE",
    "PasscPass",
    "RELAX_STAGE",
    "RUNTIME_PARAMS_KEY",
    "RelaxPass",
    "RelaxPassResult",
    "describe_options",
    "make_options",
]

# Model metadata key: a JSON list of initializer names that lowering must keep as runtime parameters
# of the compiled function (stored in the artifact's params.bin as they are), never as constants
# that TVM could fold. Packed low-bit weights use it: folding their decode would store floats again.
RUNTIME_PARAMS_KEY = "passc.runtime_params"

# Model metadata key: a JSON object {layer: weight bit width} (float layers at 32), written by the pass
# that assigns widths (assign-bits) and shown by `passc inspect`.
BIT_WIDTHS_KEY = "passc.bit_widths"

# The two stages a pass runs at: on the ONNX graph (onnx_ir), or on the Relax module after import.
ONNX_STAGE = "onnx"
RELAX_STAGE = "relax"


class _PassOptions:
    """What every passc pass has, whatever IR it runs on: a registered name, typed `Options`, a
    declared tolerance and the count of what its last run rewrote."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""
    tolerance: ClassVar[float | None] = 0.0
    runs_last: ClassVar[bool] = False
    explains: ClassVar[bool] = False

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options:
        """This pass takes no options."""

    def _init_options(self, options: Any) -> None:
        self.fired: Counter[str] = Counter()
        self.explain = False
        self.report: RuleReport | None = None
        self.options = self.Options() if options is None else options
        if not isinstance(self.options, self.Options):
            raise UsageError(f"pass {self.name!r}: options must be {self.Options.__qualname__}")

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        return next(iter((cls.__doc__ or "").strip().splitlines()), "")

    @classmethod
    def report_sections(cls, record: dict[str, Any], model: ir.Model | None) -> list[Section]:
        """The pass's own sections of `passc report`, from its pass-log `record` (as in the
        manifest) and the optimised `model` it ran on (None for a Relax pass): none by default."""
        return []


class PasscPass(_PassOptions, ir.passes.InPlacePass):
    """Base class of ONNX-level passes: subclasses set `name` (via `register_pass`), `Options`
    and `call(model) -> ir.passes.PassResult`.

    `tolerance` is the relative output error the pass may introduce beyond float rounding:
    0 for exact rewrites; a lossy pass states its bound, or declares None and sets the measured
    bound on the instance when it runs. `--verify-each` and `passc verify` check it.
    `fired` counts what the last run rewrote, by rule name; the pass log and manifest show it.
    `runs_last`: no ONNX pass may run after this pass (e.g. constant folding would undo its work).
    `explains`: each run fills `report` (a `passc.explain.RuleReport`), with near misses when the
    pipeline has set `explain` (`passc optimize --explain`); the pass record carries it.
    """

    stage: ClassVar[str] = ONNX_STAGE

    def __init__(self, options: Any = None) -> None:
        super().__init__()
        self._init_options(options)


@dataclasses.dataclass(frozen=True)
class RelaxPassResult:
    """What a Relax pass returns: the module (a new one, or the same) and whether it changed."""

    mod: Any  # tvm.IRModule
    modified: bool


class RelaxPass(_PassOptions):
    """Base class of Relax-level passes, which run on TVM's Relax `IRModule` after import and
    before the backend legalizes it: subclasses set `name` (via `register_pass`), `Options` and
    `call(mod) -> RelaxPassResult`.

    The module holds one public Relax function per entry point (named as the entry point). A pass
    may rewrite them (their parameters must stay as they are) and may add public functions (with
    a `global_symbol` attribute): each becomes an entry point of the artifact, all its parameters
    inputs, its outputs named by its `passc.output_names` attribute or output_0, output_1, ….
    Options, tolerance, `fired` and the pass log are as for `PasscPass`.
    """

    stage: ClassVar[str] = RELAX_STAGE

    def __init__(self, options: Any = None) -> None:
        self._init_options(options)

    def call(self, mod: Any) -> RelaxPassResult:
        raise NotImplementedError

    def __call__(self, mod: Any) -> RelaxPassResult:
        result = self.call(mod)
        if not isinstance(result, RelaxPassResult):
            raise TypeError(
                f"pass {self.name!r}: call() must return a RelaxPassResult, got {type(result).__name__}"
            )
        return result


def _coerce(pass_name: str, key: str, annotation: Any, value: Any) -> Any:
    """Converts a TOML value or CLI string to the field's declared type, or raises UsageError."""
    origin = typing.get_origin(annotation)
    where = f"option {pass_name}.{key}"
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(annotation) or (str,)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(pass_name, key, item_type, v) for v in items)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value in (None, "none", "None") and len(args) < len(typing.get_args(annotation)):
            return None
        return _coerce(pass_name, key, args[0], value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool) or (annotation is int and isinstance(value, float)):
            raise UsageError(f"{where}: expected {annotation.__name__}, got {value!r}")
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    if annotation is str:
        return str(value)
    raise UsageError(f"{where}: unsupported option type {annotation!r}")


def make_options(pass_cls: type[PasscPass | RelaxPass], values: dict[str, Any]) -> Any:
    """Builds `pass_cls.Options` from untyped values; unknown keys and bad values raise UsageError."""
    fields = {f.name: f for f in dataclasses.fields(pass_cls.Options)}
    hints = typing.get_type_hints(pass_cls.Options)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise UsageError(f"pass {pass_cls.name!r} has no option {unknown[0]!r} (its options: {known})")
    typed = {k: _coerce(pass_cls.name, k, hints[k], v) for k, v in values.items()}
    try:
        return pass_cls.Options(**typed)
    except (TypeError, ValueError) as err:
        raise UsageError(f"pass {pass_cls.name!r}: {err}") from None


def describe_options(pass_cls: type[PasscPass | RelaxPass]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each option; help comes from `field(metadata={"help": …})`."""
    hints = typing.get_type_hints(pass_cls.Options)
    rows = []
    for f in dataclasses.fields(pass_cls.Options):
        hint = hints[f.name]
        type_name = hint.__name__ if isinstance(hint, type) else str(hint)
        rows.append((f.name, type_name, repr(f.default), f.metadata.get("help", "")))
    return rows
