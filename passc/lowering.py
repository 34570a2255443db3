"""Lowering to Apache TVM: passc's TVM layer, independent of the target kind.

    ONNX models (one per entry point) → Relax (`relax.frontend.onnx.from_onnx`), one IRModule
    → Relax-level passes (`passc.relax_stage`) → the target's backend (`passc.backends`):
      legalize, schedule, lower → an executable the backend writes into the artifact.

Only the TVM layer imports TVM: this module, `passc.relax_stage`, `passc.backends`, `passc.runtime`,
`passc.schedules` and `passc.metaschedule`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from passc.errors import PasscError
from passc.loading import array_digest
from passc.manifest import TensorEntry
from passc.pass_base import RUNTIME_PARAMS_KEY

__all__ = [
    "ENTRY",
    "Imported",
    "Lowered",
    "Signature",
    "TensorSpec",
    "import_models",
    "legalized_kernels",
    "lower",
    "resolve_target",
    "tvm_errors",
    "tvm_versions",
    "unsupported_nodes",
]

# The function a plain model compiles to, and the one `Artifact.run` calls by default.
ENTRY = "main"
# A Relax function attribute: the output names of a function a Relax pass adds (default output_<i>).
OUTPUT_NAMES_ATTR = "passc.output_names"


# A tensor of a compiled function's signature: what the manifest records of it.
TensorSpec = TensorEntry


@dataclass
class Signature:
    """An entry point: its inputs, outputs and runtime parameters (passed after the inputs)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    params: list[tuple[TensorSpec, np.ndarray]] = field(default_factory=list)


def tvm_versions() -> dict[str, str]:
    """Versions of the TVM compiler packages; the runtime libraries must match them."""
    return {
        "apache-tvm": importlib.metadata.version("apache-tvm"),
        "apache-tvm-ffi": importlib.metadata.version("apache-tvm-ffi"),
    }


def unsupported_nodes(model: ir.Model) -> list[ir.Node]:
    """Nodes whose op TVM's ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"If", "Constant"}
    return [n for n in model.graph if n.domain not in ("", "ai.onnx") or n.op_type not in known]


def resolve_target(tvm_target: dict[str, Any]) -> dict[str, Any]:
    """The target dict with `"mcpu": "native"` replaced by this machine's CPU (LLVM's name for it)."""
    if tvm_target.get("mcpu") != "native":
        return dict(tvm_target)
    from tvm.target import codegen

    return {**tvm_target, "mcpu": codegen.llvm_get_system_cpu()}


@contextlib.contextmanager
def tvm_errors() -> Iterator[None]:
    """Turns what TVM raises (builtin exception types) into a PasscError with its first line."""
    try:
        yield
    except PasscError:
        raise
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PasscError(f"TVM failed to compile the model: {first_line}") from err


@dataclass
class Imported:
    """Models imported into one Relax module (one public function each), before any TVM pass."""

    mod: Any  # tvm.IRModule
    target: Any  # tvm.target.Target
    functions: dict[str, Signature]
    relax_log: list[Any] = field(default_factory=list)  # PassRecords of the Relax passes


def _import_one(model: ir.Model) -> tuple[Any, Signature]:
    """One model as a Relax module (its `main` and any kernels the importer wrote), with its
    signature."""
    from tvm.relax.frontend.onnx import from_onnx

    bad = unsupported_nodes(model)
    if bad:
        node = bad[0]
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        raise PasscError(f"TVM cannot lower op {op} (node {node.name!r}); no converter exists for it")
    inputs = [TensorSpec(v.name, tuple(v.shape), v.dtype.numpy().name) for v in model.graph.inputs]
    proto = ir.to_proto(model)
    params = _runtime_params_as_inputs(proto, json.loads(model.metadata_props.get(RUNTIME_PARAMS_KEY, "[]")))
    signature = inputs + [spec for spec, _ in params]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # from_onnx re-raises onnx.checker complaints as warnings
        mod = from_onnx(
            proto,
            shape_dict={s.name: list(s.shape) for s in signature},
            dtype_dict={s.name: s.dtype for s in signature},
            keep_params_in_input=False,
        )
    outputs = _outputs_of(mod["main"], [v.name for v in model.graph.outputs])
    empty = next((s for s in inputs + outputs if 0 in s.shape), None)
    if empty is not None:
        kind = "input" if empty in inputs else "output"
        raise PasscError(
            f"{kind} {empty.name!r} has a zero-sized dimension {list(empty.shape)}; passc compiles "
            "tensors with at least one element (bind the dimension with --input-shape)"
        )
    return mod, Signature(inputs, outputs, params)


def _add_module(builder: Any, mod: Any, name: str) -> None:
    """Adds an imported module to `builder`: its `main` as the public function `name`, its other
    functions (kernels the importer wrote) under their names, or new ones where another model's
    function of that name differs, with main's references moved to the added functions."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Rename(relax.PyExprMutator):
        def __init__(self, moved: dict[str, Any]) -> None:
            super().__init__()
            self.moved = moved

        def visit_global_var_(self, op: Any) -> Any:
            return self.moved.get(op.name_hint, op)

    moved = {}
    for gv, func in mod.functions_items():
        if gv.name_hint != "main":
            moved[gv.name_hint] = builder.add_func(func, gv.name_hint)
    main = Rename(moved).visit_expr(mod["main"]) if moved else mod["main"]
    builder.add_func(main.with_attr("global_symbol", name), name)


def import_models(models: dict[str, ir.Model], tvm_target: dict[str, Any]) -> Imported:
    """Imports each (shape-static) model as the public Relax function of its name, in one module."""
    import tvm
    from tvm import relax

    target = tvm.target.Target(resolve_target(tvm_target))
    builder = relax.BlockBuilder()  # its GlobalVars carry their function's type, for calls
    functions = {}
    with tvm_errors():
        for name, model in models.items():
            mod, functions[name] = _import_one(model)
            _add_module(builder, mod, name)
    return Imported(builder.get(), target, functions)


def constant_array(expr: Any) -> np.ndarray | None:
    """The value of a Relax tensor constant (a weight), else None."""
    import tvm

    if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor):
        return expr.value.numpy()
    return None


def distinct_constants(mod: Any) -> dict[str, np.ndarray]:
    """The module's tensor constants, each distinct tensor (by content, shape and dtype) once."""
    from tvm import relax

    seen: dict[str, np.ndarray] = {}

    def visit(expr: Any) -> None:
        array = constant_array(expr)
        if array is not None:
            seen[array_digest(array)] = array

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return seen


def distinct_constant_bytes(mod: Any) -> int:
    """Bytes of the module's distinct tensor constants: what the VM's constant pool, which merges
    equal constants, stores."""
    return sum(array.nbytes for array in distinct_constants(mod).values())


def _outputs_of(func: Any, output_names: list[str]) -> list[TensorSpec]:
    from tvm import relax

    info = func.ret_ty
    fields = list(info.fields) if isinstance(info, relax.TupleType) else [info]
    if len(fields) != len(output_names):
        raise PasscError(
            f"TVM's function returns {len(fields)} values, the model has {len(output_names)} outputs"
        )
    return [_tensor_spec(name, field, "output") for name, field in zip(output_names, fields, strict=True)]


def _tensor_spec(name: str, info: Any, what: str) -> TensorSpec:
    from tvm import relax

    if not isinstance(info, relax.TensorType) or info.shape is None:
        raise PasscError(f"{what} {name!r} is not a plain tensor after lowering")
    try:
        shape = tuple(int(d) for d in info.shape.values)
    except (TypeError, AttributeError):
        raise PasscError(
            f"{what} {name!r} has a data-dependent shape ({info.shape}); passc needs static shapes"
        ) from None
    return TensorSpec(name, shape, str(info.dtype))


def public_functions(mod: Any) -> dict[str, Any]:
    """The module's Relax functions callable from outside (those with a `global_symbol`), by name."""
    from tvm import relax

    return {
        str(func.attrs["global_symbol"]): func
        for _, func in mod.functions.items()
        if isinstance(func, relax.Function) and func.attrs is not None and "global_symbol" in func.attrs
    }


def signatures_after_passes(imported: Imported) -> dict[str, Signature]:
    """The entry points once Relax passes have run: the imported ones, whose parameters must be
    unchanged, and each public function a pass added (all its parameters are inputs; its outputs
    are named by its `passc.output_names` attribute, else output_0, output_1, …)."""
    from tvm import relax

    functions = public_functions(imported.mod)
    missing = sorted(set(imported.functions) - set(functions))
    if missing:
        raise PasscError(f"a Relax pass removed the entry point {missing[0]!r}")
    signatures = {}
    for name, func in sorted(functions.items()):
        known = imported.functions.get(name)
        params = [_tensor_spec(p.name, p.ty, "parameter") for p in func.params]
        if known is not None:
            expected = known.inputs + [spec for spec, _ in known.params]
            if [(s.shape, s.dtype) for s in params] != [(s.shape, s.dtype) for s in expected]:
                raise PasscError(f"a Relax pass changed the parameters of entry point {name!r}")
            known.outputs = _outputs_of(func, [s.name for s in known.outputs])
            signatures[name] = known
            continue
        info = func.ret_ty
        count = len(info.fields) if isinstance(info, relax.TupleType) else 1
        names = [str(n) for n in func.attrs[OUTPUT_NAMES_ATTR]] if OUTPUT_NAMES_ATTR in func.attrs else []
        names = names or [f"output_{i}" for i in range(count)]
        signatures[name] = Signature(params, _outputs_of(func, names))
    return signatures


@dataclass
class Lowered:
    """A compiled module ready for its backend to write, with every entry point's signature."""

    executable: Any
    functions: dict[str, Signature]
    kernels: int  # TIR functions (fused kernels) in the compiled module
    tuned_kernels: int  # of those, how many took their schedule from tuning records
    constant_bytes: int  # bytes of the distinct weights compiled into the module
    backend: Any
    relax_log: list[Any] = field(default_factory=list)
    kernel_flops: dict[str, int] = field(default_factory=dict)  # per kernel (`Built.kernel_flops`)
    tuned: tuple[str, ...] = ()  # the kernels scheduled from tuning records
    declined: tuple[str, ...] = ()  # `Built.declined`

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.functions[ENTRY].inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.functions[ENTRY].outputs

    @property
    def params(self) -> list[tuple[TensorSpec, np.ndarray]]:
        return self.functions[ENTRY].params

    def write(self, out_dir: Path, target: Any) -> list[str]:
        """Writes the compiled module into the artifact directory `out_dir` (its backend's files)."""
        return self.backend.write(self.executable, out_dir, target)


def import_and_transform(
    models: dict[str, ir.Model] | ir.Model,
    target: Any,
    relax_passes: list[Any] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Imported:
    """Imports the models and runs the Relax-level passes `relax_passes` (PassSpecs) on the module."""
    from passc.backends import backend_for
    from passc.relax_stage import run_relax_passes

    models = models if isinstance(models, dict) else {ENTRY: models}
    backend = backend_for(target)
    imported = import_models(models, backend.tvm_target(target))
    if relax_passes:
        imported.mod, imported.relax_log = run_relax_passes(imported.mod, relax_passes, progress=progress)
        with tvm_errors():
            imported.functions = signatures_after_passes(imported)
    return imported


def legalized_kernels(
    models: dict[str, ir.Model] | ir.Model, target: Any, relax_passes: list[Any] | None = None
) -> tuple[Any, Any]:
    """The Relax module after the backend's legalization and fusion, and its TVM target: what
    tuning extracts its tasks from. `target` is a `Target` or a TVM target dict."""
    from passc.backends import backend_for

    imported = import_and_transform(models, target, relax_passes)
    with tvm_errors():
        return backend_for(target).legalize(imported.mod, imported.target), imported.target


def lower(
    models: dict[str, ir.Model] | ir.Model,
    target: Any,
    records: list[Path] | None = None,
    relax_passes: list[Any] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Lowered:
    """Compiles the (shape-static) models, one entry point each (a plain model is `main`), for
    `target` (a `Target`, or a TVM target dict for the CPU backend), applying the tuning records in
    the database directories `records` where they match a kernel."""
    from passc.backends import backend_for

    backend = backend_for(target)
    imported = import_and_transform(models, target, relax_passes, progress)
    constant_bytes = distinct_constant_bytes(imported.mod)
    with tvm_errors():
        built = backend.build(imported.mod, imported.target, list(records or []))
    return Lowered(
        built.executable,
        imported.functions,
        built.kernels,
        built.tuned_kernels,
        constant_bytes,
        backend,
        imported.relax_log,
        built.kernel_flops,
        built.tuned,
        built.declined,
    )


def _runtime_params_as_inputs(proto: Any, names: list[str]) -> list[tuple[TensorSpec, np.ndarray]]:
    """Turns the named initializers into graph inputs after the real ones, so TVM sees parameters
    it cannot fold; returns them with their values, in call order."""
    import onnx
    import onnx.numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    params = []
    for name in names:
        if name not in initializers:
            raise PasscError(f"runtime parameter {name!r} is not an initializer of the model")
        tensor = initializers[name]
        array = onnx.numpy_helper.to_array(tensor)
        proto.graph.initializer.remove(tensor)
        proto.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, array.shape))
        params.append((TensorSpec(name, array.shape, array.dtype.name), array))
    return params
