"""The CPU backend (TVM kind `llvm`): x86-64 hosts and aarch64 boards.

Phases, as TVM's `relax/backend/cpu_generic/pipeline.py`: library dispatch; legalize (passc's
legalizations, `passc.schedules`); schedule (each kernel's tuning record, else passc's default
schedule); data-flow lowering; finalize. The executable is one `model.so`, linked with the
target's C++ toolchain. An artifact runs in-process through TVM's runtime on a host of its ISA, or
through the bundled `passc-run` (under the target's emulator when the ISA differs).
`PASSC_SCHEDULES=0` keeps TVM's own legalizations and naive loops, for comparison.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from passc.backends import Built
from passc.errors import PasscError, UsageError

if TYPE_CHECKING:
    from passc.artifact import Artifact
    from passc.targets import Target

__all__ = ["BACKEND", "CPUBackend", "LIBRARY", "SCHEDULES_ENV", "missing_functions"]

LIBRARY = "model.so"
RUNNER = "passc-run"
SCHEDULES_ENV = "PASSC_SCHEDULES"


def schedules_enabled() -> bool:
    """PASSC_SCHEDULES=0 leaves TVM's legalizations and naive loops (no default schedules, no
    tuning records); PASSC_SCHEDULES=plain keeps passc's legalizations but leaves their kernels'
    loops unscheduled (each kernel's plain loop nest, to compare its schedule against)."""
    return os.environ.get(SCHEDULES_ENV, "1") != "0"


def _plain_loops() -> bool:
    return os.environ.get(SCHEDULES_ENV) == "plain"


def library_dispatch_passes(target: Any) -> list[Any]:
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    return cpu_generic.library_dispatch_passes(target)


def legalize_passes(target: Any) -> list[Any]:
    """passc's legalizations (packed convs and matmuls, vector exp and erf, int8 tiles) for its
    schedules; TVM's own with the schedules off."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    if not schedules_enabled():
        return cpu_generic.legalize_passes(target)
    from passc.schedules import legalize_passes as passc_legalize_passes

    return passc_legalize_passes()


def schedule(mod: Any, target: Any, records: list[Path]) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """Schedules every kernel; returns the module, the kernels that took a schedule from the
    tuning records in `records`, and a line per schedule a rule declined (`Rule.checked`). A
    kernel with a matching record gets its best schedule (`MetaScheduleApplyDatabase`), every
    other kernel passc's default schedule."""
    import tvm
    from tvm import relax

    if not schedules_enabled() or _plain_loops():
        return mod, (), ()
    from passc.metaschedule import open_records
    from passc.schedules import collecting_declines, schedule_passes

    tuned: tuple[str, ...] = ()
    database = open_records(records)
    if database is not None:
        with database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        tuned = tuple(sorted(gv.name_hint for gv, f in mod.functions.items() if _is_scheduled(f)))
    with collecting_declines() as declines:
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    return mod, tuned, tuple(declines)


def kernel_flops(mod: Any) -> dict[str, int]:
    """Each kernel's arithmetic operations by TVM's `estimate_tir_flops` (a multiply-add counts
    two); a kernel it cannot count (data-dependent loops) is left out."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    flops = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                flops[gv.name_hint] = int(estimate_tir_flops(tvm.IRModule({gv.name_hint: func})))
            except tvm.TVMError:
                continue
    return flops


def dataflow_lower_passes(target: Any) -> list[Any]:
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    return cpu_generic.dataflow_lower_passes(target)


def finalize_passes(target: Any) -> list[Any]:
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    return cpu_generic.finalize_passes(target)


def _is_scheduled(func: Any) -> bool:
    import tvm

    return isinstance(func, tvm.tirx.PrimFunc) and bool(func.attrs and func.attrs.get("tirx.is_scheduled"))


def export_library(executable: Any, path: Path, cxx: str) -> None:
    """Writes the executable as a shared library, linked by `cxx` (a cross compiler or g++)."""
    from tvm.support import cc

    try:
        executable.export_library(str(path), fcompile=cc.cross_compiler(cxx))
    except Exception as err:
        raise PasscError(f"linking {path.name} with {cxx} failed: {err}") from None


def _strings(path: Path) -> set[bytes]:
    """The printable runs of 6 or more characters in a binary (as `strings` finds them)."""
    return set(re.findall(rb"[\x20-\x7e]{6,}", path.read_bytes()))


def missing_functions(library: Path, runtime: list[Path]) -> list[str]:
    """The packed functions `library` calls by name that none of the `runtime` libraries provides.

    A compiled module calls TVM's global functions (the VM's builtins, a kernel's extern calls such
    as `tvm.contrib.sort.argsort`) by their registered names, which it holds as strings; the ones
    this compiler's TVM registers are looked for among the runtime libraries' strings."""
    import tvm  # noqa: F401  (registers TVM's global functions, so that the registry lists them)
    import tvm_ffi

    registered = {name.encode() for name in tvm_ffi.registry.list_global_func_names()}
    called = _strings(library) & registered
    provided = set().union(*(_strings(path) for path in runtime)) if runtime else set()
    return sorted(name.decode() for name in called - provided)


class CPUBackend:
    """The `Backend` for `device = "cpu"` targets."""

    name = "cpu"

    def tvm_target(self, target: Target | dict[str, Any]) -> dict[str, Any]:
        tvm_target = target if isinstance(target, dict) else target.tvm
        if tvm_target.get("kind") != "llvm":
            raise PasscError(f"the CPU backend compiles TVM kind 'llvm', not {tvm_target.get('kind')!r}")
        return tvm_target

    def legalize(self, mod: Any, tvm_target: Any) -> Any:
        import tvm

        with tvm_target:
            phases = library_dispatch_passes(tvm_target) + legalize_passes(tvm_target)
            return tvm.transform.Sequential(phases)(mod)

    def schedule(
        self, mod: Any, tvm_target: Any, records: list[Path]
    ) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
        """The legalized module scheduled, before data-flow lowering (what `build` compiles)."""
        with tvm_target:
            return schedule(mod, tvm_target, records)

    def build(self, mod: Any, tvm_target: Any, records: list[Path]) -> Built:
        import tvm

        legalized = self.legalize(mod, tvm_target)
        flops = kernel_flops(legalized)
        mod, tuned, declined = self.schedule(legalized, tvm_target, records)
        with tvm_target:
            phases = dataflow_lower_passes(tvm_target) + finalize_passes(tvm_target)
            mod = tvm.transform.Sequential(phases)(mod)
        kernels = sum(1 for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
        executable = tvm.compile(mod, target=tvm_target, relax_pipeline=None)
        return Built(executable, kernels, len(tuned), flops, tuned, declined)

    def write(self, executable: Any, out_dir: Path, target: Target) -> list[str]:
        export_library(executable, out_dir / LIBRARY, target.require_cxx())
        return [LIBRARY]

    def bundle(self, out_dir: Path, target: Target) -> list[str]:
        """Copies passc-run and the target's TVM runtime libraries beside model.so; PasscError
        when model.so calls a packed function those libraries lack (it would fail on the device)."""
        import shutil

        from passc.bundle import bundle_files

        files = bundle_files(target)
        missing = missing_functions(out_dir / LIBRARY, [p for n, p in files.items() if n.endswith(".so")])
        if missing:
            raise PasscError(
                f"the model calls {', '.join(missing)}, which the TVM runtime bundled for "
                f"{target.name} does not provide (only the full TVM on a host has it): the bundle "
                "could not run it; compile without --bundle to run it in-process on the host"
            )
        for name, source in files.items():
            shutil.copyfile(source, out_dir / name)
            shutil.copymode(source, out_dir / name)
        return list(files)

    def runner(self, artifact: Artifact) -> CPURunner:
        return CPURunner(artifact)


class CPURunner:
    """Runs a CPU artifact: in-process through TVM's runtime when this machine has the target's
    ISA, or through the bundled `passc-run` (`emulate`), under the target's emulator if needed."""

    def __init__(self, artifact: Artifact) -> None:
        self._artifact = artifact
        self._host_module: Any = None

    def __call__(self, function: str, arrays: list[np.ndarray], *, emulate: bool) -> list[np.ndarray]:
        artifact = self._artifact
        if emulate:
            return self._run_bundled(function, arrays)
        if not artifact.target.runs_on_host:
            raise UsageError(
                f"{artifact.path} is built for {artifact.target.arch}; run it under emulation with "
                "--emulate (emulate=True) or on the device with passc-run"
            )
        if self._host_module is None:
            from passc.runtime import HostModule

            # TVM reads TVM_NUM_THREADS once, when the process first runs a parallel kernel.
            os.environ.setdefault("TVM_NUM_THREADS", str(artifact.threads))
            params = {name: artifact.params_of(name) for name in artifact.functions}
            self._host_module = HostModule(artifact.path / LIBRARY, params)
        return self._host_module(function, *arrays)

    def _run_bundled(self, function: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
        artifact = self._artifact
        if not artifact.bundled:
            raise UsageError(f"{artifact.path} has no bundled runner; compile it with --bundle")
        outputs = artifact.functions[function].outputs
        command = [] if artifact.target.runs_on_host else artifact.target.require_emulator()
        with tempfile.TemporaryDirectory(prefix="passc-run-") as tmp:
            in_files = [Path(tmp) / f"in{i}.bin" for i in range(len(arrays))]
            out_files = [Path(tmp) / f"out{i}.bin" for i in range(len(outputs))]
            for array, path in zip(arrays, in_files, strict=True):
                array.tofile(path)
            command += [str(artifact.path.resolve() / RUNNER), str(artifact.path.resolve() / LIBRARY)]
            command += ["--function", function, *(str(p) for p in in_files + out_files)]
            done = subprocess.run(command, capture_output=True, text=True, env=artifact.thread_env())
            if done.returncode < 0:
                detail = f": {done.stderr.strip()}" if done.stderr.strip() else ""
                raise PasscError(f"passc-run was killed by {signal.Signals(-done.returncode).name}{detail}")
            if done.returncode != 0:
                raise PasscError(f"passc-run failed: {done.stderr.strip() or done.returncode}")
            return [
                np.fromfile(path, dtype=spec.dtype).reshape(spec.shape)
                for path, spec in zip(out_files, outputs, strict=True)
            ]


BACKEND = CPUBackend()
