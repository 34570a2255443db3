"""Convolutions as linear maps, and the exact algebra that folds two of them into one.

A `ConvMap` is one convolution with zero padding and `groups` groups. Its weight has ONNX's layout
[O, C/g, *k]; group j maps input channels [j·C/g, (j+1)·C/g) to output channels [j·O/g, (j+1)·O/g):

    y[o, i] = b[o] + Σ_{c in group(o)} Σ_t W[o, c mod C/g, t] · x[c, i·s + t·d − p_begin]

where i and t are spatial index vectors, s the strides, d the dilations, and x = 0 outside its
extent. A grouped conv is the dense conv whose weight is block-diagonal over the groups, so every
fold is the dense fold applied group by group: two maps are first brought to a common grouping,
the largest g that divides both group counts (`regroup`, which fills the off-diagonal blocks with
zeros), and the result keeps it. A per-channel affine map (BatchNorm, a Mul or Add by a
per-channel constant, the identity) is the depthwise 1×…×1 conv with g = C.

Everything here is exact in real arithmetic; the only difference from the unfolded graph is float
rounding, because products and sums are evaluated in another order (weights are combined in
float64, then cast).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

__all__ = ["ConvMap", "mac_increase"]


def mac_increase(before: int, after: int, parts: list[ConvMap], groups: int) -> str:
    """Why a fold of `parts` into one conv with `groups` groups is refused: it costs more."""
    kept = sorted({p.groups for p in parts if not p.is_channel_affine})
    why = f" (groups {' and '.join(map(str, kept))} fold to {groups})" if len(kept) > 1 else ""
    return f"folding would raise MACs per output from {before} to {after}{why}"


@dataclasses.dataclass(frozen=True)
class ConvMap:
    """A convolution: weight [O, C/groups, *k], bias [O], strides, dilations, pads (begins + ends)."""

    weight: np.ndarray
    bias: np.ndarray
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    groups: int = 1

    @property
    def rank(self) -> int:
        return self.weight.ndim - 2

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def pads_begin(self) -> tuple[int, ...]:
        return self.pads[: self.rank]

    @property
    def pads_end(self) -> tuple[int, ...]:
        return self.pads[self.rank :]

    @property
    def macs_per_output(self) -> int:
        """Multiply-accumulates per output position: O · C/g · ∏k."""
        return math.prod(self.weight.shape)

    @property
    def is_pointwise(self) -> bool:
        """A 1×…×1 kernel, stride 1, no padding: a per-position channel mix."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) and not any(self.pads)

    @property
    def is_channel_affine(self) -> bool:
        """y[c] = W[c]·x[c] + b[c]: pointwise and one channel per group."""
        return self.is_pointwise and self.groups == self.in_channels == self.out_channels

    @property
    def blocks(self) -> np.ndarray:
        """The weight per group: [g, O/g, C/g, *k]."""
        return self.weight.reshape(self.groups, self.out_channels // self.groups, *self.weight.shape[1:])

    def _shrink(self) -> tuple[int, ...]:
        """How many positions the map removes per spatial dim at stride 1 (negative grows)."""
        return tuple(
            d * (k - 1) - b - e
            for d, k, b, e in zip(self.dilations, self.kernel, self.pads_begin, self.pads_end, strict=True)
        )

    @classmethod
    def identity(cls, channels: int, rank: int, dtype: np.dtype) -> ConvMap:
        """y = x, as a depthwise 1×…×1 convolution."""
        return cls.channel_affine(np.ones(channels, dtype), np.zeros(channels, dtype), rank)

    @classmethod
    def channel_affine(cls, scale: np.ndarray, shift: np.ndarray, rank: int) -> ConvMap:
        """y[c] = scale[c]·x[c] + shift[c] (an inference BatchNormalization), as a depthwise 1×…×1 conv."""
        weight = np.asarray(scale).reshape(len(scale), 1, *([1] * rank))
        return cls(weight, np.asarray(shift), (1,) * rank, (1,) * rank, (0,) * (2 * rank), len(scale))

    def regroup(self, groups: int) -> ConvMap:
        """The same map written with `groups` groups (a divisor of self.groups): each new group's
        weight is block-diagonal over the r = self.groups / groups old groups it holds."""
        if groups == self.groups:
            return self
        if self.groups % groups:
            raise ValueError(f"cannot write {self.groups} groups as {groups}")
        r = self.groups // groups
        old = self.blocks.reshape(groups, r, *self.blocks.shape[1:])  # [g, r, O/G, C/G, *k]
        dense = np.zeros((groups, r, old.shape[2], r, *old.shape[3:]), self.weight.dtype)
        for i in range(r):
            dense[:, i, :, i] = old[:, i]
        weight = dense.reshape(self.out_channels, r * self.weight.shape[1], *self.kernel)
        return dataclasses.replace(self, weight=weight, groups=groups)

    def through(self, vector: np.ndarray) -> np.ndarray:
        """Σ_p Σ_t W[o, p, t] · v[p] over each group's channels p: the map's output, bias aside, for
        an input that holds v[p] at every position (how a bias before it comes out after it)."""
        taps = self.blocks.sum(axis=tuple(range(3, self.blocks.ndim)))  # [g, O/g, C/g]
        return np.einsum("gop,gp->go", taps, vector.reshape(self.groups, -1)).reshape(-1)

    def scaled(self, factor: float) -> ConvMap:
        """factor · self(x)."""
        return dataclasses.replace(self, weight=self.weight * factor, bias=self.bias * factor)

    def then(self, after: ConvMap, max_macs: int | None = None) -> ConvMap | str:
        """The single convolution equal to `after(self(x))`, or the reason no exact one exists
        (or, given `max_macs`, why it would cost more multiply-accumulates per output than that).

        Per group (both maps first written with g = gcd of their group counts): when B = `after` is
        pointwise, W = W_B·W_A and b = W_B·b_A + b_B keep A's geometry; when A = `self` is
        pointwise, the same products keep B's. Otherwise B must have no padding:

            W[o, c, τ] = Σ_p Σ_{tB·dB·sA + tA·dA = τ} W_B[o, p, tB] · W_A[p, c, tA]
            b[o]       = Σ_p Σ_tB W_B[o, p, tB] · b_A[p] + b_B[o]

        with stride sA·sB, dilation 1 and A's padding (or B's geometry when A is pointwise).
        B's zero padding of A's output is why other cases are not exact: the folded kernel would
        read A's bias (and A applied to the input's padding) where the original read zeros.
        A per-channel affine map on either side scales the other's weight and keeps its groups.
        """
        if self.out_channels != after.in_channels:
            return "channel counts do not chain"
        if after.is_channel_affine:
            scale = after.weight.reshape(-1)
            weight = self.weight * scale.reshape(-1, *([1] * (self.weight.ndim - 1)))
            return dataclasses.replace(self, weight=weight, bias=scale * self.bias + after.bias)
        if self.is_channel_affine and (not any(after.pads) or not self.bias.any()):
            scale = self.weight.reshape(after.groups, 1, -1, *([1] * after.rank))
            weight = (after.blocks * scale).reshape(after.weight.shape)
            return dataclasses.replace(after, weight=weight, bias=after.through(self.bias) + after.bias)
        groups = math.gcd(self.groups, after.groups)
        first_pointwise = self.is_pointwise and (not any(after.pads) or not self.bias.any())
        if after.is_pointwise:
            kernel = self.kernel
        elif first_pointwise:
            kernel = after.kernel
        elif any(after.pads):
            return "the second conv pads its input, which the folded conv cannot reproduce"
        else:
            steps = tuple(db * sa for db, sa in zip(after.dilations, self.strides, strict=True))
            kernel = tuple(
                (kb - 1) * step + (ka - 1) * da + 1
                for kb, step, ka, da in zip(after.kernel, steps, self.kernel, self.dilations, strict=True)
            )
        macs = after.out_channels * (self.in_channels // groups) * math.prod(kernel)
        if max_macs is not None and macs > max_macs:
            return mac_increase(max_macs, macs, [self, after], groups)
        bias = after.through(self.bias) + after.bias
        first, second = self.regroup(groups), after.regroup(groups)
        a, b = first.blocks, second.blocks  # [g, P/g, C/g, *kA], [g, O/g, P/g, *kB]
        if second.is_pointwise:
            mix = b.reshape(b.shape[:3])
            weight = np.einsum("gop,gpc...->goc...", mix, a, optimize=True).reshape(-1, *a.shape[2:])
            return dataclasses.replace(first, weight=weight, bias=bias)
        if first_pointwise:
            mix = a.reshape(a.shape[:3])
            weight = np.einsum("gop...,gpc->goc...", b, mix, optimize=True).reshape(-1, a.shape[2], *kernel)
            return dataclasses.replace(second, weight=weight, bias=bias)
        weight = np.zeros((*b.shape[:2], a.shape[2], *kernel), np.result_type(a, b))
        for tb in itertools.product(*map(range, second.kernel)):
            for ta in itertools.product(*map(range, first.kernel)):
                tau = tuple(
                    x * st + y * d for x, st, y, d in zip(tb, steps, ta, first.dilations, strict=True)
                )
                weight[(..., *tau)] += b[(..., *tb)] @ a[(..., *ta)]
        strides = tuple(x * y for x, y in zip(first.strides, second.strides, strict=True))
        weight = weight.reshape(-1, *weight.shape[2:])
        return ConvMap(weight, bias, strides, (1,) * self.rank, first.pads, groups)

    def plus(self, other: ConvMap) -> ConvMap | str:
        """The single convolution equal to `self(x) + other(x)`, or the reason no exact one exists.

        Both must have the same channels, strides and output extent; they are written with the
        gcd of their group counts. Tap t of a kernel reads the input at offset t·d − p_begin; the
        sum puts both kernels on the union of their offsets (one dilation d per spatial dim), adds
        their weights tap by tap, and adds the biases.
        """
        if (self.out_channels, self.in_channels) != (other.out_channels, other.in_channels):
            return "the branches have different channel counts"
        if self.strides != other.strides:
            return "the branches have different strides"
        if self._shrink() != other._shrink():
            return "the branches produce different output sizes"
        groups = math.gcd(self.groups, other.groups)
        maps = (self.regroup(groups), other.regroup(groups))
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
        weight = np.zeros((*maps[0].weight.shape[:2], *kernel), np.result_type(self.weight, other.weight))
        for m in maps:
            for t in itertools.product(*map(range, m.kernel)):
                tap = tuple(
                    (ti * m.dilations[dim] - m.pads_begin[dim] + begin[dim]) // dilations[dim]
                    for dim, ti in enumerate(t)
                )
                weight[(..., *tap)] += m.weight[(..., *t)]
        return ConvMap(
            weight, self.bias + other.bias, self.strides, tuple(dilations), tuple(begin + end), groups
        )
