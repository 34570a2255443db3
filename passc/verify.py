"""`passc verify`: compile, run on the target (or its emulator), compare with onnxruntime."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from passc import oracle
from passc.artifact import ENTRY
from passc.compiler import CompileResult, compile_model, entry_points, function_input_shapes
from passc.errors import UsageError
from passc.loading import bind_input_shapes, load_model
from passc.targets import get_target

__all__ = ["VerifyReport", "verify_model", "DEFAULT_TOLERANCE"]

# Relative error (of the output range) allowed between a passc artifact and onnxruntime.
DEFAULT_TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    functions: dict[str, list[oracle.OutputError]]  # per entry point with an ONNX model
    tolerance: float
    compiled: CompileResult
    unchecked: list[str] = field(default_factory=list)  # entry points a Relax pass added

    @property
    def errors(self) -> list[oracle.OutputError]:
        """Every checked output's error, over all functions."""
        return [e for errors in self.functions.values() for e in errors]

    @property
    def passed(self) -> bool:
        return all(e.within(self.tolerance) for e in self.errors)

    def verdict(self, error: oracle.OutputError) -> str:
        """ "ok", "ok: rounding" (outside the tolerance, within NOISE_MULTIPLE × the reference's
        own rounding) or "FAIL"."""
        if error.max_rel <= self.tolerance:
            return "ok"
        return "ok: rounding" if error.within(self.tolerance) else "FAIL"


def verify_model(
    model: Any,
    target: str,
    *,
    inputs: dict[str, np.ndarray] | None = None,
    emulate: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    output: str | Path | None = None,
    input_shapes: dict[str, Any] | None = None,
    **compile_options: Any,
) -> VerifyReport:
    """Compiles `model` (a path, or {function name: path} for several entry points) for `target`,
    runs every entry point on `inputs` (main's; random if None, and for the other functions) and
    compares each output with onnxruntime on that function's unchanged model. Non-host targets
    need `emulate=True`. Functions that a Relax pass added have no ONNX model: they are run but
    listed as unchecked.

    The allowed relative error is `tolerance` plus what the pipeline's lossy passes declared. An
    output outside it still passes when its error is within `oracle.NOISE_MULTIPLE` times the
    reference's own float32 rounding (`oracle.reference_noise`): rounding, not a wrong result,
    as on an output whose range is tiny next to the values it is computed from.
    """
    if not tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {tolerance}")
    spec = get_target(target)
    if not spec.runs_on_host and not emulate:
        raise UsageError(
            f"target {target} builds {spec.arch} binaries; add --emulate to run them under "
            f"{spec.emulator[0] if spec.emulator else 'an emulator'}"
        )
    sources = entry_points(model)
    results: dict[str, list[oracle.OutputError]] = {}
    unchecked = []
    with tempfile.TemporaryDirectory(prefix="passc-verify-") as tmp:
        out = Path(output) if output is not None else Path(tmp) / f"model.{target}"
        compiled = compile_model(
            model, spec, out, input_shapes=input_shapes, bundle=emulate, **compile_options
        )
        artifact = compiled.artifact
        for function in artifact.functions:
            given = inputs if function == ENTRY and inputs is not None else None
            arrays = given if given is not None else artifact.random_inputs(function=function)
            actual = artifact.run(arrays, function=function, emulate=emulate)
            if function not in sources:
                unchecked.append(function)
                continue
            original = load_model(sources[function]).model
            shapes = function_input_shapes(function, input_shapes, sources)
            if shapes:
                bind_input_shapes(original, shapes)
            reference = oracle.run_onnxruntime(original, arrays)
            noise = oracle.reference_noise(original, arrays, reference)
            results[function] = [
                dataclasses.replace(e, noise=noise.get(e.name, 0.0))
                for e in oracle.compare(actual, reference)
            ]
    onnx_tolerance = max(sum(r.tolerance for r in log) for log in compiled.pass_logs.values())
    allowed = tolerance + onnx_tolerance + sum(r.tolerance for r in compiled.relax_log)
    return VerifyReport(results, allowed, compiled, unchecked)
