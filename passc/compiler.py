"""`passc.compile`: load → bind shapes → pass pipeline → lower with TVM → write the artifact."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from passc import __version__
from passc.artifact import (
    ENTRY,
    FORMAT_VERSION,
    LIBRARY,
    OPTIMIZED_MODEL,
    Artifact,
    write_artifact,
    write_depfile,
    write_params,
)
from passc.bundle import bundle_files
from passc.errors import UsageError
from passc.loading import bind_input_shapes, load_model, require_static_shapes
from passc.lowering import lower, resolve_target, tvm_versions
from passc.pipeline import PassRecord, build_pipeline, run_pipeline
from passc.registry import load_plugin
from passc.targets import Target, get_target

__all__ = ["CompileResult", "compile_model"]


@dataclass
class CompileResult:
    artifact: Artifact
    pass_log: list[PassRecord]  # with wall times, which the manifest leaves out


def _plugin_dependencies(plugins: list[str]) -> list[Path]:
    return [Path(p) for p in plugins if p.endswith(".py")]


def compile_model(
    model: Any,
    target: str | Target,
    output: str | Path,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    passes: list[str] | None = None,
    pass_options: list[str] | dict[str, dict[str, Any]] | None = None,
    pipeline_file: str | Path | None = None,
    plugins: list[str] | None = None,
    verify_each: bool = False,
    bundle: bool = False,
    depfile: str | Path | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CompileResult:
    """Compiles `model` (an .onnx path, ONNX/onnx_ir model or torch module) into an artifact dir.

    Every name, option and shape is checked before the slow work starts; on any failure the
    output directory is left as it was.
    """
    output = Path(output)
    plugins = list(plugins or [])
    for plugin in plugins:
        load_plugin(plugin)
    target = target if isinstance(target, Target) else get_target(target)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    pipeline_path = Path(pipeline_file) if pipeline_file is not None else None
    specs = build_pipeline(target.default_passes, passes, pass_options, pipeline_path)
    target.require_cxx()

    progress(f"loading {model if isinstance(model, str | Path) else type(model).__name__}")
    loaded = load_model(model, example_inputs)
    if input_shapes:
        bind_input_shapes(loaded.model, input_shapes)
    require_static_shapes(loaded.model)

    records = run_pipeline(loaded.model, specs, verify_each=verify_each, progress=progress)
    progress(f"lowering with TVM for {target.name} ({target.description})")
    lowered = lower(loaded.model, target.tvm)

    def fill(tmp: Path) -> dict[str, Any]:
        progress(f"linking {LIBRARY} with {target.cxx}")
        lowered.export(tmp / LIBRARY, target.cxx)
        params = write_params(tmp, lowered.params)
        ir.save(loaded.model, tmp / OPTIMIZED_MODEL)
        if bundle:
            progress(f"bundling passc-run and the TVM runtime for {target.wheel_platform}")
            for name, source in bundle_files(target).items():
                shutil.copyfile(source, tmp / name)
                shutil.copymode(source, tmp / name)
        return {
            "format": FORMAT_VERSION,
            "passc": __version__,
            "tvm": tvm_versions(),
            "target": {
                "name": target.name,
                "arch": target.arch,
                "tvm": resolve_target(target.tvm),
                "threads": threads or target.threads,  # the runners' default TVM_NUM_THREADS
            },
            "source_sha256": loaded.sha256,
            "functions": {
                ENTRY: {
                    "inputs": [s.as_dict() for s in lowered.inputs],
                    "outputs": [s.as_dict() for s in lowered.outputs],
                    **({"params": params} if params else {}),
                }
            },
            "kernels": lowered.kernels,
            "weights": {
                "params_bytes": sum(p["nbytes"] for p in params),
                "constant_bytes": lowered.constant_bytes,
            },
            "passes": [r.as_manifest() for r in records],
        }

    write_artifact(output, fill)
    if depfile is not None:
        deps = loaded.dependencies + ([pipeline_path] if pipeline_path else [])
        write_depfile(Path(depfile), output, deps + _plugin_dependencies(plugins))
    progress(f"wrote {output}")
    return CompileResult(Artifact(output), records)
