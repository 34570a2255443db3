"""Weight quantization (per channel or per group, symmetric or asymmetric) and bit packing, in numpy.

Layout. A layer's output channels lie on the weight's first axis (Conv [O, C/g, *k], Gemm with
transB=1 [N, K]) or on its last (MatMul and Gemm with transB=0, [K, N]); the layer reduces over
the other axes, L elements per channel. A quantization group is G consecutive reduced elements of
one channel; per-channel means G = L (also when G ≥ L). Without moving any element the weight is
viewed as

    channels first:  [O, L/G, G]     scale and zero point of shape [O, L/G, 1]
    channels last:   [L/G, G, N]     scale and zero point of shape [L/G, 1, N]

so that dequantization is one broadcast Sub and Mul. Math, b bits, in float32 as the decode graph
computes it:

    symmetric:   s = max|w| / (2^(b−1) − 1),   u = clip(round(w/s), ±(2^(b−1) − 1)) + 2^(b−1),   z = 2^(b−1)
    asymmetric:  s = (max(w, 0) − min(w, 0)) / (2^b − 1),   z = clip(round(−min(w, 0)/s), 0, 2^b − 1),
                 u = clip(round(w/s) + z, 0, 2^b − 1)
    ŵ = (float(u) − float(z)) · s                 (a group of zeros gets s = 1)

Packing: the codes u in the weight's row-major order, 8/c codes per byte, code k of a byte in bits
[k·c, (k+1)·c) (the first code in the low bits), where the container c is 2, 4, 4, 8 bits for
b = 2, 3, 4, 8: 3-bit codes are padded into 4-bit nibbles. The last byte is padded with zero codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "INTEGER_WIDTHS",
    "Quantized",
    "Scheme",
    "container_bits",
    "fake_quantize",
    "pack",
    "packed_length",
    "quantize",
    "scale_shape",
    "unpack",
    "view_shape",
]

INTEGER_WIDTHS = (2, 3, 4, 8)


@dataclass(frozen=True)
class Scheme:
    """How every quantized weight is grouped: `group` elements per scale (None: per channel)."""

    group: int | None = None
    symmetric: bool = True


def container_bits(bits: int) -> int:
    """Bits one code occupies in a packed byte: 3-bit codes ride in 4-bit nibbles."""
    return {2: 2, 3: 4, 4: 4, 8: 8}[bits]


def packed_length(elements: int, bits: int) -> int:
    """Bytes holding `elements` codes of `bits` bits."""
    return math.ceil(elements / (8 // container_bits(bits)))


def view_shape(shape: tuple[int, ...], channels_last: bool, group: int | None) -> tuple[int, int, int]:
    """The 3-d view of a weight (see the module docstring); ValueError when G does not divide L."""
    channels = shape[-1] if channels_last else shape[0]
    reduced = math.prod(shape) // channels
    size = reduced if group is None or group >= reduced else group
    if reduced % size:
        raise ValueError(f"group size {group} does not divide the {reduced} elements reduced per channel")
    return (reduced // size, size, channels) if channels_last else (channels, reduced // size, size)


def scale_shape(view: tuple[int, int, int], channels_last: bool) -> tuple[int, int, int]:
    """The view with the within-group axis collapsed: the shape of scales and zero points."""
    return (view[0], 1, view[2]) if channels_last else (view[0], view[1], 1)


@dataclass(frozen=True)
class Quantized:
    """One weight's codes (uint8, in the 3-d view), float32 scales and uint8 zero points."""

    bits: int
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray  # the scale's shape (asymmetric) or a scalar 2^(b−1) (symmetric)
    symmetric: bool

    def dequantize(self) -> np.ndarray:
        """ŵ = (float(u) − float(z)) · s, in float32 and in the 3-d view."""
        return (self.codes.astype(np.float32) - self.zero_point.astype(np.float32)) * self.scale


def quantize(weight: np.ndarray, bits: int, channels_last: bool, scheme: Scheme) -> Quantized:
    """Quantizes a float weight to `bits`-bit codes, grouped as `scheme` says."""
    view = weight.astype(np.float64).reshape(view_shape(weight.shape, channels_last, scheme.group))
    axis = 1 if channels_last else 2
    if scheme.symmetric:
        limit = 2 ** (bits - 1) - 1
        scale = (np.abs(view).max(axis=axis, keepdims=True) / limit).astype(np.float32)
        scale[scale == 0] = 1
        zero = np.uint8(2 ** (bits - 1))
        codes = np.clip(np.rint(view / scale), -limit, limit) + int(zero)
    else:
        top = 2**bits - 1
        low = np.minimum(view.min(axis=axis, keepdims=True), 0)
        high = np.maximum(view.max(axis=axis, keepdims=True), 0)
        scale = ((high - low) / top).astype(np.float32)
        scale[scale == 0] = 1
        zero = np.clip(np.rint(-low / scale), 0, top).astype(np.uint8)
        codes = np.clip(np.rint(view / scale) + zero, 0, top)
    return Quantized(bits, codes.astype(np.uint8), scale, np.asarray(zero, np.uint8), scheme.symmetric)


def fake_quantize(weight: np.ndarray, width: int, channels_last: bool, scheme: Scheme) -> np.ndarray:
    """The float32 weight the realised layer computes with at `width` (16: float16, 32: unchanged)."""
    if width == 32:
        return weight
    if width == 16:
        return weight.astype(np.float16).astype(np.float32)
    return quantize(weight, width, channels_last, scheme).dequantize().reshape(weight.shape)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (row-major) → bytes, 8/c codes per byte, the first code in the low bits."""
    c = container_bits(bits)
    per_byte = 8 // c
    flat = codes.reshape(-1).astype(np.uint8)
    padded = np.zeros(packed_length(flat.size, bits) * per_byte, np.uint8)
    padded[: flat.size] = flat
    lanes = padded.reshape(-1, per_byte).astype(np.uint16) << (c * np.arange(per_byte, dtype=np.uint16))
    return lanes.sum(axis=1).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Bytes → the first `count` codes: code k of a byte is (byte << (8 − (k+1)·c)) >> (8 − c)."""
    c = container_bits(bits)
    per_byte = 8 // c
    left = (8 - c * np.arange(1, per_byte + 1)).astype(np.uint8)
    lanes = np.left_shift(packed.reshape(-1, 1), left) >> np.uint8(8 - c)
    return lanes.reshape(-1)[:count]
