"""Loading models (ONNX files with external data, torch modules) and binding input shapes."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from passc.errors import PasscError, UsageError

__all__ = [
    "LoadedModel",
    "load_model",
    "parse_input_shape",
    "bind_input_shapes",
    "require_static_shapes",
    "is_static_dim",
    "array_digest",
    "sha256_file",
]


@dataclass
class LoadedModel:
    """A model in `onnx_ir` form plus where it came from (for the manifest and the depfile)."""

    model: ir.Model
    sha256: str  # of the model file, or of the serialized export for a torch module
    dependencies: list[Path]  # the model file and its external data files


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def array_digest(array: np.ndarray) -> str:
    """The sha256 of a tensor's contents, shape and dtype: equal exactly for equal tensors."""
    data = np.ascontiguousarray(array)
    return hashlib.sha256(data.tobytes() + repr((data.shape, data.dtype.str)).encode()).hexdigest()


def _from_proto(proto: onnx.ModelProto) -> LoadedModel:
    """An in-memory model: hashed as serialized, converted to a fresh `ir.Model` (passes work in
    place, so the caller's model is never changed)."""
    digest = hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
    return LoadedModel(ir.from_proto(proto), digest, [])


def _external_data_files(proto: onnx.ModelProto, base: Path) -> list[Path]:
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            files.add(base / info.location)
    return sorted(files)


def _load_onnx_file(path: Path) -> LoadedModel:
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise PasscError(f"{path} is not a valid ONNX model (corrupt or truncated): {err}") from None
    if not proto.graph.node and not proto.graph.output:
        if path.stat().st_size == 0:
            raise PasscError(f"{path} is empty (0 bytes), not an ONNX model")
        if not proto.graph.ByteSize() and not proto.opset_import:
            raise PasscError(
                f"{path} is not a valid ONNX model (no graph, no opset: corrupt, or another format)"
            )
        raise PasscError(f"{path} is an ONNX model with an empty graph: it has no outputs to compute")
    external = _external_data_files(proto, path.parent)
    missing = [f for f in external if not f.is_file()]
    if missing:
        raise PasscError(f"{path}: external data file missing: {missing[0]}")
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as err:
        raise PasscError(f"{path}: cannot read external data: {err}") from None
    return LoadedModel(ir.from_proto(proto), sha256_file(path), [path, *external])


def _export_torch(module: Any, example_inputs: tuple[Any, ...] | None) -> LoadedModel:
    import torch  # optional dependency: only torch users reach this

    if example_inputs is None:
        raise UsageError("compiling a torch module needs example_inputs=(tensor, ...)")
    try:
        program = torch.onnx.export(module, tuple(example_inputs), dynamo=True, verbose=False)
    except Exception as err:
        raise PasscError(f"torch.export of {type(module).__name__} failed: {err}") from None
    return _from_proto(ir.to_proto(program.model))


def load_model(source: Any, example_inputs: tuple[Any, ...] | None = None) -> LoadedModel:
    """Loads a path to an .onnx file, an `onnx.ModelProto`, an `ir.Model` or a torch module."""
    if isinstance(source, str | Path):
        return _load_onnx_file(Path(source))
    if isinstance(source, onnx.ModelProto):
        return _from_proto(source)
    if isinstance(source, ir.Model):
        return _from_proto(ir.to_proto(source))
    if type(source).__module__.startswith("torch") or hasattr(source, "forward"):
        return _export_torch(source, example_inputs)
    raise UsageError(f"cannot compile a {type(source).__name__}: give an .onnx path or a torch module")


_SHAPE = re.compile(r"^(?P<name>.+):(?P<dims>\d+(x\d+)*)$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parses `--input-shape NAME:1x3x224x224` into ("NAME", (1, 3, 224, 224))."""
    match = _SHAPE.match(text)
    if not match:
        raise UsageError(f"bad --input-shape {text!r}: expected NAME:DIMxDIMx... like input:1x3x224x224")
    return match["name"], tuple(int(d) for d in match["dims"].split("x"))


def bind_input_shapes(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> None:
    """Sets the given inputs' shapes; a bound static dim must agree with the model's."""
    inputs = {v.name: v for v in model.graph.inputs}
    for name, dims in shapes.items():
        if name not in inputs:
            raise UsageError(f"--input-shape names {name!r}, but the model's inputs are: {', '.join(inputs)}")
        value = inputs[name]
        old = value.shape
        if old is not None:
            if len(old) != len(dims):
                raise UsageError(
                    f"--input-shape {name}: model input has rank {len(old)}, got {len(dims)} dims"
                )
            for axis, (have, want) in enumerate(zip(old, dims, strict=True)):
                if is_static_dim(have) and have != want:
                    raise UsageError(
                        f"--input-shape {name}: dim {axis} is fixed at {have} in the model, got {want}"
                    )
        value.shape = ir.Shape(dims)


def is_static_dim(dim: object) -> bool:
    """A known dim: a non-negative int (old exporters write -1 for a dynamic dim)."""
    return isinstance(dim, int) and dim >= 0


def _format_shape(shape: ir.Shape | None) -> str:
    if shape is None:
        return "unknown rank"
    return "x".join(
        str(d) if is_static_dim(d) else (str(d.value) if getattr(d, "value", None) else "?") for d in shape
    )


def require_static_shapes(model: ir.Model) -> None:
    """Raises a UsageError naming the first input whose shape is not fully known."""
    for value in model.graph.inputs:
        shape = value.shape
        if shape is None:
            raise UsageError(
                f"input {value.name!r} has unknown rank; bind it with --input-shape {value.name}:DIMxDIM..."
            )
        if not all(is_static_dim(d) for d in shape):
            example = "x".join(str(d) if is_static_dim(d) else "1" for d in shape)
            raise UsageError(
                f"input {value.name!r} has dynamic shape {_format_shape(shape)}; "
                f"bind it with --input-shape {value.name}:{example}"
            )
