"""`passc verify`: compile, run on the target (or its emulator), compare with onnxruntime."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from passc import oracle
from passc.compiler import CompileResult, compile_model
from passc.errors import UsageError
from passc.loading import bind_input_shapes, load_model
from passc.targets import get_target

__all__ = ["VerifyReport", "verify_model", "DEFAULT_TOLERANCE"]

# Relative error (of the output range) allowed between a passc artifact and onnxruntime.
DEFAULT_TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    errors: list[oracle.OutputError]
    tolerance: float
    compiled: CompileResult

    @property
    def passed(self) -> bool:
        return all(e.max_rel <= self.tolerance for e in self.errors)


def verify_model(
    model: str | Path,
    target: str,
    *,
    inputs: dict[str, np.ndarray] | None = None,
    emulate: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    output: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    **compile_options: Any,
) -> VerifyReport:
    """Compiles `model` for `target`, runs it on `inputs` (random if None) and compares each
    output with onnxruntime on the unchanged model. Non-host targets need `emulate=True`.

    The allowed relative error is `tolerance` plus what the pipeline's lossy passes declared.
    """
    if not tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {tolerance}")
    spec = get_target(target)
    if not spec.runs_on_host and not emulate:
        raise UsageError(
            f"target {target} builds {spec.arch} binaries; add --emulate to run them under "
            f"{spec.emulator[0] if spec.emulator else 'an emulator'}"
        )
    with tempfile.TemporaryDirectory(prefix="passc-verify-") as tmp:
        out = Path(output) if output is not None else Path(tmp) / f"model.{target}"
        compiled = compile_model(
            model, spec, out, input_shapes=input_shapes, bundle=emulate, **compile_options
        )
        artifact = compiled.artifact
        if inputs is None:
            inputs = artifact.random_inputs()
        actual = artifact.run(inputs, emulate=emulate)
    original = load_model(model).model
    if input_shapes:
        bind_input_shapes(original, input_shapes)
    expected = oracle.run_onnxruntime(original, inputs)
    allowed = tolerance + sum(record.tolerance for record in compiled.pass_log)
    return VerifyReport(oracle.compare(actual, expected), allowed, compiled)
