"""Convolutions as linear maps, and the exact algebra that folds two of them into one.

A `ConvMap` is one dense (group = 1) convolution with zero padding:

    y[o, i] = b[o] + Σ_c Σ_t W[o, c, t] · x[c, i·s + t·d − p_begin]      (x = 0 outside its extent)

where i and t are spatial index vectors, s the strides, d the dilations. Everything here is
exact in real arithmetic; the only difference from the unfolded graph is float rounding, because
products and sums are evaluated in another order (weights are combined in float64, then cast).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

__all__ = ["ConvMap"]


@dataclasses.dataclass(frozen=True)
class ConvMap:
    """A dense convolution: weight [O, C, *k], bias [O], strides, dilations, pads (begins + ends)."""

    weight: np.ndarray
    bias: np.ndarray
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.weight.ndim - 2

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def pads_begin(self) -> tuple[int, ...]:
        return self.pads[: self.rank]

    @property
    def pads_end(self) -> tuple[int, ...]:
        return self.pads[self.rank :]

    @property
    def macs_per_output(self) -> int:
        """Multiply-accumulates per output position."""
        return math.prod(self.weight.shape)

    @property
    def is_pointwise(self) -> bool:
        """A 1×…×1 kernel, stride 1, no padding: a per-position channel mix."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) and not any(self.pads)

    def _shrink(self) -> tuple[int, ...]:
        """How many positions the map removes per spatial dim at stride 1 (negative grows)."""
        return tuple(
            d * (k - 1) - b - e
            for d, k, b, e in zip(self.dilations, self.kernel, self.pads_begin, self.pads_end, strict=True)
        )

    @classmethod
    def identity(cls, channels: int, rank: int, dtype: np.dtype) -> ConvMap:
        """y = x, as a 1×…×1 convolution."""
        weight = np.eye(channels, dtype=dtype).reshape(channels, channels, *([1] * rank))
        return cls(weight, np.zeros(channels, dtype), (1,) * rank, (1,) * rank, (0,) * (2 * rank))

    @classmethod
    def channel_affine(cls, scale: np.ndarray, shift: np.ndarray, rank: int) -> ConvMap:
        """y[c] = scale[c]·x[c] + shift[c] (an inference BatchNormalization), as a 1×…×1 convolution."""
        weight = np.diag(scale).reshape(len(scale), len(scale), *([1] * rank))
        return cls(weight, shift, (1,) * rank, (1,) * rank, (0,) * (2 * rank))

    def then(self, after: ConvMap) -> ConvMap | str:
        """The single convolution equal to `after(self(x))`, or the reason no exact one exists.

        When B = `after` is pointwise, W = W_B·W_A and b = W_B·b_A + b_B keep A's geometry; when
        A = `self` is pointwise, the same products keep B's. Otherwise B must have no padding:

            W[o, c, τ] = Σ_p Σ_{tB·dB·sA + tA·dA = τ} W_B[o, p, tB] · W_A[p, c, tA]
            b[o]       = Σ_p Σ_tB W_B[o, p, tB] · b_A[p] + b_B[o]

        with stride sA·sB, dilation 1 and A's padding (or B's geometry when A is pointwise).
        B's zero padding of A's output is why other cases are not exact: the folded kernel would
        read A's bias (and A applied to the input's padding) where the original read zeros.
        """
        if self.weight.shape[0] != after.weight.shape[1]:
            return "channel counts do not chain"
        bias = after.weight.sum(axis=tuple(range(2, after.weight.ndim))) @ self.bias + after.bias
        if after.is_pointwise:
            mix = after.weight.reshape(after.weight.shape[:2])
            return dataclasses.replace(self, weight=np.einsum("op,pc...->oc...", mix, self.weight), bias=bias)
        if self.is_pointwise and (not any(after.pads) or not self.bias.any()):
            mix = self.weight.reshape(self.weight.shape[:2])
            weight = np.einsum("op...,pc->oc...", after.weight, mix)
            return dataclasses.replace(after, weight=weight, bias=bias)
        if any(after.pads):
            return "the second conv pads its input, which the folded conv cannot reproduce"
        steps = tuple(db * sa for db, sa in zip(after.dilations, self.strides, strict=True))
        kernel = tuple(
            (kb - 1) * step + (ka - 1) * da + 1
            for kb, step, ka, da in zip(after.kernel, steps, self.kernel, self.dilations, strict=True)
        )
        weight = np.zeros((after.weight.shape[0], self.weight.shape[1], *kernel), self.weight.dtype)
        for tb in itertools.product(*map(range, after.kernel)):
            for ta in itertools.product(*map(range, self.kernel)):
                tau = tuple(b * st + a * d for b, st, a, d in zip(tb, steps, ta, self.dilations, strict=True))
                weight[(..., *tau)] += after.weight[(..., *tb)] @ self.weight[(..., *ta)]
        strides = tuple(a * b for a, b in zip(self.strides, after.strides, strict=True))
        return ConvMap(weight, bias, strides, (1,) * self.rank, self.pads)

    def plus(self, other: ConvMap) -> ConvMap | str:
        """The single convolution equal to `self(x) + other(x)`, or the reason no exact one exists.

        Both must have the same strides and output extent. Tap t of a kernel reads the input at
        offset t·d − p_begin; the sum puts both kernels on the union of their offsets (one
        dilation d per spatial dim), adds their weights tap by tap, and adds the biases.
        """
        if self.weight.shape[:2] != other.weight.shape[:2]:
            return "the branches have different channel counts"
        if self.strides != other.strides:
            return "the branches have different strides"
        if self._shrink() != other._shrink():
            return "the branches produce different output sizes"
        maps = (self, other)
        dilations, begin, end, kernel = [], [], [], []
        for dim in range(self.rank):
            used = {m.dilations[dim] for m in maps if m.kernel[dim] > 1}
            if len(used) > 1:
                return "the branches have different dilations"
            d = used.pop() if used else 1
            lows = [-m.pads_begin[dim] for m in maps]
            highs = [low + (m.kernel[dim] - 1) * m.dilations[dim] for low, m in zip(lows, maps, strict=True)]
            if any((low - lows[0]) % d for low in lows):
                return "the branches' taps do not fall on one dilated grid"
            dilations.append(d)
            begin.append(-min(lows))
            kernel.append((max(highs) - min(lows)) // d + 1)
            end.append(d * (kernel[-1] - 1) - begin[-1] - self._shrink()[dim])  # keeps the output size
        weight = np.zeros((*self.weight.shape[:2], *kernel), np.result_type(self.weight, other.weight))
        for m in maps:
            for t in itertools.product(*map(range, m.kernel)):
                tap = tuple(
                    (ti * m.dilations[dim] - m.pads_begin[dim] + begin[dim]) // dilations[dim]
                    for dim, ti in enumerate(t)
                )
                weight[(..., *tap)] += m.weight[(..., *t)]
        return ConvMap(weight, self.bias + other.bias, self.strides, tuple(dilations), tuple(begin + end))
