"""`passc.compile`: load → bind shapes → pass pipeline → lower with TVM → write the artifact."""

from __future__ import annotations

import hashlib
import json
import re
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
from passc.bundle import bundle_files, cache_dir
from passc.errors import UsageError
from passc.loading import LoadedModel, bind_input_shapes, load_model, require_static_shapes
from passc.lowering import lower, resolve_target, tvm_versions
from passc.pipeline import PassRecord, build_pipeline, run_pipeline
from passc.registry import load_plugin
from passc.targets import Target, get_target

__all__ = ["CompileResult", "Prepared", "compile_model", "prepare_model", "records_dir"]


@dataclass
class CompileResult:
    artifact: Artifact
    pass_log: list[PassRecord]  # with wall times, which the manifest leaves out


def _plugin_dependencies(plugins: list[str]) -> list[Path]:
    return [Path(p) for p in plugins if p.endswith(".py")]


@dataclass
class Prepared:
    """A model loaded, shape-bound and run through the pass pipeline: what lowering starts from."""

    loaded: LoadedModel
    pass_log: list[PassRecord]
    pipeline_file: Path | None


def prepare_model(
    model: Any,
    target: Target,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    passes: list[str] | None = None,
    pass_options: list[str] | dict[str, dict[str, Any]] | None = None,
    pipeline_file: str | Path | None = None,
    plugins: list[str] | None = None,
    verify_each: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> Prepared:
    """Loads `model`, binds its input shapes and runs the target's pass pipeline (as `passc
    compile` and `passc tune` both must, so tuning records match the compiled kernels)."""
    for plugin in plugins or []:
        load_plugin(plugin)
    pipeline_path = Path(pipeline_file) if pipeline_file is not None else None
    specs = build_pipeline(target.default_passes, passes, pass_options, pipeline_path)
    progress(f"loading {model if isinstance(model, str | Path) else type(model).__name__}")
    loaded = load_model(model, example_inputs)
    if input_shapes:
        bind_input_shapes(loaded.model, input_shapes)
    require_static_shapes(loaded.model)
    pass_log = run_pipeline(loaded.model, specs, verify_each=verify_each, progress=progress)
    return Prepared(loaded, pass_log, pipeline_path)


def records_dir(target: Target) -> Path:
    """The target's tuning-records database in passc's cache: one per target and CPU."""
    tvm_target = resolve_target(target.tvm)
    cpu = re.sub(r"[^A-Za-z0-9_.-]", "_", str(tvm_target.get("mcpu", "generic")))
    digest = hashlib.sha256(json.dumps(tvm_target, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "tuning" / f"{target.name}-{cpu}-{digest}"


def _record_dirs(target: Target, records: list[str | Path] | None) -> list[Path]:
    """The databases compile applies: the target's cache by default, else the ones named."""
    if records is None:
        return [records_dir(target)]
    dirs = [Path(r) for r in records]
    for directory in dirs:
        if not directory.is_dir():
            raise UsageError(f"tuning records directory not found: {directory}")
    return dirs


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
    records: list[str | Path] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CompileResult:
    """Compiles `model` (an .onnx path, ONNX/onnx_ir model or torch module) into an artifact dir.

    Every name, option and shape is checked before the slow work starts; on any failure the
    output directory is left as it was. Kernels with tuning records (from `passc tune`) in the
    target's cache, or in the `records` directories if given (`[]`: none), use the fastest record.
    """
    output = Path(output)
    target = target if isinstance(target, Target) else get_target(target)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    record_dirs = _record_dirs(target, records)
    target.require_cxx()
    prepared = prepare_model(
        model,
        target,
        input_shapes=input_shapes,
        example_inputs=example_inputs,
        passes=passes,
        pass_options=pass_options,
        pipeline_file=pipeline_file,
        plugins=plugins,
        verify_each=verify_each,
        progress=progress,
    )
    loaded, records, pipeline_path = prepared.loaded, prepared.pass_log, prepared.pipeline_file
    progress(f"lowering with TVM for {target.name} ({target.description})")
    lowered = lower(loaded.model, target.tvm, record_dirs)
    if lowered.tuned_kernels:
        progress(f"{lowered.tuned_kernels} of {lowered.kernels} kernels scheduled from tuning records")

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
            "tuned_kernels": lowered.tuned_kernels,
            "weights": {
                "params_bytes": sum(p["nbytes"] for p in params),
                "constant_bytes": lowered.constant_bytes,
            },
            "passes": [r.as_manifest() for r in records],
        }

    write_artifact(output, fill)
    if depfile is not None:
        deps = loaded.dependencies + ([pipeline_path] if pipeline_path else [])
        write_depfile(Path(depfile), output, deps + _plugin_dependencies(list(plugins or [])))
    progress(f"wrote {output}")
    return CompileResult(Artifact(output), records)
