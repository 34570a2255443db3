"""`passc.compile`: load → bind shapes → ONNX passes (per entry point) → import into one Relax
module → Relax passes → the target's backend → write the artifact."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from passc import __version__
from passc.artifact import (
    ENTRY,
    PARAMS,
    Artifact,
    check_output_dir,
    optimized_model_name,
    write_artifact,
    write_depfile,
    write_params,
)
from passc.errors import UsageError
from passc.loading import LoadedModel, bind_input_shapes, load_model, require_static_shapes
from passc.manifest import FunctionEntry, Manifest, TargetEntry
from passc.paths import cache_dir
from passc.pipeline import PassRecord, PassSpec, build_pipeline, relax_specs, run_pipeline
from passc.registry import load_plugin
from passc.targets import Target, get_target

__all__ = [
    "CompileResult",
    "Prepared",
    "compile_model",
    "entry_points",
    "function_input_shapes",
    "prepare_model",
    "records_dir",
]

_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class CompileResult:
    artifact: Artifact
    pass_log: list[PassRecord]  # main's ONNX passes then the Relax passes, with wall times
    pass_logs: dict[str, list[PassRecord]] = field(default_factory=dict)  # per entry point
    relax_log: list[PassRecord] = field(default_factory=list)


def _source_name(model: Any) -> str:
    """How the manifest names a function's model: its file name, else its type's name."""
    if isinstance(model, str | Path):
        return Path(model).name
    return type(model).__name__


def _plugin_dependencies(plugins: list[str]) -> list[Path]:
    return [Path(p) for p in plugins if p.endswith(".py")]


def entry_points(model: Any) -> dict[str, Any]:
    """`model` as {function name: model}: a dict is checked, anything else is `main`."""
    models = dict(model) if isinstance(model, dict) else {ENTRY: model}
    if not models:
        raise UsageError("no model to compile")
    for name in models:
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise UsageError(
                f"bad function name {name!r}: use letters, digits and _, not starting with a digit"
            )
    return models


def function_input_shapes(
    name: str, input_shapes: dict[str, Any] | None, functions: dict[str, Any]
) -> dict[str, tuple[int, ...]]:
    """The input shapes for entry point `name`: `input_shapes` maps input names to shapes for every
    function, or function names to such maps."""
    if not input_shapes:
        return {}
    nested = {k: v for k, v in input_shapes.items() if isinstance(v, dict)}
    if not nested:
        return dict(input_shapes)
    unknown = sorted(set(nested) - set(functions))
    if unknown or len(nested) != len(input_shapes):
        raise UsageError(
            "input_shapes must map input names to shapes, or function names "
            f"({', '.join(functions)}) to such maps"
        )
    return dict(nested.get(name, {}))


@dataclass
class Prepared:
    """A model loaded, shape-bound and run through the ONNX passes: what lowering starts from.

    `relax_passes` are the pipeline's Relax-level passes, run after import."""

    loaded: LoadedModel
    pass_log: list[PassRecord]
    pipeline_file: Path | None
    relax_passes: list[PassSpec] = field(default_factory=list)


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
    """Loads `model`, binds its input shapes and runs the target's ONNX passes (as `passc
    compile` and `passc tune` both must, so tuning records match the compiled kernels)."""
    specs, pipeline_path = _pipeline(target, passes, pass_options, pipeline_file, plugins)
    return _prepare(model, specs, pipeline_path, input_shapes, example_inputs, verify_each, progress)


def _pipeline(
    target: Target,
    passes: list[str] | None,
    pass_options: list[str] | dict[str, dict[str, Any]] | None,
    pipeline_file: str | Path | None,
    plugins: list[str] | None,
) -> tuple[list[PassSpec], Path | None]:
    """The plugins loaded and the pass pipeline built, every name and option checked."""
    for plugin in plugins or []:
        load_plugin(plugin)
    pipeline_path = Path(pipeline_file) if pipeline_file is not None else None
    return build_pipeline(target.default_passes, passes, pass_options, pipeline_path), pipeline_path


def _prepare(
    model: Any,
    specs: list[PassSpec],
    pipeline_path: Path | None,
    input_shapes: dict[str, tuple[int, ...]] | None,
    example_inputs: tuple[Any, ...] | None,
    verify_each: bool,
    progress: Callable[[str], None],
    explain: bool = False,
) -> Prepared:
    """`prepare_model` with the pipeline already built; with `explain`, passes that explain
    themselves record their near misses too."""
    progress(f"loading {model if isinstance(model, str | Path) else type(model).__name__}")
    loaded = load_model(model, example_inputs)
    if input_shapes:
        bind_input_shapes(loaded.model, input_shapes)
    require_static_shapes(loaded.model)
    pass_log = run_pipeline(loaded.model, specs, verify_each=verify_each, explain=explain, progress=progress)
    return Prepared(loaded, pass_log, pipeline_path, relax_specs(specs))


def records_dir(target: Target) -> Path:
    """The target's tuning-records database in passc's cache: one per target and CPU."""
    from passc.lowering import resolve_target

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
    input_shapes: dict[str, Any] | None = None,
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
    explain: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> CompileResult:
    """Compiles `model` into an artifact directory.

    `model` is an .onnx path, an ONNX/onnx_ir model or a torch module, compiled as the entry point
    `main`, or a dict {function name: such a model}, one entry point each, in one artifact whose
    functions share equal weights. `input_shapes` maps input names to shapes (for every function)
    or function names to such maps. Every name, option and shape is checked before the slow work
    starts; on any failure the output directory is left as it was. Kernels with tuning records
    (from `passc tune`) in the target's cache, or in the `records` directories if given (`[]`:
    none), use the fastest record. With `explain`, the pass records of passes that explain
    themselves say where their rules nearly fired, and why not (for `passc report`).
    """
    from passc.lowering import resolve_target, tvm_versions

    output = Path(output)
    target = target if isinstance(target, Target) else get_target(target)
    functions = entry_points(model)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if example_inputs is not None and len(functions) > 1:
        raise UsageError("example_inputs is for one torch module; export each function's model first")
    record_dirs = _record_dirs(target, records)
    check_output_dir(output)
    target.require_cxx()
    specs, pipeline_path = _pipeline(target, passes, pass_options, pipeline_file, plugins)
    prepared: dict[str, Prepared] = {}
    for name, source in functions.items():
        if len(functions) > 1:
            progress(f"function {name}")
        shapes = function_input_shapes(name, input_shapes, functions)
        prepared[name] = _prepare(
            source, specs, pipeline_path, shapes, example_inputs, verify_each, progress, explain
        )
    progress(f"lowering with TVM for {target.name} ({target.description})")
    from passc.backends import backend_for
    from passc.lowering import lower

    backend = backend_for(target)
    lowered = lower(
        {name: p.loaded.model for name, p in prepared.items()},
        target,
        record_dirs,
        relax_passes=relax_specs(specs),
        progress=progress,
    )
    if lowered.tuned_kernels:
        progress(f"{lowered.tuned_kernels} of {lowered.kernels} kernels scheduled from tuning records")
    for line in lowered.declined:
        progress(f"declined schedule: {line}")
    relax_log = lowered.relax_log

    def fill(tmp: Path) -> Manifest:
        progress(f"writing the {backend.name} backend's files")
        lowered.write(tmp, target)
        params = write_params(tmp, {name: f.params for name, f in lowered.functions.items()})
        for name, p in prepared.items():
            ir.save(p.loaded.model, tmp / optimized_model_name(name))
        if bundle:
            progress(f"bundling the runtime for {target.wheel_platform}")
            backend.bundle(tmp, target)
        entries = {}
        for name, signature in lowered.functions.items():
            source = prepared.get(name)
            entries[name] = FunctionEntry(
                tuple(signature.inputs),
                tuple(signature.outputs),
                params.get(name, ()),
                source.loaded.sha256 if source else None,
                tuple(r.as_manifest() for r in source.pass_log) if source else (),
                _source_name(functions[name]) if source else None,
            )
        return Manifest(
            passc=__version__,
            tvm=tvm_versions(),
            target=TargetEntry(
                target.name, target.arch, resolve_target(target.tvm), threads or target.threads
            ),
            functions=entries,
            kernels=lowered.kernels,
            tuned_kernels=lowered.tuned_kernels,
            params_bytes=(tmp / PARAMS).stat().st_size if (tmp / PARAMS).exists() else 0,
            constant_bytes=lowered.constant_bytes,
            relax_passes=tuple(r.as_manifest() for r in relax_log),
            kernel_flops=lowered.kernel_flops,
            tuned=lowered.tuned,
        )

    write_artifact(output, fill)
    if depfile is not None:
        deps = [d for p in prepared.values() for d in p.loaded.dependencies]
        deps += [pipeline_path] if pipeline_path else []
        write_depfile(Path(depfile), output, deps + _plugin_dependencies(list(plugins or [])))
    progress(f"wrote {output}")
    logs = {name: p.pass_log for name, p in prepared.items()}
    main_log = logs.get(ENTRY, next(iter(logs.values())))
    return CompileResult(Artifact(output), [*main_log, *relax_log], logs, relax_log)
