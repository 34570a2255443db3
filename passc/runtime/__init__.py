"""Running and timing compiled models on this machine through TVM's runtime.

`HostModule` calls a model.so's functions with numpy arrays (the CPU backend's in-process runner);
`measure_latency` times a whole model here or on a board over TVM RPC; `kernel_times` times each
kernel inside whole runs (tuning's in-model check). Part of the TVM layer.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from passc.errors import PasscError

__all__ = [
    "ALIGNMENT",
    "HostModule",
    "aligned_empty",
    "kernel_times",
    "library_kernel_times",
    "measure_latency",
]


class HostModule:
    """A model.so for this machine, loaded through TVM's runtime; call its functions with numpy.

    `params` maps a function to the runtime parameters it takes after its inputs; they are copied
    into TVM tensors once, here, not on every call. An input that is 64-byte aligned (what TVM's
    kernels assume) and writable (DLPack has no read-only flag; the kernels only read it) is
    passed without a copy; any other is copied into a buffer kept for that input, allocated on
    the first call (a new TVM tensor per call costs an allocation and fresh pages). Outputs are
    copied into new numpy arrays. Calls are serialised: the buffers and TVM's VM are shared.
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

    from passc.backends.cpu import export_library
    from passc.lowering import lower

    lowered = lower(model, tvm_target)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s.shape).astype(s.dtype) for s in lowered.inputs]
    arrays += [array for _, array in lowered.params]
    with tempfile.TemporaryDirectory(prefix="passc-latency-") as tmp:
        path = Path(tmp) / "model.so"
        export_library(lowered.executable, path, cxx)
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
    executables: list[Any],
    arrays: list[np.ndarray],
    *,
    threads: int,
    rounds: int,
    pause_s: float = 0.05,
    warm_s: float = 0.02,
    function: str = "main",
) -> list[list[dict[str, float]]]:
    """Each kernel's seconds inside whole runs of compiled models, on this machine.

    `executables` (`Lowered.executable`s of one model) take turns calling `function` on the same
    `arrays` (inputs, then runtime parameters), `rounds` times, the order alternating so that
    neither always runs first; each timed run waits `pause_s` so that the previous one's spinning
    threads have stopped, then runs untimed for `warm_s` seconds (at least once): the runs just
    after a pause pay for the machine waking up, which is not the kernels' time (on a 2-vCPU VM
    here, a 0.64 ms 1×1 conv took 1.5 ms right after a 50 ms sleep, 1.05 ms after 1 ms of runs
    and 0.64 ms after 5 ms). The VM's instrument hook reads the clock before and after every call,
    so a kernel is timed where the model runs it: after the kernel before it, with the caches that
    one left.
    Returns, per executable, one dict per round: kernel symbol -> seconds, summed over its calls in
    the run. TVM's thread pool runs `threads` threads meanwhile and is set back afterwards.

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
    tensors = [tvm.runtime.tensor(np.asarray(a, order="C")) for a in arrays]
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
            vm[function](*tensors)  # warm-up: first-call allocations
        for round_ in range(rounds):
            order = list(range(len(vms)))
            for i in order if round_ % 2 == 0 else order[::-1]:
                time.sleep(pause_s)
                start = time.perf_counter()
                vms[i][function](*tensors)
                while time.perf_counter() - start < warm_s:
                    vms[i][function](*tensors)
                clocks[i].seconds = {}
                vms[i][function](*tensors)
                samples[i].append(clocks[i].seconds)
                clocks[i].seconds = {}  # the next round's untimed runs count into a fresh dict
    finally:
        configure(1, before)
    return samples


def library_kernel_times(
    libraries: list[Path | Any],
    arrays: list[np.ndarray],
    *,
    threads: int,
    rounds: int,
    function: str = "main",
) -> list[list[dict[str, float]]]:
    """`kernel_times` of compiled libraries on disk (an artifact's model.so) or executables."""
    import tvm

    executables = [tvm.runtime.load_module(str(x)) if isinstance(x, Path) else x for x in libraries]
    return kernel_times(executables, arrays, threads=threads, rounds=rounds, function=function)


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
