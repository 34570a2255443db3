"""Targets are data: one TOML file per target in this package, read into `Target`.

A file gives the TVM target dict, the C++ toolchain that links and builds the runner, the wheel
platform that supplies the target's TVM runtime libraries, an emulator command (for targets the
host cannot run natively), the default thread count, a pass list where the target's differs from
passc's default (`passc.pipeline.DEFAULT_PASSES`) and, where known, the cores' peak FP32 FLOP/s
(`passc report` estimates kernel times from it).
"""

from __future__ import annotations

import platform
import shutil
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from passc.errors import PasscError, UsageError
from passc.pipeline import DEFAULT_PASSES

__all__ = ["Target", "get_target", "all_targets"]


@dataclass(frozen=True)
class Target:
    """One deployment target, as declared in its TOML file."""

    name: str
    description: str
    device: str  # "cpu", "gpu" or "npu"
    arch: str  # the ISA its binaries are built for, as `uname -m` prints it
    threads: int
    default_passes: tuple[str, ...]  # the file's `default_passes`, else DEFAULT_PASSES
    tvm: dict[str, Any]
    cxx: str
    cxx_apt_package: str
    wheel_platform: str
    emulator: tuple[str, ...] = ()
    emulator_apt_package: str = ""
    peak_gflops_per_core: float | None = None  # `[performance] fp32_gflops_per_core`, where known

    def require_cxx(self) -> str:
        """The C++ toolchain's command; a PasscError saying what to install if it is missing."""
        return _require(self.cxx, self.cxx_apt_package)

    def require_emulator(self) -> list[str]:
        """The emulator command line; a PasscError saying what to install if it is missing."""
        if not self.emulator:
            raise UsageError(f"target {self.name} has no emulator; run its artifacts on the device")
        _require(self.emulator[0], self.emulator_apt_package)
        return list(self.emulator)

    @property
    def runs_on_host(self) -> bool:
        """True when this machine can run the target's binaries without an emulator."""
        return self.arch == platform.machine()


def _require(command: str, apt_package: str) -> str:
    if shutil.which(command) is None:
        raise PasscError(f"{command} not found (install it: apt-get install {apt_package})")
    return command


def _parse(name: str, data: dict[str, Any]) -> Target:
    toolchain = data.get("toolchain", {})
    emulator = data.get("emulator", {})
    try:
        return Target(
            name=name,
            description=data["description"],
            device=data["device"],
            arch=data["arch"],
            threads=int(data["threads"]),
            default_passes=tuple(data.get("default_passes", DEFAULT_PASSES)),
            tvm=dict(data["tvm"]),
            cxx=toolchain["cxx"],
            cxx_apt_package=toolchain["apt_package"],
            wheel_platform=toolchain["wheel_platform"],
            emulator=tuple(emulator.get("command", ())),
            emulator_apt_package=emulator.get("apt_package", ""),
            peak_gflops_per_core=data.get("performance", {}).get("fp32_gflops_per_core"),
        )
    except KeyError as err:
        raise ValueError(f"target file {name}.toml lacks {err}") from None


def all_targets() -> dict[str, Target]:
    """Every target file in this package, by name."""
    targets = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            name = entry.name.removesuffix(".toml")
            targets[name] = _parse(name, tomllib.loads(entry.read_text()))
    return targets


def get_target(name: str) -> Target:
    """The target called `name`; an unknown name is a UsageError listing the known ones."""
    targets = all_targets()
    if name not in targets:
        raise UsageError(f"unknown target {name!r} (known targets: {', '.join(targets)})")
    return targets[name]
