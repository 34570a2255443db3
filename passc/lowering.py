"""Lowering to Apache TVM: passc's TVM layer.

onnx_ir model → ONNX proto → Relax (`relax.frontend.onnx.from_onnx`) → the target's Relax pipeline
(TVM's `cpu_generic` phases: dispatch, legalize, schedules, dataflow lowering, finalize) →
`tvm.compile` → a shared library exported with the target's C++ toolchain. Running a host
artifact through TVM's Python runtime lives here too. Only this module and the two packages it
drives import TVM: `passc.schedules` (default schedules) and `passc.tuning` (MetaSchedule), so a
TVM upgrade is this layer's work.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from passc.errors import PasscError
from passc.pass_base import RUNTIME_PARAMS_KEY

__all__ = [
    "TensorSpec",
    "Imported",
    "Lowered",
    "import_model",
    "kernel_times",
    "legalized_kernels",
    "lower",
    "measure_latency",
    "resolve_target",
    "tvm_versions",
    "HostModule",
    "unsupported_nodes",
]


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of the compiled function's signature."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


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


SCHEDULES_ENV = "PASSC_SCHEDULES"


def _schedules_enabled() -> bool:
    """PASSC_SCHEDULES=0 leaves TVM's naive loops (no default schedules, no tuning records)."""
    return os.environ.get(SCHEDULES_ENV, "1") != "0"


def _legalize(mod: Any, target: Any) -> Any:
    """The Relax phases up to the fused, legalized PrimFuncs (TVM's `cpu_generic` dispatch and
    legalize). Tuning extracts its tasks here, so records match what compile schedules."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    with target:
        if _schedules_enabled():
            from passc.schedules import legalize_passes

            legalize = legalize_passes()  # packed convs and vector exp/erf, for passc's rules
        else:
            legalize = cpu_generic.legalize_passes(target)
        phases = cpu_generic.library_dispatch_passes(target) + legalize
        return tvm.transform.Sequential(phases)(mod)


def _schedule_and_finalize(mod: Any, target: Any, records: list[Path]) -> tuple[Any, int]:
    """Schedules every kernel, then runs the rest of the Relax pipeline; returns the module and
    how many kernels took a schedule from the tuning records in `records`.

    Kernels with a matching tuning record get its best schedule (`MetaScheduleApplyDatabase`);
    every other kernel gets passc's default schedule (`passc.schedules`).
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    tuned = 0
    with target:
        if _schedules_enabled():
            from passc.metaschedule import open_records
            from passc.schedules import schedule_passes

            database = open_records(records)
            if database is not None:
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
                tuned = sum(1 for _, f in mod.functions.items() if _is_scheduled(f))
            mod = tvm.transform.Sequential(schedule_passes(target))(mod)
        phases = cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)
        return tvm.transform.Sequential(phases)(mod), tuned


def _is_scheduled(func: Any) -> bool:
    import tvm

    return isinstance(func, tvm.tirx.PrimFunc) and bool(func.attrs and func.attrs.get("tirx.is_scheduled"))


def _signature_of(func: Any, output_names: list[str]) -> list[TensorSpec]:
    from tvm import relax

    info = func.ret_ty
    fields = list(info.fields) if isinstance(info, relax.TupleType) else [info]
    if len(fields) != len(output_names):
        raise PasscError(
            f"TVM's function returns {len(fields)} values, the model has {len(output_names)} outputs"
        )
    specs = []
    for name, field in zip(output_names, fields, strict=True):
        if not isinstance(field, relax.TensorType) or field.shape is None:
            raise PasscError(f"output {name!r} is not a plain tensor after lowering")
        try:
            shape = tuple(int(d) for d in field.shape.values)
        except TypeError:
            raise PasscError(
                f"output {name!r} has a data-dependent shape ({field.shape}); passc needs static shapes"
            ) from None
        specs.append(TensorSpec(name, shape, str(field.dtype)))
    return specs


@dataclass
class Lowered:
    """A compiled model ready to export, with its input/output signature."""

    executable: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    kernels: int  # TIR functions (fused kernels) in the compiled module
    tuned_kernels: int  # of those, how many took their schedule from tuning records
    params: list[tuple[TensorSpec, np.ndarray]]  # runtime parameters, passed after the inputs
    constant_bytes: int  # bytes of the initializers handed to TVM as constants (into model.so)

    def export(self, path: Path, cxx: str) -> None:
        """Writes the shared library, linked by the C++ compiler `cxx` (a cross compiler or g++)."""
        from tvm.support import cc

        try:
            self.executable.export_library(str(path), fcompile=cc.cross_compiler(cxx))
        except Exception as err:
            raise PasscError(f"linking model.so with {cxx} failed: {err}") from None


def resolve_target(tvm_target: dict[str, Any]) -> dict[str, Any]:
    """The target dict with `"mcpu": "native"` replaced by this machine's CPU (LLVM's name for it)."""
    if tvm_target.get("mcpu") != "native":
        return dict(tvm_target)
    from tvm.target import codegen

    return {**tvm_target, "mcpu": codegen.llvm_get_system_cpu()}


@dataclass
class Imported:
    """A model imported into Relax, before any TVM pass, with its signature."""

    mod: Any  # tvm.IRModule
    target: Any  # tvm.target.Target
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    params: list[tuple[TensorSpec, np.ndarray]]
    constant_bytes: int


def import_model(model: ir.Model, tvm_target: dict[str, Any]) -> Imported:
    """Imports the (shape-static) model into Relax for the TVM target dict."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    bad = unsupported_nodes(model)
    if bad:
        node = bad[0]
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        raise PasscError(f"TVM cannot lower op {op} (node {node.name!r}); no converter exists for it")
    inputs = [TensorSpec(v.name, tuple(v.shape), v.dtype.numpy().name) for v in model.graph.inputs]
    proto = ir.to_proto(model)
    params = _runtime_params_as_inputs(proto, json.loads(model.metadata_props.get(RUNTIME_PARAMS_KEY, "[]")))
    constant_bytes = sum(ir.from_proto(t).nbytes for t in proto.graph.initializer)
    signature = inputs + [spec for spec, _ in params]
    target = tvm.target.Target(resolve_target(tvm_target))
    with _tvm_errors():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # from_onnx re-raises onnx.checker complaints as warnings
            mod = from_onnx(
                proto,
                shape_dict={s.name: list(s.shape) for s in signature},
                dtype_dict={s.name: s.dtype for s in signature},
                keep_params_in_input=False,
            )
        outputs = _signature_of(mod["main"], [v.name for v in model.graph.outputs])
    return Imported(mod, target, inputs, outputs, params, constant_bytes)


def legalized_kernels(model: ir.Model, tvm_target: dict[str, Any]) -> tuple[Any, Any]:
    """The model's Relax module after legalization and fusion, and its TVM target: what tuning
    extracts its tasks from."""
    imported = import_model(model, tvm_target)
    with _tvm_errors():
        return _legalize(imported.mod, imported.target), imported.target


def lower(model: ir.Model, tvm_target: dict[str, Any], records: list[Path] | None = None) -> Lowered:
    """Compiles the (shape-static) model for the TVM target dict, applying the tuning records in
    the database directories `records` where they match a kernel."""
    import tvm

    imported = import_model(model, tvm_target)
    with _tvm_errors():
        mod = _legalize(imported.mod, imported.target)
        mod, tuned = _schedule_and_finalize(mod, imported.target, list(records or []))
        kernels = sum(1 for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
        executable = tvm.compile(mod, target=imported.target, relax_pipeline=None)
    return Lowered(
        executable,
        imported.inputs,
        imported.outputs,
        kernels,
        tuned,
        imported.params,
        imported.constant_bytes,
    )


@contextlib.contextmanager
def _tvm_errors() -> Iterator[None]:
    """Turns what TVM raises (builtin exception types) into a PasscError with its first line."""
    try:
        yield
    except PasscError:
        raise
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PasscError(f"TVM failed to compile the model: {first_line}") from err


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


class HostModule:
    """A model.so for this machine, loaded through TVM's runtime; call its functions with numpy.

    `params` maps a function to the runtime parameters it takes after its inputs. They are copied
    into TVM tensors once, here, not on every call (ResNet-18's 47 MB of weights cost ~4 ms a copy).

    An input that is 64-byte aligned (what TVM's kernels assume) and writable (DLPack has no
    read-only flag; the kernels only read it) is passed without a copy; any
    other is copied into a buffer kept for that input, allocated on the first call. A new TVM
    tensor per call costs its allocation, the page faults of fresh memory and the copy: 35-70 µs
    for a 224² image, 2% of MobileNetV3's run. Outputs are copied into new numpy arrays. Calls
    are serialised (the buffers and TVM's VM are shared between them).
    """

    def __init__(self, path: Path, params: dict[str, list[np.ndarray]] | None = None) -> None:
        import tvm
        from tvm import relax

        self._tvm = tvm
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
        self._params = {
            function: [tvm.runtime.tensor(np.asarray(a, order="C")) for a in arrays]
            for function, arrays in (params or {}).items()
        }
        self._buffers: dict[tuple[str, int], tuple[np.ndarray, Any]] = {}
        self._lock = threading.Lock()

    def _tensor(self, function: str, index: int, array: np.ndarray) -> Any:
        """The TVM tensor to pass as input `index` of `function`: `array` itself when aligned."""
        array = np.asarray(array, order="C")  # C-contiguous; a scalar stays 0-d
        if array.ctypes.data % ALIGNMENT == 0 and array.flags.writeable:  # DLPack exports no read-only
            return self._tvm.runtime.from_dlpack(array)
        buffer, tensor = self._buffers.get((function, index), (None, None))
        if buffer is None or buffer.shape != array.shape or buffer.dtype != array.dtype:
            buffer = aligned_empty(array.shape, array.dtype)
            tensor = self._tvm.runtime.from_dlpack(buffer)
            self._buffers[function, index] = buffer, tensor
        np.copyto(buffer, array)
        return tensor

    def __call__(self, function: str, *inputs: np.ndarray) -> list[np.ndarray]:
        """Calls the compiled function `function` on the inputs (then its bound parameters)."""
        with self._lock:
            tensors = [self._tensor(function, i, x) for i, x in enumerate(inputs)]
            result = self._vm[function](*tensors, *self._params.get(function, []))
            results = [result] if isinstance(result, self._tvm.runtime.Tensor) else list(result)
            return [np.from_dlpack(r).copy() for r in results]


# The byte alignment TVM's kernels assume of every tensor they are passed.
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an `ALIGNMENT`-byte boundary."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + size].view(dtype).reshape(shape)


def measure_latency(
    model: ir.Model, tvm_target: dict[str, Any], cxx: str, *, rpc: str | None = None, repeat: int = 5
) -> float:
    """Median seconds per run of `model` compiled for the target, on this host or over TVM RPC.

    `rpc` is "HOST:PORT" of a `python -m tvm.exec.rpc_server` on the device: the library is built
    with the target's toolchain, uploaded and timed there (TVM's time_evaluator: one warm-up run,
    then `repeat` timings of at least 20 ms each). Inputs are random; runtime parameters are the
    model's own.
    """
    import tvm
    from tvm import relax

    lowered = lower(model, tvm_target)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s.shape).astype(s.dtype) for s in lowered.inputs]
    arrays += [array for _, array in lowered.params]
    with tempfile.TemporaryDirectory(prefix="passc-latency-") as tmp:
        path = Path(tmp) / "model.so"
        lowered.export(path, cxx)
        try:
            if rpc is None:
                library, device = tvm.runtime.load_module(str(path)), tvm.cpu()
            else:
                host, _, port = rpc.rpartition(":")
                session = tvm.rpc.connect(host, int(port))
                session.upload(str(path))
                library, device = session.load_module("model.so"), session.cpu()
            vm = relax.VirtualMachine(library, device)
            vm.set_input("main", *[tvm.runtime.tensor(a, device=device) for a in arrays])
            timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=repeat, min_repeat_ms=20)
            return float(timer("main").median)
        except Exception as err:  # TVM raises builtin types (ValueError, RuntimeError, OSError, …)
            where = f"over RPC at {rpc}" if rpc else "on this host"
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise PasscError(f"timing the model {where} failed: {first_line}") from None


def kernel_times(
    executables: list[Any], arrays: list[np.ndarray], *, threads: int, rounds: int, pause_s: float = 0.05
) -> list[list[dict[str, float]]]:
    """Each kernel's seconds inside whole runs of compiled models, on this machine.

    `executables` (`Lowered.executable`s of one model) take turns on the same `arrays` (inputs,
    then runtime parameters), `rounds` times, the order alternating so that neither always runs
    first; each run waits `pause_s` so that the previous one's spinning threads have stopped. The
    VM's instrument hook reads the clock before and after every call, so a kernel is timed where
    the model runs it: after the kernel before it, with the caches that one left. Returns, per
    executable, one dict per round: kernel symbol -> seconds, summed over its calls in the run.
    TVM's thread pool runs `threads` threads meanwhile and is set back afterwards.

    TVM sizes its pool once per process, when it is first used, from TVM_NUM_THREADS (else from
    half the logical CPUs on x86: one thread on a 2-vCPU machine), and can later only run fewer
    threads than that. So unless TVM_NUM_THREADS is set, this sets it to `threads` first, and it
    raises PasscError when the pool cannot run `threads` threads, rather than time fewer.
    """
    import tvm
    from tvm import relax

    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    configure = tvm.get_global_func("runtime.config_threadpool")
    count = tvm.get_global_func("runtime.NumThreads")
    before = count()
    vms = [relax.VirtualMachine(e, tvm.cpu()) for e in executables]
    clocks = [_KernelClock() for _ in vms]
    for vm, clock in zip(vms, clocks, strict=True):
        vm.set_instrument(clock)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    samples: list[list[dict[str, float]]] = [[] for _ in vms]
    configure(1, threads)
    if count() != threads:
        configure(1, before)
        raise PasscError(
            f"TVM's thread pool in this process runs at most {count()} threads, not {threads}: "
            f"set TVM_NUM_THREADS={threads} before TVM first runs a parallel kernel"
        )
    try:
        for vm in vms:
            vm["main"](*tensors)  # warm-up: first-call allocations
        for round_ in range(rounds):
            order = list(range(len(vms)))
            for i in order if round_ % 2 == 0 else order[::-1]:
                time.sleep(pause_s)
                clocks[i].seconds = {}
                vms[i]["main"](*tensors)
                samples[i].append(clocks[i].seconds)
    finally:
        configure(1, before)
    return samples


class _KernelClock:
    """A VM instrument hook: seconds per called function, summed since `seconds` was reset."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = 0.0

    def __call__(self, _func: Any, symbol: str, before_run: bool, *_: Any) -> int:
        now = time.perf_counter()
        if before_run:
            self._start = now
        else:
            self.seconds[symbol] = self.seconds.get(symbol, 0.0) + now - self._start
        return 0  # VMInstrumentReturnKind.NO_OP: go on with the call
