"""`passc optimize`: ONNX in, passes, ONNX out — for deploying with onnxruntime. Never imports TVM.

Input shapes are optional here: dynamic dims stay dynamic (the passes handle them), unlike
`passc compile`, which needs every dim bound. The output is written whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from passc.atomic import atomic_files
from passc.errors import UsageError
from passc.loading import bind_input_shapes, load_model
from passc.pipeline import OPTIMIZE_PASSES, PassRecord, build_pipeline, relax_specs, run_pipeline
from passc.registry import load_plugin
from passc.stats import ModelStats, model_stats

__all__ = ["OptimizeResult", "optimize_model", "write_model"]

# Tensors above this many bytes in all go to an external data file: a protobuf message cannot
# exceed 2 GiB, and the graph itself needs some of that room.
_EXTERNAL_DATA_BYTES = 2**31 - 2**28


@dataclass
class OptimizeResult:
    output: Path
    external_data: Path | None  # PATH.data beside the model, for models over the protobuf limit
    pass_log: list[PassRecord]
    before: ModelStats
    after: ModelStats


def optimize_model(
    model: Any,
    output: str | Path,
    *,
    passes: list[str] | None = None,
    pass_options: list[str] | dict[str, dict[str, Any]] | None = None,
    pipeline_file: str | Path | None = None,
    plugins: list[str] | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    explain: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> OptimizeResult:
    """Runs the pass pipeline (default: OPTIMIZE_PASSES) on `model` and writes it to `output`.

    With `explain`, each pass that explains itself (fuse) also records in its pass record why its
    rules did not fire where they nearly did.
    Names, options and shapes are checked before any work; on failure `output` is left as it was.
    """
    for plugin in plugins or []:
        load_plugin(plugin)
    pipeline_path = Path(pipeline_file) if pipeline_file is not None else None
    specs = build_pipeline(OPTIMIZE_PASSES, passes, pass_options, pipeline_path)
    relax = relax_specs(specs)
    if relax:
        raise UsageError(
            f"pass {relax[0].name!r} runs on TVM's Relax module; passc optimize writes ONNX and "
            "runs ONNX passes only (use it with passc compile)"
        )
    progress(f"loading {model if isinstance(model, str | Path) else type(model).__name__}")
    loaded = load_model(model)
    if input_shapes:
        bind_input_shapes(loaded.model, input_shapes)
    before = model_stats(loaded.model)
    records = run_pipeline(loaded.model, specs, explain=explain, progress=progress)
    after = model_stats(loaded.model)
    output = Path(output)
    external = write_model(loaded.model, output)
    progress(f"wrote {output}" + (f" and {external.name}" if external else ""))
    return OptimizeResult(output, external, records, before, after)


def _tensor_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def write_model(model: ir.Model, path: Path) -> Path | None:
    """Saves `model` at `path` atomically (`passc.atomic.atomic_files`).

    Models whose tensors would overflow one protobuf keep them in `PATH.data` (renamed into place
    before the model file, so the model never points at a missing file). Returns that file or None.
    """
    data_name = f"{path.name}.data" if _tensor_bytes(model) > _EXTERNAL_DATA_BYTES else None
    files = [path] if data_name is None else [path.parent / data_name, path]
    with atomic_files(*files) as tmp:
        ir.save(model, tmp / path.name, external_data=data_name)
    return None if data_name is None else files[0]
