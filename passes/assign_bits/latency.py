"""Measured per-layer latency at each width, on the target (OHQ's on-chip cost): a `LatencyTable`.

Each layer is cut out into a one-node model (its input shape, its weight realised at the width as
`realise` stores it, its bias), compiled by passc's lowering for the target and timed: on this
host, or on the device through TVM RPC (`rpc="HOST:PORT"` of `python -m tvm.exec.rpc_server` on the
board). The decode of packed weights runs inside the timed model, as it does in the artifact.
Timings are cached per (target, RPC address, layer shape and attributes, width, scheme) under
passc's cache dir, so a second run with the same layers measures nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx_ir as ir
from passc.passes.assign_bits.decode import realise
from passc.passes.assign_bits.layers import find_layers
from passc.passes.assign_bits.quantize import Scheme
from passc.targets import Target

from passc.atomic import atomic_file
from passc.errors import UsageError
from passc.pass_base import RUNTIME_PARAMS_KEY

__all__ = ["MeasuredLatency", "layer_model"]

logger = logging.getLogger(__name__)


def _copy(value: ir.Value, name: str) -> ir.Value:
    copy = ir.Value(name=name, shape=value.shape, type=value.type, const_value=value.const_value)
    return copy


def layer_model(model: ir.Model, layer_name: str) -> ir.Model:
    """A model holding only the named layer: its activation input, weight and constant operands."""
    node = next(n for n in model.graph if (n.name or n.outputs[0].name) == layer_name)
    x = node.inputs[0]
    if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
        raise UsageError(f"assign-bits: layer {layer_name!r} has no static input shape to time it with")
    inputs = [_copy(x, "x")]
    constants = [_copy(v, f"c{i}") for i, v in enumerate(node.inputs[1:]) if v is not None]
    if any(c.const_value is None for c in constants):
        raise UsageError(f"assign-bits: layer {layer_name!r} has operands that are not constants")
    attributes = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    copy = ir.Node(node.domain, node.op_type, inputs + constants, attributes, name=layer_name)
    copy.outputs[0].name = "y"
    copy.outputs[0].shape, copy.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
    graph = ir.Graph(
        inputs, [copy.outputs[0]], nodes=[copy], initializers=constants, opset_imports=model.opset_imports
    )
    return ir.Model(graph, ir_version=model.ir_version)


def _signature(layer: ir.Model, width: int, scheme: Scheme, target: Target, rpc: str | None) -> str:
    """What the timing depends on: never the weight values."""
    node = layer.graph.node(0)
    text = json.dumps(
        {
            "op": node.op_type,
            "attributes": sorted((a.name, repr(a.value)) for a in node.attributes.values()),
            "shapes": [list(v.shape) for v in node.inputs],
            "width": width,
            "scheme": [scheme.group, scheme.symmetric],
            "target": target.tvm,
            "rpc": rpc,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class MeasuredLatency:
    """A `LatencyTable` that times each (layer, width) on `target`, locally or over RPC, with a cache."""

    def __init__(self, target: Target, scheme: Scheme, rpc: str | None, repeat: int, cache: Path) -> None:
        if rpc is None and not target.runs_on_host:
            raise UsageError(
                f"assign-bits: latency on {target.name} must be measured on the device: start "
                "`python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090` there and give "
                "--pass-option assign-bits.rpc=BOARD:9090"
            )
        self.target, self.scheme, self.rpc, self.repeat, self.cache = target, scheme, rpc, repeat, cache

    def __call__(
        self, model: ir.Model, layers: Sequence[str], widths: Sequence[int]
    ) -> Mapping[tuple[str, int], float]:
        table = {}
        for name in layers:
            for width in widths:
                timed = layer_model(model, name)
                path = self.cache / f"{_signature(timed, width, self.scheme, self.target, self.rpc)}.json"
                if path.is_file():
                    table[name, width] = json.loads(path.read_text())["seconds"]
                    continue
                table[name, width] = self._measure(timed, width)
                logger.info("assign-bits: %s at %s bits: %.3g ms", name, width, table[name, width] * 1e3)
                _write_json(path, {"seconds": table[name, width]})
        return table

    def _measure(self, timed: ir.Model, width: int) -> float:
        """Realises the one-layer model's weight at `width` and times it on the target."""
        from passc.runtime import measure_latency

        (layer,) = find_layers(timed.graph)
        timed.metadata_props[RUNTIME_PARAMS_KEY] = json.dumps(realise(timed.graph, layer, width, self.scheme))
        return measure_latency(timed, self.target.tvm, self.target.cxx, rpc=self.rpc, repeat=self.repeat)


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data))
