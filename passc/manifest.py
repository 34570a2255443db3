"""The artifact's manifest.json: one typed definition that `compile` writes and every reader uses.

Format 2 (this one) lists each entry point under `functions`, with its inputs, outputs, runtime
parameters (their bytes in params.bin, shared between functions where equal), the sha256 and name
of the ONNX model it came from and the log of the ONNX passes run on it; `relax_passes` logs the
passes run on the whole Relax module; `kernel_flops` counts each kernel's arithmetic and `tuned`
names the kernels scheduled from tuning records (both absent from manifests before `passc report`).
Format 1 (passc before entry points) had one function, `main`, and its pass log and source hash at
the top level: it is read by moving them into `functions.main`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passc.errors import PasscError, UsageError

__all__ = ["FORMAT_VERSION", "Manifest", "FunctionEntry", "TensorEntry", "ParamEntry", "TargetEntry"]

FORMAT_VERSION = 2
_READABLE = (1, 2)


@dataclass(frozen=True)
class TensorEntry:
    """A named tensor of a function's signature."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorEntry:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class ParamEntry(TensorEntry):
    """A runtime parameter: its bytes are params.bin[offset : offset + nbytes]."""

    offset: int = 0
    nbytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), "offset": self.offset, "nbytes": self.nbytes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParamEntry:
        tensor = TensorEntry.from_json(data)
        return cls(tensor.name, tensor.shape, tensor.dtype, int(data["offset"]), int(data["nbytes"]))


@dataclass(frozen=True)
class FunctionEntry:
    """One entry point: called with its inputs, then its params; returns its outputs in order.

    `source_sha256` is None for a function that a Relax pass added (it has no ONNX model)."""

    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    params: tuple[ParamEntry, ...] = ()
    source_sha256: str | None = None
    passes: tuple[dict[str, Any], ...] = ()
    source: str | None = None  # the model's file name, or the torch module's class name

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "inputs": [t.as_json() for t in self.inputs],
            "outputs": [t.as_json() for t in self.outputs],
            "passes": list(self.passes),
            "source_sha256": self.source_sha256,
            "source": self.source,
        }
        if self.params:
            data["params"] = [p.as_json() for p in self.params]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionEntry:
        return cls(
            tuple(TensorEntry.from_json(t) for t in data["inputs"]),
            tuple(TensorEntry.from_json(t) for t in data["outputs"]),
            tuple(ParamEntry.from_json(p) for p in data.get("params", [])),
            data.get("source_sha256"),
            tuple(data.get("passes", [])),
            data.get("source"),
        )


@dataclass(frozen=True)
class TargetEntry:
    name: str
    arch: str
    tvm: dict[str, Any]
    threads: int  # the runners' default TVM_NUM_THREADS

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetEntry:
        return cls(str(data["name"]), str(data["arch"]), dict(data["tvm"]), int(data["threads"]))


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.json` records. `files` maps each other file to its sha256."""

    passc: str
    tvm: dict[str, str]
    target: TargetEntry
    functions: dict[str, FunctionEntry]
    kernels: int
    tuned_kernels: int
    params_bytes: int  # params.bin's size: shared parameters counted once
    constant_bytes: int  # weights compiled into model.so, shared ones counted once
    relax_passes: tuple[dict[str, Any], ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    kernel_flops: dict[str, int] = field(default_factory=dict)  # per kernel, a multiply-add counts 2
    tuned: tuple[str, ...] = ()  # the kernels scheduled from tuning records

    def as_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "passc": self.passc,
            "tvm": dict(self.tvm),
            "target": self.target.as_json(),
            "functions": {name: f.as_json() for name, f in sorted(self.functions.items())},
            "kernels": self.kernels,
            "kernel_flops": dict(sorted(self.kernel_flops.items())),
            "tuned": sorted(self.tuned),
            "tuned_kernels": self.tuned_kernels,
            "weights": {"params_bytes": self.params_bytes, "constant_bytes": self.constant_bytes},
            "relax_passes": list(self.relax_passes),
            "files": dict(sorted(self.files.items())),
        }

    def text(self) -> str:
        """The file's contents: sorted keys, so that rebuilds are byte-identical."""
        return json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Reads format 1 or 2; a newer format is a UsageError that says which passc reads it."""
        if not isinstance(data, dict) or "format" not in data:
            raise KeyError("format")
        version = data.get("format")
        if version not in _READABLE:
            raise UsageError(
                f"artifact format {version!r} is not one this passc reads (formats "
                f"{', '.join(map(str, _READABLE))}); it was written by passc {data.get('passc', '?')}: "
                "rebuild it with this passc, or use that version"
            )
        if version == 1:
            main = {**data["functions"]["main"], "passes": data.get("passes", [])}
            main["source_sha256"] = data.get("source_sha256")
            data = {**data, "functions": {"main": main}}
        weights = data.get("weights", {})
        return cls(
            passc=str(data["passc"]),
            tvm=dict(data["tvm"]),
            target=TargetEntry.from_json(data["target"]),
            functions={name: FunctionEntry.from_json(f) for name, f in data["functions"].items()},
            kernels=int(data["kernels"]),
            tuned_kernels=int(data.get("tuned_kernels", 0)),
            params_bytes=int(weights.get("params_bytes", 0)),
            constant_bytes=int(weights.get("constant_bytes", 0)),
            relax_passes=tuple(data.get("relax_passes", [])),
            files=dict(data.get("files", {})),
            format=FORMAT_VERSION,
            kernel_flops={str(k): int(v) for k, v in data.get("kernel_flops", {}).items()},
            tuned=tuple(str(k) for k in data.get("tuned", [])),
        )

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Reads `path`; a file that is not a manifest of a readable format raises a clear error."""
        try:
            data = json.loads(path.read_text())
            return cls.from_json(data)
        except UsageError:
            raise
        except json.JSONDecodeError as err:
            raise PasscError(f"{path} is corrupt: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise PasscError(f"{path} is not a valid passc manifest: missing or bad {err}") from None
