"""Where an artifact's time goes: each kernel timed inside whole runs on this machine (the VM's
instrument hook, `passc.runtime.kernel_times`), or, for an artifact this machine cannot run, each
kernel's arithmetic and what it would take at the target's peak (an estimate).

Achieved GFLOP/s = the kernel's FLOPs (`manifest.kernel_flops`, a multiply-add counting two) /
its time; the fraction of peak divides by the peak FP32 FLOP/s of the threads it ran on.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from passc.artifact import Artifact
from passc.errors import PasscError

__all__ = [
    "KernelRow",
    "Peak",
    "default_threads",
    "family",
    "host_peak",
    "measure",
    "target_peak",
    "unmeasured",
]

# Op families by what a fused kernel's name (TVM names it after its ops) says it is built around,
# the first that matches; a kernel of data-movement ops only is data movement, any other is
# elementwise (activations, adds, casts, quantize/dequantize).
_FAMILIES = [
    ("conv (depthwise)", r"depthwise"),
    ("conv", r"conv\d?d|(^|_)conv"),
    ("matmul", r"dense|matmul|contraction|einsum|gemm|attention"),
    ("pool", r"pool"),
    ("norm", r"norm"),
    ("softmax", r"softmax"),
    ("reduce", r"(^|_)(mean|sum|max|min|prod|argmax|argmin|variance|std)\d*(_|$)"),
]
_MOVEMENT = {
    "reshape", "transpose", "concatenate", "split", "strided", "slice", "take", "gather", "pad", "squeeze",
    "unsqueeze", "expand", "dims", "broadcast", "to", "layout", "transform", "copy", "tile", "repeat", "flip",
    "resize2d", "image",
}  # fmt: skip


def family(kernel: str) -> str:
    """The op family of a kernel, from its name; VM builtins are the runtime's."""
    if "." in kernel:
        return "runtime (VM)"
    name = kernel.removeprefix("fused_")
    for label, pattern in _FAMILIES:
        if re.search(pattern, name):
            return label
    tokens = {re.sub(r"\d+$", "", t) for t in name.split("_")}
    return "data movement" if tokens <= _MOVEMENT else "elementwise"


@dataclass(frozen=True)
class Peak:
    """Peak FP32 FLOP/s of one core, and where the number comes from."""

    gflops_per_core: float
    source: str


def host_peak() -> Peak | None:
    """This x86-64 machine's peak, approximately: FLOP/cycle of its widest FMA (two FMA units,
    as on every AVX2 core since Haswell and Zen 2) × its clock from /proc/cpuinfo."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()) if "flags" in info else set()
    mhz = _max_mhz() or next((float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)), 0.0)
    if not mhz:
        return None
    per_cycle, isa = (
        (64, "AVX-512")
        if "avx512f" in flags
        else (32, "AVX2+FMA")
        if {"avx2", "fma"} <= flags
        else (16, "AVX")
        if "avx" in flags
        else (8, "SSE")
    )
    return Peak(per_cycle * mhz / 1e3, f"approximate: {isa}, {per_cycle} FLOP/cycle × {mhz / 1e3:.2f} GHz")


def _max_mhz() -> float | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e3
    except (OSError, ValueError):
        return None


def target_peak(artifact: Artifact) -> Peak | None:
    """The peak the target file declares (`[performance] fp32_gflops_per_core`), else this
    machine's for a host target."""
    if artifact.target.peak_gflops_per_core:
        return Peak(artifact.target.peak_gflops_per_core, f"the target file: {artifact.target.description}")
    if artifact.target.name == "host":
        return host_peak()
    return None


@dataclass(frozen=True)
class KernelRow:
    """One kernel of one function: its median seconds per run (None where not measured)."""

    name: str
    family: str
    seconds: float | None
    flops: int | None
    tuned: bool


def _run_arrays(artifact: Artifact, function: str) -> list:
    """What a timed run of `function` is called with: random inputs, then its runtime parameters."""
    return [*artifact.random_inputs(function=function).values(), *artifact.params_of(function)]


def measure(artifact: Artifact, function: str, threads: int, rounds: int) -> list[KernelRow]:
    """Times each kernel of `function` inside `rounds` whole runs on random inputs here (after a
    warm-up run); PasscError when the artifact cannot run on this machine or TVM cannot run
    `threads` threads in this process."""
    from passc.runtime import library_kernel_times

    if not artifact.target.runs_on_host:
        raise PasscError(f"{artifact.target.name} artifacts do not run on this {platform.machine()} machine")
    artifact.check()
    arrays = _run_arrays(artifact, function)
    [samples] = library_kernel_times(
        [artifact.path / "model.so"], arrays, threads=threads, rounds=rounds, function=function
    )
    names = sorted({n for s in samples for n in s})
    info = artifact.info
    return [
        KernelRow(
            name,
            family(name),
            statistics.median(s.get(name, 0.0) for s in samples),
            info.kernel_flops.get(name),
            name in info.tuned,
        )
        for name in names
    ]


def unmeasured(artifact: Artifact) -> list[KernelRow]:
    """Every kernel the manifest counts, without times."""
    info = artifact.info
    return [KernelRow(n, family(n), None, f, n in info.tuned) for n, f in sorted(info.kernel_flops.items())]


def default_threads(artifact: Artifact) -> int:
    """The artifact's thread count, at most this machine's CPUs."""
    return max(1, min(artifact.threads, os.cpu_count() or 1))


def tuning_gains(artifact: Artifact, function: str, threads: int, rounds: int) -> dict[str, float]:
    """Each tuned kernel's gain in the model: its time with passc's default schedule over its time
    in the artifact (from the tuning records), the median over `rounds` runs of both builds in
    turn. The default build lowers the artifact's own optimised models (and reruns its Relax
    passes) without records. PasscError when it cannot be built or run here."""
    from passc.artifact import optimized_model_name
    from passc.lowering import lower
    from passc.pipeline import PassSpec
    from passc.runtime import library_kernel_times

    info = artifact.info
    models = {
        name: ir.load(artifact.path / optimized_model_name(name))
        for name, entry in info.functions.items()
        if entry.source_sha256 is not None
    }
    try:
        specs = [PassSpec(r["pass"], r["options"]) for r in info.relax_passes]
        default = lower(models, info.target.tvm, [], specs)
    except PasscError as err:
        raise PasscError(f"the default-schedule build failed: {err}") from None
    arrays = _run_arrays(artifact, function)
    before, after = library_kernel_times(
        [default.executable, artifact.path / "model.so"],
        arrays,
        threads=threads,
        rounds=rounds,
        function=function,
    )
    gains = {}
    for name in info.tuned:
        ratios = [
            b[name] / a[name] for b, a in zip(before, after, strict=True) if b.get(name) and a.get(name)
        ]
        if ratios:
            gains[name] = statistics.median(ratios)
    return gains
