"""What the schedules and legalizations need to know about a CPU: lanes, registers, L1 data cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax
from tvm.target import Target

from passc.schedules.analysis import REFUSALS

__all__ = ["CPUSpec", "cpu_spec", "float_spec", "for_bits"]

_AVX512 = ("avx512", "skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake", "sapphirerapids")
_AVX512 += ("graniterapids", "znver4", "znver5", "x86-64-v4")
_AVX2 = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "znver1", "znver2", "znver3")
_AVX2 += ("x86-64-v3", "avx2", "avx")


@dataclass(frozen=True)
class CPUSpec:
    """What the rules need to know about a CPU: lanes per vector (float32 lanes in `cpu_spec`; the
    rules scale them to each kernel's element size), vector registers and the L1 data cache."""

    lanes: int
    registers: int
    l1_bytes: int = 32 * 1024  # L1 data cache (32 KB: Cortex-A72, most x86; 48 KB here, 64 KB A76)


def cpu_spec(target: Target) -> CPUSpec:
    """The vector shape LLVM will generate code for, from the target's triple, mcpu and mattr.

    LLVM itself says which features the (triple, mcpu, mattr) has; if it cannot (a triple this
    LLVM was built without), the mcpu and mattr names decide. A target without an mcpu compiles for
    the architecture's baseline (SSE2 on x86-64: 4 lanes, 16 registers); NEON has 4 lanes and 32
    registers; AVX2 8 and 16; AVX-512 16 and 32.
    """
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "")).lower()
    mattr = " ".join(str(a).lower() for a in attrs.get("mattr", []))
    triple = str(attrs.get("mtriple", "")).lower()
    if triple.startswith(("aarch64", "arm")) or "+neon" in mattr or mcpu.startswith(("cortex", "neoverse")):
        return CPUSpec(lanes=4, registers=32)
    try:
        from tvm.target.codegen import llvm_cpu_has_features

        if llvm_cpu_has_features("avx512f", target):
            return CPUSpec(lanes=16, registers=32)
        if llvm_cpu_has_features("avx2", target):
            return CPUSpec(lanes=8, registers=16)
        if llvm_cpu_has_features("sse2", target):
            return CPUSpec(lanes=4, registers=16)
    except REFUSALS:
        pass
    features = f"{mcpu} {mattr}"
    if any(name in features for name in _AVX512):
        return CPUSpec(lanes=16, registers=32)
    if any(name in features for name in _AVX2):
        return CPUSpec(lanes=8, registers=16)
    return CPUSpec(lanes=4, registers=16)


def for_bits(spec: CPUSpec, bits: int) -> CPUSpec:
    """The spec for kernels whose output elements have `bits` bits: a vector holds 32/bits times
    as many of them as of float32 (8 fp16 lanes on NEON, so `fmla v.8h`; 2 float64 on SSE)."""
    lanes = max(1, spec.lanes * 32 // max(8, bits))  # bool: 1 bit
    return CPUSpec(lanes=lanes, registers=spec.registers, l1_bytes=spec.l1_bytes)


def float_spec(target: Target, out_dtype: Any, *operands: relax.Expr) -> CPUSpec | None:
    """The target's vector shape for `operands` of one float type with that output type ("" or
    None: the input type) and static shapes, scaled to the type's width; None for other operands or
    a target that is not an LLVM CPU."""
    dtype = str(operands[0].ty.dtype)
    if dtype not in ("float16", "float32", "float64") or str(out_dtype) not in ("", "None", dtype):
        return None
    if any(str(x.ty.dtype) != dtype for x in operands) or target.kind.name != "llvm":
        return None
    if any(not isinstance(d, tvm.tirx.IntImm) for x in operands for d in x.ty.shape):
        return None
    return for_bits(cpu_spec(target), int(dtype[len("float") :]))
