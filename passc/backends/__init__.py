"""Backends: one module per target kind, chosen by the target's `device` (its TVM kind for a bare
TVM target dict).

A backend is the shape of TVM's `relax/backend/<kind>/pipeline.py` plus what IREE's target
backends add: its Relax phases (legalize, then schedule and lower), building the executable,
writing its files into the artifact, and running an artifact (in-process, bundled, emulated).
Adding a target kind adds a module and a line to `_BACKENDS`; the core has no branches on it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from passc.errors import PasscError

if TYPE_CHECKING:
    from passc.artifact import Artifact
    from passc.targets import Target

__all__ = ["Backend", "Built", "Runner", "backend_for"]

# Target.device -> the module that implements its backend (its `BACKEND`).
_BACKENDS = {"cpu": "passc.backends.cpu"}
# A bare TVM target dict's kind -> the device whose backend compiles it.
_DEVICE_OF_TVM_KIND = {"llvm": "cpu"}


@dataclass
class Built:
    """What `Backend.build` returns: the executable and its kernel counts."""

    executable: Any
    kernels: int  # TIR functions (fused kernels) in the compiled module
    tuned_kernels: int  # of those, how many took their schedule from tuning records
    kernel_flops: dict[str, int] = field(default_factory=dict)  # per kernel, before scheduling
    tuned: tuple[str, ...] = ()  # the kernels that took their schedule from tuning records
    declined: tuple[str, ...] = ()  # a line per schedule a rule declined (its recomputation guard)


class Runner(Protocol):
    """Runs one artifact's entry points."""

    def __call__(self, function: str, arrays: list[np.ndarray], *, emulate: bool) -> list[np.ndarray]:
        """The outputs of `function` on `arrays` (its inputs in order; the runner adds the params)."""
        ...


class Backend(Protocol):
    """One target kind's compilation and running."""

    name: str

    def tvm_target(self, target: Target | dict[str, Any]) -> dict[str, Any]:
        """The TVM target dict to compile for."""
        ...

    def legalize(self, mod: Any, tvm_target: Any) -> Any:
        """Library dispatch and legalization: the fused, legalized PrimFuncs (tuning's tasks)."""
        ...

    def schedule(
        self, mod: Any, tvm_target: Any, records: list[Path]
    ) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
        """The legalized module's kernels scheduled (tuning records first), before lowering;
        returns it, the kernels that took a record and a line per schedule a rule declined."""
        ...

    def build(self, mod: Any, tvm_target: Any, records: list[Path]) -> Built:
        """Legalize, schedule (tuning records first), lower and compile the Relax module."""
        ...

    def write(self, executable: Any, out_dir: Path, target: Target) -> list[str]:
        """Writes the compiled module into the artifact directory; returns the file names."""
        ...

    def bundle(self, out_dir: Path, target: Target) -> list[str]:
        """Writes what the device needs to run the artifact without Python; returns the names."""
        ...

    def runner(self, artifact: Artifact) -> Runner:
        """A runner for an artifact this backend wrote."""
        ...


def backend_for(target: Target | dict[str, Any]) -> Backend:
    """The backend of a `Target` (by its device) or of a TVM target dict (by its kind)."""
    if isinstance(target, dict):
        kind = str(target.get("kind"))
        device = _DEVICE_OF_TVM_KIND.get(kind)
        if device is None:
            raise PasscError(f"no passc backend compiles TVM target kind {kind!r}")
    else:
        device = target.device
    module = _BACKENDS.get(device)
    if module is None:
        known = ", ".join(sorted(_BACKENDS))
        raise PasscError(f"no passc backend for device {device!r} (backends: {known})")
    return importlib.import_module(module).BACKEND
