"""TIR tensor intrinsics for the int8 tiles of `passc.schedules.int8_matmul`: one instruction each.

- `vnni_dot(lanes)`: C[l] += Σ_{q<4} A[q] · B[l, q] for l < lanes, A uint8 and B int8, summed in
  int32: one `vpdpbusd` (AVX-512 VNNI at 16 lanes, AVX-VNNI at 8). A's 4 bytes go to every lane.
- `SMMLA`: C[i, j] += Σ_{q<8} A[i, q] · B[j, q] for i, j < 2, A and B int8, summed in int32: one
  `smmla` (Armv8.6's i8mm), a 2×8 by 8×2 product into a 2×2 tile held row-major in one vector.

TVM ships a VNNI intrinsic (`tvm.s_tir.tensor_intrin.x86`), but it passes int32 vectors to
`llvm.x86.avx512.vpdpbusd.512`, which LLVM 22 declares over bytes, so LLVM rejects the module; TVM
has no `smmla` intrinsic. Importing this module registers both under the names below.
"""

from __future__ import annotations

from typing import Any

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["SMMLA", "vnni_dot"]

SMMLA = "passc_smmla_2x2x8"


def _vnni(lanes: int, llvm_name: str) -> tuple[Any, Any]:
    """The description and the implementation of `vnni_dot(lanes)`."""
    vector = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def description(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            for i, q in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vq = T.axis.remap("SR", [i, q])
                    c[vi] = c[vi] + T.cast(a[vq], "int32") * T.cast(b[vi, vq], "int32")

    @T.prim_func(s_tir=True)
    def implementation(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            word = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name),
                c.vload([0], dtype=vector),
                T.reinterpret(T.broadcast(word, lanes), dtype=f"uint8x{lanes * 4}"),
                b.vload([0, 0], dtype=f"int8x{lanes * 4}"),
                dtype=vector,
            )

    return description, implementation


@T.prim_func(s_tir=True)
def _smmla_description(
    a: T.Buffer((2, 8), "int8", offset_factor=1),
    b: T.Buffer((2, 8), "int8", offset_factor=1),
    c: T.Buffer((2, 2), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:2, 0:2], a[0:2, 0:8], b[0:2, 0:8])
        T.writes(c[0:2, 0:2])
        for i, j, q in T.grid(2, 2, 8):
            with T.sblock("update"):
                vi, vj, vq = T.axis.remap("SSR", [i, j, q])
                c[vi, vj] = c[vi, vj] + T.cast(a[vi, vq], "int32") * T.cast(b[vj, vq], "int32")


@T.prim_func(s_tir=True)
def _smmla_implementation(
    a: T.Buffer((2, 8), "int8", offset_factor=1),
    b: T.Buffer((2, 8), "int8", offset_factor=1),
    c: T.Buffer((2, 2), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:2, 0:2], a[0:2, 0:8], b[0:2, 0:8])
        T.writes(c[0:2, 0:2])
        c[0, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla"),
            c.vload([0, 0], dtype="int32x4"),
            a.vload([0, 0], dtype="int8x16"),
            b.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


_VNNI = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}


def vnni_dot(lanes: int) -> str:
    """The name of the `vpdpbusd` intrinsic over `lanes` int32 lanes (16 or 8)."""
    return f"passc_vnni_{lanes}x4"


for _lanes, _llvm_name in _VNNI.items():
    TensorIntrin.register(vnni_dot(_lanes), *_vnni(_lanes, _llvm_name))
TensorIntrin.register(SMMLA, _smmla_description, _smmla_implementation)
