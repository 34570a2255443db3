"""Artifacts: a directory holding model.so, manifest.json, model.onnx and, bundled, the runtime.

Everything in it is a function of the inputs (no timestamps, no absolute paths), so rebuilding
the same model gives byte-identical files. It is written whole or not at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from passc.atomic import build_directory
from passc.errors import PasscError, UsageError
from passc.loading import sha256_file
from passc.lowering import HostModule
from passc.targets import Target, get_target

__all__ = [
    "Artifact",
    "write_artifact",
    "write_depfile",
    "write_params",
    "MANIFEST",
    "LIBRARY",
    "PARAMS",
    "ENTRY",
    "FORMAT_VERSION",
]

MANIFEST = "manifest.json"
LIBRARY = "model.so"
PARAMS = "params.bin"  # runtime parameters (e.g. packed low-bit weights), raw, in call order
OPTIMIZED_MODEL = "model.onnx"
FORMAT_VERSION = 1
# The compiled function that `run` calls; the manifest lists signatures per function so that
# artifacts with several entry points (a router and sub-networks, a training step) fit.
ENTRY = "main"


def write_artifact(out_dir: Path, fill: Callable[[Path], dict[str, Any]]) -> Path:
    """Creates the artifact directory atomically.

    `fill(tmp)` writes the artifact's files into `tmp` and returns the manifest (without the
    file hashes, which are added here). An existing artifact at `out_dir` is replaced only once
    the new one is complete.
    """
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise UsageError(f"{out_dir} exists and is not a passc artifact; refusing to replace it")

    def build(tmp: Path) -> None:
        manifest = fill(tmp)
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST).write_text(text)

    return build_directory(out_dir, build, replace=True)


def write_params(out_dir: Path, params: list[tuple[Any, np.ndarray]]) -> list[dict[str, Any]]:
    """Writes runtime parameters to PARAMS back to back; returns their manifest entries.

    Each entry is the tensor's name, shape, dtype, byte offset and byte count in the file.
    """
    entries, offset = [], 0
    if not params:
        return entries
    with open(out_dir / PARAMS, "wb") as f:
        for spec, array in params:
            data = np.ascontiguousarray(array).tobytes()
            f.write(data)
            entries.append({**spec.as_dict(), "offset": offset, "nbytes": len(data)})
            offset += len(data)
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
    """A compiled model on disk. Call it with inputs by name; get outputs by name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise UsageError(f"{self.path} is not a passc artifact (no {MANIFEST})")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise PasscError(f"{manifest_path} is corrupt: {err}") from None
        self.target: Target = get_target(self.manifest["target"]["name"])
        self._host_module: HostModule | None = None
        self._params: list[np.ndarray] | None = None

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """The entry point's inputs: name, shape, dtype, in call order."""
        return self.manifest["functions"][ENTRY]["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The entry point's outputs: name, shape, dtype, in return order."""
        return self.manifest["functions"][ENTRY]["outputs"]

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Reproducible random inputs of the entry point's shapes and dtypes."""
        from passc import oracle  # imports onnxruntime: only when asked

        return oracle.random_inputs([(s["name"], tuple(s["shape"]), s["dtype"]) for s in self.inputs], seed)

    @property
    def threads(self) -> int:
        """The default number of TVM worker threads (the target's, or `--threads`)."""
        return int(self.manifest["target"]["threads"])

    def _thread_env(self) -> dict[str, str]:
        """The environment with TVM_NUM_THREADS set to the artifact's default unless already set."""
        return {"TVM_NUM_THREADS": str(self.threads), **os.environ}

    @property
    def params(self) -> list[np.ndarray]:
        """The runtime parameters the entry point takes after its inputs, read from PARAMS."""
        entries = self.manifest["functions"][ENTRY].get("params", [])
        if entries and self._params is None:
            blob = np.fromfile(self.path / PARAMS, dtype=np.uint8)
            self._params = [
                blob[e["offset"] : e["offset"] + e["nbytes"]].view(e["dtype"]).reshape(e["shape"])
                for e in entries
            ]
        return self._params or []

    @property
    def bundled(self) -> bool:
        return (self.path / "passc-run").is_file()

    def _check_inputs(self, inputs: dict[str, Any]) -> list[np.ndarray]:
        names = [spec["name"] for spec in self.inputs]
        unknown = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            raise UsageError(
                f"the model's inputs are {', '.join(names)}; "
                + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
            )
        arrays = []
        for spec in self.inputs:
            array = np.asarray(inputs[spec["name"]], order="C")  # a scalar stays 0-d
            if list(array.shape) != spec["shape"] or array.dtype != np.dtype(spec["dtype"]):
                raise UsageError(
                    f"input {spec['name']!r} must be {spec['dtype']} of shape "
                    f"{_shape_text(spec['shape'])}, got {array.dtype} of shape {_shape_text(array.shape)}"
                )
            arrays.append(array)
        return arrays

    def run(self, inputs: dict[str, Any], *, emulate: bool = False) -> dict[str, np.ndarray]:
        """Runs the model: in-process on the host, or through the bundled runner.

        With `emulate`, the bundled `passc-run` runs the model, under the target's emulator if
        its ISA differs from the host's.
        """
        arrays = self._check_inputs(inputs)
        if emulate:
            results = self._run_bundled(arrays)
        elif self.target.runs_on_host:
            if self._host_module is None:
                # TVM reads TVM_NUM_THREADS once, when the process first runs a parallel kernel.
                os.environ.setdefault("TVM_NUM_THREADS", str(self.threads))
                self._host_module = HostModule(self.path / LIBRARY, {ENTRY: self.params})
            results = self._host_module(ENTRY, *arrays)
        else:
            raise UsageError(
                f"{self.path} is built for {self.target.arch}; run it under emulation with "
                "--emulate (emulate=True) or on the device with passc-run"
            )
        return {spec["name"]: r for spec, r in zip(self.outputs, results, strict=True)}

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        return self.run(inputs)

    def _run_bundled(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if not self.bundled:
            raise UsageError(f"{self.path} has no bundled runner; compile it with --bundle")
        command = [] if self.target.runs_on_host else self.target.require_emulator()
        with tempfile.TemporaryDirectory(prefix="passc-run-") as tmp:
            in_files = [Path(tmp) / f"in{i}.bin" for i in range(len(arrays))]
            out_files = [Path(tmp) / f"out{i}.bin" for i in range(len(self.outputs))]
            for array, path in zip(arrays, in_files, strict=True):
                array.tofile(path)
            command += [str(self.path.resolve() / "passc-run"), str(self.path.resolve() / LIBRARY)]
            command += [str(p) for p in in_files + out_files]
            done = subprocess.run(command, capture_output=True, text=True, env=self._thread_env())
            if done.returncode != 0:
                raise PasscError(f"passc-run failed: {done.stderr.strip() or done.returncode}")
            return [
                np.fromfile(path, dtype=spec["dtype"]).reshape(spec["shape"])
                for path, spec in zip(out_files, self.outputs, strict=True)
            ]
