"""Artifacts: a directory holding the backend's files (model.so for CPUs), manifest.json,
params.bin (runtime parameters), model.onnx (the optimised graph of each ONNX entry point) and,
bundled, the runtime.

Everything in it is a function of the inputs (no timestamps, no absolute paths), so rebuilding
the same models gives byte-identical files. It is written whole or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from passc.atomic import build_directory
from passc.errors import PasscError, UsageError
from passc.loading import array_digest, sha256_file
from passc.manifest import FORMAT_VERSION, FunctionEntry, Manifest, ParamEntry
from passc.targets import Target, get_target

__all__ = [
    "Artifact",
    "ENTRY",
    "FORMAT_VERSION",
    "MANIFEST",
    "OPTIMIZED_MODEL",
    "PARAMS",
    "check_output_dir",
    "optimized_model_name",
    "write_artifact",
    "write_depfile",
    "write_params",
]

MANIFEST = "manifest.json"
PARAMS = "params.bin"  # runtime parameters (e.g. packed low-bit weights), raw, each distinct one once
OPTIMIZED_MODEL = "model.onnx"
ENTRY = "main"  # the entry point a plain model compiles to, and that `run` calls by default


def optimized_model_name(function: str) -> str:
    """The optimised ONNX graph of entry point `function`: model.onnx for main, else model.NAME.onnx."""
    return OPTIMIZED_MODEL if function == ENTRY else f"model.{function}.onnx"


def write_artifact(out_dir: Path, fill: Callable[[Path], Manifest]) -> Path:
    """Creates the artifact directory atomically.

    `fill(tmp)` writes the artifact's files into `tmp` and returns the manifest (without the
    file hashes, which are added here). An existing artifact at `out_dir` is replaced only once
    the new one is complete.
    """
    check_output_dir(out_dir)

    def build(tmp: Path) -> None:
        manifest = fill(tmp)
        manifest.files.clear()
        manifest.files.update({p.name: sha256_file(p) for p in sorted(tmp.iterdir())})
        (tmp / MANIFEST).write_text(manifest.text())

    return build_directory(out_dir, build, replace=True)


# The longest file name most filesystems take (NAME_MAX), less what a temporary sibling adds.
_LONGEST_NAME = 255 - len(".NAME.tmp-XXXXXXXX") + len("NAME")


def check_output_dir(out_dir: Path) -> None:
    """Raises UsageError, before any work, when the artifact cannot be written at `out_dir`: it
    exists and is not an artifact, its parent is not a writable directory, or its name is too long
    for the temporary sibling the build writes first."""
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise UsageError(f"{out_dir} exists and is not a passc artifact; refusing to replace it")
    if len(out_dir.name.encode()) > _LONGEST_NAME:
        raise UsageError(f"output name {out_dir.name[:40]}… is too long (at most {_LONGEST_NAME} bytes)")
    parent = out_dir.absolute().parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"cannot write {out_dir}: {existing} is a file, not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out_dir}: {existing} is not writable (choose another -o)")


def write_params(
    out_dir: Path, params: dict[str, list[tuple[Any, np.ndarray]]]
) -> dict[str, tuple[ParamEntry, ...]]:
    """Writes every function's runtime parameters to PARAMS; returns each function's entries.

    Each distinct tensor (same bytes, shape and dtype) is written once, at the offset of its first
    appearance, and every function that takes it points there.
    """
    offsets: dict[str, int] = {}
    entries: dict[str, tuple[ParamEntry, ...]] = {}
    blobs: list[bytes] = []
    size = 0
    for function, items in params.items():
        listed = []
        for spec, array in items:
            data = np.ascontiguousarray(array).tobytes()
            key = array_digest(array)
            if key not in offsets:
                offsets[key] = size
                blobs.append(data)
                size += len(data)
            listed.append(ParamEntry(spec.name, tuple(spec.shape), spec.dtype, offsets[key], len(data)))
        entries[function] = tuple(listed)
    if blobs:
        with open(out_dir / PARAMS, "wb") as f:
            for data in blobs:
                f.write(data)
    return entries


def _shape_text(shape: Any) -> str:
    """A shape as the CLI writes it (1x3x64x64), or "() (a scalar)"."""
    return "x".join(map(str, shape)) or "() (a scalar)"


def _make_escape(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "\\ ").replace("#", "\\#")


def write_depfile(depfile: Path, output: Path, dependencies: list[Path]) -> None:
    """Writes a Make-style depfile: `output: dep1 dep2 …` (as `gcc -MD` does for objects)."""
    deps = " \\\n  ".join(_make_escape(str(d)) for d in dependencies)
    text = f"{_make_escape(str(output))}: {deps}\n" if deps else f"{_make_escape(str(output))}:\n"
    depfile.parent.mkdir(parents=True, exist_ok=True)
    depfile.write_text(text)


class Artifact:
    """A compiled model on disk. Call it with inputs by name; get outputs by name.

    `functions` lists its entry points; `run(inputs, function=...)` calls one (`main` by default).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise UsageError(f"{self.path} is not a passc artifact (no {MANIFEST})")
        self.info: Manifest = Manifest.read(manifest_path)
        self.target: Target = get_target(self.info.target.name)
        self._runner: Any = None
        self._params: dict[str, list[np.ndarray]] = {}

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as JSON data (in the current format, whatever format the file has)."""
        return self.info.as_json()

    @property
    def functions(self) -> dict[str, FunctionEntry]:
        """The entry points by name: inputs, outputs and runtime parameters of each."""
        return self.info.functions

    def function(self, name: str = ENTRY) -> FunctionEntry:
        """Entry point `name`; an unknown name is a UsageError listing the artifact's functions."""
        if name not in self.info.functions:
            known = ", ".join(sorted(self.info.functions))
            raise UsageError(f"{self.path} has no function {name!r} (its functions: {known})")
        return self.info.functions[name]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """`main`'s inputs: name, shape, dtype, in call order."""
        return [t.as_json() for t in self.function().inputs]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """`main`'s outputs: name, shape, dtype, in return order."""
        return [t.as_json() for t in self.function().outputs]

    def pass_log(self, function: str = ENTRY) -> list[dict[str, Any]]:
        """The ONNX passes run on `function`'s model, then the Relax passes run on the module."""
        return [*self.function(function).passes, *self.info.relax_passes]

    def random_inputs(self, seed: int = 0, function: str = ENTRY) -> dict[str, np.ndarray]:
        """Reproducible random inputs of the function's shapes and dtypes."""
        from passc import oracle  # imports onnxruntime: only when asked

        specs = [(t.name, t.shape, t.dtype) for t in self.function(function).inputs]
        return oracle.random_inputs(specs, seed)

    @property
    def threads(self) -> int:
        """The default number of TVM worker threads (the target's, or `--threads`)."""
        return self.info.target.threads

    def thread_env(self) -> dict[str, str]:
        """The environment for a runner process: TVM_NUM_THREADS is the artifact's default
        unless the environment sets it."""
        return {"TVM_NUM_THREADS": str(self.threads), **os.environ}

    def params_of(self, function: str = ENTRY) -> list[np.ndarray]:
        """The runtime parameters `function` takes after its inputs, read from PARAMS."""
        entries = self.function(function).params
        if entries and function not in self._params:
            blob = np.fromfile(self.path / PARAMS, dtype=np.uint8)
            self._params[function] = [
                blob[e.offset : e.offset + e.nbytes].view(e.dtype).reshape(e.shape) for e in entries
            ]
        return self._params.get(function, [])

    @property
    def params(self) -> list[np.ndarray]:
        """`main`'s runtime parameters."""
        return self.params_of(ENTRY)

    def check(self) -> None:
        """Checks that every file the manifest lists is present with its recorded sha256; a
        missing or damaged file (a truncated copy, a disk error) is a PasscError naming it, so it
        is never loaded (a truncated model.so crashes the process that maps it)."""
        for name, digest in sorted(self.info.files.items()):
            path = self.path / name
            if not path.is_file():
                raise PasscError(f"{self.path} is damaged: {name} is missing; rebuild the artifact")
            if sha256_file(path) != digest:
                raise PasscError(
                    f"{self.path} is damaged: {name} differs from the file it was built with "
                    "(sha256 mismatch); rebuild the artifact"
                )

    @property
    def bundled(self) -> bool:
        return (self.path / "passc-run").is_file()

    def _check_inputs(self, function: str, inputs: dict[str, Any]) -> list[np.ndarray]:
        specs = self.function(function).inputs
        names = [spec.name for spec in specs]
        unknown = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            what = "the model's" if function == ENTRY else f"function {function!r}'s"
            raise UsageError(
                f"{what} inputs are {', '.join(names)}; "
                + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
            )
        arrays = []
        for spec in specs:
            array = np.asarray(inputs[spec.name], order="C")  # a scalar stays 0-d
            if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
                raise UsageError(
                    f"input {spec.name!r} must be {spec.dtype} of shape "
                    f"{_shape_text(spec.shape)}, got {array.dtype} of shape {_shape_text(array.shape)}"
                )
            arrays.append(array)
        return arrays

    def run(
        self, inputs: dict[str, Any], *, function: str = ENTRY, emulate: bool = False
    ) -> dict[str, np.ndarray]:
        """Runs entry point `function`: in-process on the host, or through the bundled runner.

        With `emulate`, the bundled `passc-run` runs it, under the target's emulator if its ISA
        differs from the host's.
        """
        arrays = self._check_inputs(function, inputs)
        if self._runner is None:
            from passc.backends import backend_for

            self.check()  # once, before any file is loaded
            self._runner = backend_for(self.target).runner(self)
        results = self._runner(function, arrays, emulate=emulate)
        specs = self.function(function).outputs
        for spec, result in zip(specs, results, strict=True):
            if result.shape != spec.shape:
                raise PasscError(
                    f"output {spec.name!r} came back with shape {_shape_text(result.shape)}, not the "
                    f"manifest's {_shape_text(spec.shape)}: its shape depends on the data, which passc "
                    "does not compile"
                )
        return {spec.name: r for spec, r in zip(specs, results, strict=True)}

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        return self.run(inputs)
