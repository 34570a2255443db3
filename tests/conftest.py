"""Shared fixtures: tiny ONNX models written in a few lines, and torch models exported once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from passc.cli import main as cli_main

EXAMPLE = Path(__file__).parent.parent / "examples" / "cnn" / "model.onnx"


def parse(text: str) -> onnx.ModelProto:
    """An ONNX model from onnx's text syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def weighted_model(signature: str, body: str, **weights: np.ndarray) -> ir.Model:
    """A model from onnx text: `signature` like "(float[1, 4] x) => (float y)" (output shapes are
    inferred), `body` the nodes; `weights` become initializers named by their keyword. Nodes are
    named after their first output."""
    declared = "".join(f", float[{','.join(map(str, w.shape))}] {k}" for k, w in weights.items())
    inputs, outputs = signature.split(")", 1)
    proto = onnx.parser.parse_model(
        f'<ir_version: 8, opset_import: ["" : 17]> g {inputs}{declared}){outputs} {{ {body} }}'
    )
    graph = proto.graph
    kept = [i for i in graph.input if i.name not in weights]
    graph.ClearField("input")
    graph.input.extend(kept)
    graph.initializer.extend(onnx.numpy_helper.from_array(w, k) for k, w in weights.items())
    for node in graph.node:
        node.name = node.output[0]
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def matmul_by(weight: np.ndarray, op: str, rows: int | tuple[int, ...], out_type: int, path: Path) -> Path:
    """A one-node ONNX model at `path`: `op` of an input a[*rows, K] (the weight's type) and the
    constant weight b[K, N], into y[*rows, N] of ONNX type `out_type`."""
    from onnx import helper

    lead = [rows] if isinstance(rows, int) else list(rows)
    in_type = helper.np_dtype_to_tensor_dtype(weight.dtype)
    depth, count = weight.shape
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])],
        path.stem,
        [helper.make_tensor_value_info("a", in_type, [*lead, depth])],
        [helper.make_tensor_value_info("y", out_type, [*lead, count])],
        [onnx.numpy_helper.from_array(weight, "b")],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def legalized_kernels(model: Path | onnx.ModelProto | ir.Model, target: Any) -> dict[str, Any]:
    """The kernels (PrimFuncs by name) that passc's legalize phases make of an ONNX model (a
    file, a ModelProto or an onnx_ir model) for a TVM target (a Target or its dict)."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from passc.schedules import legalize_passes

    if isinstance(model, Path):
        model = onnx.load(model)
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    mod = from_onnx(proto, keep_params_in_input=False)
    with tvm.target.Target(target):
        mod = tvm.transform.Sequential(legalize_passes())(mod)
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def disassembly(objdump: str, library: Path) -> str:
    """`objdump -d` of a shared library."""
    import subprocess

    return subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Any:
    """passc's cache for this test session, never the user's (which may hold tuning records a
    developer made): the runtime libraries and runners are fetched and built into it once."""
    cache = tmp_path_factory.mktemp("passc-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PASSC_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(autouse=True)
def own_cache(session_cache: Path, tmp_path_factory, monkeypatch) -> Path:
    """Each test's own cache directory (its own tuning records), sharing the session's runtime
    libraries and runners, which cost a download and a build."""
    cache = tmp_path_factory.mktemp("cache")
    for shared in ("runtime", "runners"):
        (session_cache / shared).mkdir(exist_ok=True)
        (cache / shared).symlink_to(session_cache / shared, target_is_directory=True)
    monkeypatch.setenv("PASSC_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def run_cli(capsys):
    """Runs `passc ARGS…` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = cli_main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def dynamic_mlp(tmp_path: Path) -> Path:
    """MatMul-Add-Relu with a dynamic batch and a Shape-computed Reshape, as exporters write."""
    return save(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[N, 4, 2] x) => (float[N, 3] y) {
              w = Constant<value = float[8, 3] {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9,
                 1.0, -1.1, 1.2, 0.5, 0.25, -0.125, 1.5, 0.75, -0.5, 0.1, 0.2, 0.3, -0.4, 0.5, 0.6}>()
              b = Constant<value = float[3] {0.5, -0.5, 0.25}>()
              s = Shape(x)
              zero = Constant<value = int64[1] {0}>()
              one = Constant<value = int64[1] {1}>()
              n = Slice(s, zero, one)
              minus1 = Constant<value = int64[1] {-1}>()
              shape = Concat<axis = 0>(n, minus1)
              flat = Reshape(x, shape)
              h = MatMul(flat, w)
              hb = Add(h, b)
              y = Relu(hb)
            }"""
        ),
        tmp_path / "mlp.onnx",
    )


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """A small CNN and a small transformer encoder, made with torch and exported to ONNX once.

    Returns name → (onnx path, input shapes to bind).
    """
    torch = pytest.importorskip("torch", reason="torch is the 'torch' extra")
    out = tmp_path_factory.mktemp("torch_models")
    torch.manual_seed(0)

    class SmallCNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
                torch.nn.BatchNorm2d(16),
                torch.nn.ReLU(),
                torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
                torch.nn.Conv2d(16, 32, 1),
                torch.nn.SiLU(),
                torch.nn.MaxPool2d(2),
            )
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x):
            x = self.features(x)
            return self.head(x.mean(dim=(2, 3)))

    class SmallEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(100, 32)
            layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(32, 4)

        def forward(self, tokens):
            return self.head(self.encoder(self.embed(tokens)).mean(dim=1))

    models = {}
    batch = torch.export.Dim("batch", min=1, max=64)
    for name, module, example in [
        ("cnn", SmallCNN(), torch.randn(2, 3, 32, 32)),
        ("encoder", SmallEncoder(), torch.randint(0, 100, (2, 12))),
    ]:
        module.eval()
        program = torch.onnx.export(
            module, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False
        )
        path = out / f"{name}.onnx"
        program.save(str(path))
        input_name = program.model.graph.inputs[0].name
        models[name] = (path, {input_name: (1, *example.shape[1:])})
    return models


@pytest.fixture
def rpc_server():
    """A TVM RPC server on 127.0.0.1, as a board would run one; yields its "HOST:PORT"."""
    import tvm.rpc

    server = tvm.rpc.Server(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.terminate()


def commit_naive_records(records: Path, model: Path, seconds: float) -> None:
    """Commits, for each kernel of `model`, a record whose trace transforms nothing (TVM's naive
    loops, far slower than the default schedule; an empty trace is never applied) that claims
    `seconds`: a search's winner measured wrong."""
    import tvm
    from passc.targets import get_target
    from tvm.s_tir import meta_schedule as ms

    from passc.lowering import legalized_kernels

    mod, target = legalized_kernels(ir.load(model), get_target("host").tvm)
    records.mkdir()
    database = ms.database.JSONDatabase(work_dir=str(records))
    for task in ms.relax_integration.extract_tasks(mod, target):
        workload = database.commit_workload(task.dispatched[0])
        naive = tvm.s_tir.Schedule(task.dispatched[0])
        naive.get_loops(naive.get_child_blocks(naive.get_sblock("root"))[0])  # looks, changes nothing
        database.commit_tuning_record(ms.database.TuningRecord(naive.trace, workload, [seconds], target))


def conv_with_naive_records(tmp_path: Path) -> tuple[Path, Path]:
    """A 3×3 conv + ReLU (4.7 M multiply-adds: naive loops take milliseconds, the default
    schedule ~0.1 ms) saved as conv.onnx, and a records database whose one record for it holds
    TVM's naive loops but claims 1 ns: (model, records)."""
    rng = np.random.default_rng(0)
    model, records = tmp_path / "conv.onnx", tmp_path / "records"
    ir.save(
        weighted_model(
            "(float[1, 16, 32, 32] x) => (float y)",
            "h = Conv<pads = [1, 1, 1, 1]>(x, w, b) y = Relu(h)",
            w=rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
            b=rng.standard_normal(32).astype(np.float32),
        ),
        model,
    )
    commit_naive_records(records, model, 1e-9)
    return model, records
