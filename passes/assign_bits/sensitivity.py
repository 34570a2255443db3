"""Sensitivities Ωᵢ(b): the output distortion when layer i alone computes with its weight at b bits.

Measured with onnxruntime on the calibration batches, in one session in which the layers' weights
are graph inputs, so that each (layer, width) is one run per batch with one weight swapped for its
fake-quantized copy (the float32 values the realised decode graph yields). Distortion of outputs y
against the float model's r, summed over outputs and averaged over batches:

    mse:  mean((y − r)²) / mean(r²)
    kl:   mean over rows of KL(softmax(r) ‖ softmax(y)), the softmax taken over the last axis
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from passc.passes.assign_bits.layers import Layer
from passc.passes.assign_bits.quantize import Scheme, fake_quantize

__all__ = ["METRICS", "Probe", "distortion"]

METRICS = ("mse", "kl")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def distortion(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], metric: str) -> float:
    """The metric summed over outputs (see the module docstring)."""
    total = 0.0
    for name, ref in expected.items():
        r, y = ref.astype(np.float64), actual[name].astype(np.float64)
        if metric == "mse":
            total += float(np.mean((y - r) ** 2) / max(np.mean(r**2), 1e-30))
        else:
            log_p, log_q = _log_softmax(r), _log_softmax(y)
            total += float(np.mean((np.exp(log_p) * (log_p - log_q)).sum(axis=-1)))
    return total


class Probe:
    """The model with the layers' weights as inputs, run on the calibration batches."""

    def __init__(self, model: ir.Model, layers: Sequence[Layer], batches: list[dict[str, np.ndarray]]):
        proto = ir.to_proto(model)
        names = {layer.weight.name for layer in layers}
        moved = [t for t in proto.graph.initializer if t.name in names]
        kept = [t for t in proto.graph.initializer if t.name not in names]
        proto.graph.ClearField("initializer")
        proto.graph.initializer.extend(kept)
        proto.graph.input.extend(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.weights = {layer.weight.name: layer.array for layer in layers}
        self.batches = batches
        self.reference = [self.run(batch, {}) for batch in batches]

    def run(self, batch: dict[str, np.ndarray], swapped: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {**batch, **self.weights, **swapped}
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))

    def distortion(self, swapped: dict[str, np.ndarray], metric: str) -> float:
        """Mean distortion over the batches with some weights replaced (by weight name)."""
        return float(
            np.mean(
                [
                    distortion(self.run(batch, swapped), ref, metric)
                    for batch, ref in zip(self.batches, self.reference, strict=True)
                ]
            )
        )

    def sensitivities(
        self, layers: Sequence[Layer], widths: Sequence[int], scheme: Scheme, metric: str
    ) -> np.ndarray:
        """Ω as a [layers, widths] table; width 32 (the float weight) is 0."""
        table = np.zeros((len(layers), len(widths)))
        for i, layer in enumerate(layers):
            for j, width in enumerate(widths):
                if width != 32:
                    weight = fake_quantize(layer.array, width, layer.channels_last, scheme)
                    table[i, j] = self.distortion({layer.weight.name: weight}, metric)
        return table
