"""Pipelines: which passes run, with which options, and the record of each run.

A pipeline comes from the target's default pass list (DEFAULT_PASSES unless its file sets one), or
`--passes a,b,c`, or a TOML file:

    passes = ["canonicalize", "my-pass"]
    [options.my-pass]
    scale = 2.0

`--pass-option name.key=value` overrides options from any of them. Canonicalisation always runs
first (it folds the shape sub-graphs TVM cannot lower); a list may run it again later too.

ONNX-level passes run first, on each model (`run_pipeline`); Relax-level passes run after import,
on the whole Relax module (`passc.relax_stage`), so a list names every ONNX pass before any
Relax pass.
"""

from __future__ import annotations

import dataclasses
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from passc import oracle
from passc.errors import PasscError, UsageError
from passc.explain import RuleReport
from passc.pass_base import ONNX_STAGE, RELAX_STAGE, PasscPass, RelaxPass, make_options
from passc.registry import get_pass
from passc.stats import ModelStats, model_stats

__all__ = [
    "DEFAULT_PASSES",
    "OPTIMIZE_PASSES",
    "PassRecord",
    "PassSpec",
    "build_pipeline",
    "parse_pass_option",
    "relax_specs",
    "run_pass",
    "run_pipeline",
]

FIRST_PASS = "canonicalize"

# The passes every target runs unless its file sets `default_passes`: all of them keep the model
# standard ONNX.
DEFAULT_PASSES = ("canonicalize", "expand-recurrent", "fuse", "fold-linear-blocks")
# What `passc optimize` runs for onnxruntime users: the same, but recurrent ops stay (onnxruntime
# runs them natively; TVM cannot lower them).
OPTIMIZE_PASSES = ("canonicalize", "fuse", "fold-linear-blocks")


@dataclass(frozen=True)
class PassSpec:
    """One pipeline step: a registered pass and its raw (untyped) option values."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def instantiate(self) -> PasscPass | RelaxPass:
        cls = get_pass(self.name)
        return cls(make_options(cls, self.options))

    @property
    def stage(self) -> str:
        """ONNX_STAGE or RELAX_STAGE: where the pass runs."""
        return get_pass(self.name).stage


def relax_specs(specs: list[PassSpec]) -> list[PassSpec]:
    """The Relax-level steps of a pipeline, in order."""
    return [spec for spec in specs if spec.stage == RELAX_STAGE]


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: for the pass log printed to the user and stored in the manifest.

    For a Relax pass, `nodes` counts the module's operator calls, `initializers` and `params` its
    constant tensors and their elements, `macs` those of its conv2d and matmul calls."""

    name: str
    options: dict[str, Any]
    modified: bool
    seconds: float
    before: ModelStats
    after: ModelStats
    fired: dict[str, int] = field(default_factory=dict)  # rewrites by rule name
    tolerance: float = 0.0  # the relative output error the pass declares it may add
    max_rel_error: float | None = None  # set by --verify-each
    report: RuleReport | None = None  # from a pass that `explains`

    def progress_line(self) -> str:
        """One line for the progress log: what changed, the counts before and after, the time."""
        checked = "" if self.max_rel_error is None else f", max rel err {self.max_rel_error:.2g}"
        rules = "".join(f", {rule} x{count}" for rule, count in self.fired.items())
        return (
            f"pass {self.name}: {'modified' if self.modified else 'unchanged'}, "
            f"nodes {self.before.nodes} -> {self.after.nodes}, MACs {self.before.macs} -> {self.after.macs}, "
            f"{self.seconds:.2f}s{rules}{checked}"
        )

    def as_manifest(self) -> dict[str, Any]:
        """The record without wall time, so that rebuilt manifests are byte-identical."""
        return {
            "pass": self.name,
            "options": self.options,
            "modified": self.modified,
            "fired": self.fired,
            "tolerance": self.tolerance,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
        }


def parse_pass_option(text: str) -> tuple[str, str, str]:
    """Parses `name.key=value`."""
    head, eq, value = text.partition("=")
    name, dot, key = head.partition(".")
    if not (eq and dot and name and key):
        raise UsageError(f"bad --pass-option {text!r}: expected PASS.KEY=VALUE")
    return name, key, value


def _read_pipeline_file(path: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    if not path.is_file():
        raise UsageError(f"pipeline file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"pipeline file {path}: {err}") from None
    unknown = sorted(set(data) - {"passes", "options"})
    if unknown:
        raise UsageError(f"pipeline file {path}: unknown key {unknown[0]!r} (expected passes, options)")
    passes = data.get("passes", [])
    if not isinstance(passes, list) or not all(isinstance(p, str) for p in passes):
        raise UsageError(f"pipeline file {path}: 'passes' must be a list of pass names")
    options = data.get("options", {})
    if not all(isinstance(v, dict) for v in options.values()):
        raise UsageError(f"pipeline file {path}: each [options.PASS] must be a table of KEY = VALUE")
    return passes, options


def build_pipeline(
    default_passes: tuple[str, ...],
    passes: list[str] | None = None,
    pass_options: list[str] | dict[str, dict[str, Any]] | None = None,
    pipeline_file: Path | None = None,
) -> list[PassSpec]:
    """Resolves the pass list and options; every name and option is checked here, before work."""
    options: dict[str, dict[str, Any]] = {}
    names = list(default_passes)
    if pipeline_file is not None:
        names, file_options = _read_pipeline_file(pipeline_file)
        options.update({k: dict(v) for k, v in file_options.items()})
    if passes is not None:
        names = list(passes)
    if isinstance(pass_options, dict):
        for name, values in pass_options.items():
            options.setdefault(name, {}).update(values)
    else:
        for text in pass_options or []:
            name, key, value = parse_pass_option(text)
            options.setdefault(name, {})[key] = value
    if names[:1] != [FIRST_PASS]:
        names.insert(0, FIRST_PASS)
    for name in options:
        if name not in names:
            get_pass(name)  # an unknown pass name is the clearer error
            raise UsageError(f"options given for pass {name!r}, which is not in the pipeline")
    specs = [PassSpec(name, options.get(name, {})) for name in names]
    for spec in specs:
        spec.instantiate()  # validates names and options now, not halfway through a build
    onnx = [spec.name for spec in specs if spec.stage == ONNX_STAGE]
    for name in onnx[:-1]:
        if get_pass(name).runs_last:
            raise UsageError(f"pass {name!r} must be the last ONNX pass of the pipeline")
    first_relax = next((i for i, spec in enumerate(specs) if spec.stage == RELAX_STAGE), len(specs))
    later = [spec.name for spec in specs[first_relax:] if spec.stage == ONNX_STAGE]
    if later:
        raise UsageError(
            f"ONNX pass {later[0]!r} comes after Relax pass {specs[first_relax].name!r}: Relax passes "
            "run after import, so list every ONNX pass first"
        )
    return specs


def run_pass(instance: PasscPass | RelaxPass, subject: Any) -> tuple[Any, float]:
    """Runs one pass on `subject` (an onnx_ir model or a Relax module); returns its result and
    wall seconds. What the pass raises, other than a PasscError, becomes one that names it; so
    does a pass that measures its tolerance and did not set it."""
    start = time.perf_counter()
    try:
        result = instance(subject)
    except PasscError:
        raise
    except Exception as err:
        raise PasscError(f"pass {instance.name!r} failed: {type(err).__name__}: {err}") from err
    if instance.tolerance is None:
        raise PasscError(f"pass {instance.name!r} measures its tolerance but did not set it")
    return result, time.perf_counter() - start


def run_pipeline(
    model: ir.Model,
    specs: list[PassSpec],
    *,
    verify_each: bool = False,
    explain: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> list[PassRecord]:
    """Runs the ONNX-level passes of `specs` in order on `model` (in place) and records each one
    (the Relax-level ones run after import, in `passc.relax_stage`).

    With `verify_each`, the model is run under onnxruntime before the first pass and after every
    pass on the same random inputs; a pass whose output error exceeds its declared tolerance plus
    float rounding fails the build. Input shapes must be bound (static) before this runs.
    With `explain`, passes that explain themselves also record their near misses.
    """
    inputs: dict[str, np.ndarray] = {}
    reference: dict[str, np.ndarray] = {}
    if verify_each:
        inputs = oracle.random_inputs(oracle.input_specs(model))
        reference = oracle.run_onnxruntime(model, inputs)
    records = []
    after = model_stats(model)
    for spec in specs:
        if spec.stage != ONNX_STAGE:
            continue
        instance = spec.instantiate()
        instance.explain = explain and instance.explains
        before = after  # the model as the previous pass left it
        result, seconds = run_pass(instance, model)
        model = result.model
        tolerance = instance.tolerance
        max_rel = None
        if verify_each:
            errors = oracle.compare(oracle.run_onnxruntime(model, inputs), reference)
            worst = max(errors, key=lambda e: e.max_rel)
            max_rel = worst.max_rel
            allowed = tolerance + oracle.FLOAT_ROUNDING
            if not max_rel <= allowed:
                raise PasscError(
                    f"--verify-each: pass {spec.name!r} changed output {worst.name!r} by relative "
                    f"error {max_rel:.3g}, above its tolerance {allowed:.3g}"
                )
        after = model_stats(model)
        options = dataclasses.asdict(instance.options)
        fired = dict(sorted(instance.fired.items()))
        records.append(
            PassRecord(
                spec.name,
                options,
                result.modified,
                seconds,
                before,
                after,
                fired,
                tolerance,
                max_rel,
                instance.report,
            )
        )
        progress(records[-1].progress_line())
    return records
