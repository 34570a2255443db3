"""The int8 matmul kernels (`passc.schedules.int8_matmul`): the instruction each target gets
(`vpdpbusd`, `smmla`, or LLVM's `sdot` / `vpmaddwd` from dot products), the packing, and results
equal to onnxruntime's bit for bit."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tvm
from conftest import disassembly, legalized_kernels, matmul_by
from onnx import TensorProto, numpy_helper
from passc.targets import get_target

import passc
from passc import oracle
from passc.loading import load_model
from passc.lowering import lower, resolve_target
from passc.schedules.int8_matmul import int8_instruction, int8_tile, pack_int8

# (rows, K, N): tiles that fit exactly; rows, K and N that all need padding; one row; rows along
# two axes (a batch of sequences).
SHAPES = [(8, 256, 64), (5, 37, 19), (1, 64, 10), ((2, 6), 24, 40)]


def _int8_matmul(
    tmp_path: Path, rows: int | tuple[int, ...] = 8, depth: int = 256, count: int = 64
) -> tuple[Path, np.ndarray]:
    """ONNX MatMulInteger: int8 [*rows, K] × a constant int8 [K, N] into int32; and an input."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (depth, count)).astype(np.int8)
    path = matmul_by(weight, "MatMulInteger", rows, TensorProto.INT32, tmp_path / "int8.onnx")
    lead = (rows,) if isinstance(rows, int) else rows
    return path, rng.integers(-128, 128, (*lead, depth)).astype(np.int8)


def _expected(path: Path, a: np.ndarray) -> np.ndarray:
    return _expected_with(path, {"a": a})


def _expected_with(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The model's output: exactly Σ_k (A - a_zero)·(B - b_zero) in int64 for a model of one
    MatMulInteger, else onnxruntime's. onnxruntime is no oracle for uint8 × int8 here: on x86
    without VNNI its kernels sum pairs of products in int16 with saturation (`vpmaddubsw`), and
    differ from the exact sum where a pair exceeds 32767."""
    model = onnx.load(path)
    if [n.op_type for n in model.graph.node] != ["MatMulInteger"]:
        return oracle.run_onnxruntime(load_model(path).model, feeds)["y"]
    (node,) = model.graph.node
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer} | feeds
    a, b, *zeros = (np.asarray(values[name]).astype(np.int64) for name in node.input)
    a_zero, b_zero = (zeros + [np.int64(0), np.int64(0)])[:2]
    a_zero = a_zero[..., None] if a_zero.ndim == 1 else a_zero  # one per row
    return ((a - a_zero) @ (b - b_zero)).astype(np.int32)


def _objdump(name: str) -> str:
    objdump = shutil.which(name)
    if objdump is None:
        pytest.skip(f"{name} (binutils) is not installed")
    return objdump


@pytest.mark.parametrize(
    ("tvm_target", "expected"),
    [
        ({"kind": "llvm", "mcpu": "cascadelake"}, "vnni16"),
        ({"kind": "llvm", "mcpu": "alderlake"}, "vnni8"),  # AVX-VNNI, no AVX-512
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, None),
        ({"kind": "llvm", "mcpu": "haswell"}, None),
        (get_target("armv9").tvm, "i8mm"),
        (get_target("rpi5").tvm, None),  # dotprod only
        (get_target("rpi4").tvm, None),
    ],
)
def test_int8_instruction_follows_the_cpu_features(tvm_target: dict[str, Any], expected: str | None) -> None:
    assert int8_instruction(tvm.target.Target(tvm_target)) == expected


def test_int8_tile_pads_the_rows_least_and_fits_the_registers() -> None:
    assert int8_tile("vnni16", 128, 768) == (8, 32, 4)
    assert int8_tile("vnni16", 197, 768) == (6, 32, 4)  # 198 rows; 8 would pad to 200
    assert int8_tile("vnni16", 3, 10) == (3, 16, 4)  # every row, one vector
    assert int8_tile("vnni8", 128, 768) == (4, 16, 4)  # 16 registers: at most 6 rows
    assert int8_tile("i8mm", 128, 768) == (8, 8, 8)
    assert int8_tile("i8mm", 5, 19) == (6, 8, 8)  # row pairs
    assert int8_tile("i8mm", 1, 3) == (2, 4, 8)


def test_pack_int8_puts_each_weight_in_its_panel_and_group() -> None:
    weight = np.random.default_rng(0).integers(-128, 128, (37, 19)).astype(np.int8)
    packed = pack_int8(weight, 16, 4)
    assert packed.shape == (2, 10, 16, 4) and packed.dtype == np.int8
    k, n = np.meshgrid(np.arange(37), np.arange(19), indexing="ij")
    np.testing.assert_array_equal(packed[n // 16, k // 4, n % 16, k % 4], weight)
    assert np.abs(packed.astype(np.int64)).sum() == np.abs(weight.astype(np.int64)).sum()  # zero elsewhere


def test_int8_matmul_stays_int8_and_takes_the_cpus_kernel(tmp_path: Path) -> None:
    """MatMulInteger's int8 operands reach the kernel as int8 (not widened to int32 first): dot
    products for `Int8Dot` without VNNI, `vpdpbusd` tiles for `Int8Tiles` (rows shifted to
    uint8) with it."""
    from passc.schedules.int8_matmul import INT8_ROWS, INT8_TILES, Int8Dot, Int8Tiles

    path, _ = _int8_matmul(tmp_path)
    for mcpu, rule in (("skylake-avx512", Int8Dot), ("cascadelake", Int8Tiles)):
        target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
        kernels = legalized_kernels(path, target)
        assert list(kernels) == ["matmul_int8"]
        func = kernels["matmul_int8"]
        signature = func.script().split("def main(", 1)[1].split("):", 1)[0]
        assert signature.count('"int8")') == 2 and signature.count('"int32")') >= 1, signature
        tiled = f'T.sblock("{INT8_TILES}")' in func.script()
        assert tiled == (rule is Int8Tiles)
        assert (f'"{INT8_ROWS}"' in func.script() and '"uint8"' in func.script()) == tiled
        with target:
            assert rule().apply(func, target, False) is not None
            assert (Int8Dot if tiled else Int8Tiles)().apply(func, target, False) is None


@pytest.mark.parametrize(("rows", "depth", "count"), SHAPES)
def test_int8_matmul_matches_onnxruntime_exactly_on_the_host(
    tmp_path: Path, rows: Any, depth: int, count: int
) -> None:
    """On a host with AVX-512 VNNI the products are `vpdpbusd` on zmm registers; without, vector
    products that LLVM's cost model picks for the CPU and the reduction's length: `vpmaddwd`
    (pairs of int16), or `vpmulld` (int32; Zen 3 on short reductions)."""
    path, a = _int8_matmul(tmp_path, rows, depth, count)
    artifact = passc.compile(path, target="host", output=tmp_path / "host")
    np.testing.assert_array_equal(artifact.run({"a": a})["y"], _expected(path, a))
    code = disassembly(_objdump("objdump"), artifact.path / "model.so")
    instruction = int8_instruction(tvm.target.Target(resolve_target(get_target("host").tvm)))
    if instruction == "vnni16":
        assert re.search(r"\bvpdpbusd\s[^\n]*%zmm", code)
    else:
        assert re.search(r"\bv?pm(addwd|ulld)\b" if instruction is None else r"\bvpdpbusd\b", code)


@pytest.mark.parametrize(
    ("mcpu", "instruction"),
    [
        ("cascadelake", r"vpdpbusd\s[^\n]*%zmm"),
        ("alderlake", r"vpdpbusd\s[^\n]*%ymm"),
        ("skylake-avx512", r"vpmaddwd\b"),
    ],
)
def test_x86_int8_kernels_use_the_cpus_instruction(tmp_path: Path, mcpu: str, instruction: str) -> None:
    """Compiled (not run: the host may lack the instruction) for three x86 CPUs: AVX-512 VNNI's
    `vpdpbusd` on 16 lanes, AVX-VNNI's on 8, and `vpmaddwd` without VNNI."""
    path, _ = _int8_matmul(tmp_path, 16, 128, 64)
    library = tmp_path / "model.so"
    lower(load_model(path).model, {"kind": "llvm", "mcpu": mcpu}).executable.export_library(str(library))
    code = disassembly(_objdump("objdump"), library)
    assert re.search(r"\b" + instruction, code)
    assert ("vpdpbusd" in code) == ("vpdpbusd" in instruction)


def test_int8_matmul_with_a_dequantizing_epilogue_is_one_tiled_kernel(tmp_path: Path) -> None:
    """MatMulInteger, Cast to float and a scale: the epilogue fuses into the tiled kernel, and the
    result is onnxruntime's."""
    import onnx
    from onnx import helper, numpy_helper

    from passc.schedules.int8_matmul import INT8_TILES

    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (96, 48)).astype(np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("MatMulInteger", ["a", "b"], ["ab"]),
            helper.make_node("Cast", ["ab"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "scale"], ["y"]),
        ],
        "dequantized",
        [helper.make_tensor_value_info("a", TensorProto.INT8, [20, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [20, 48])],
        [numpy_helper.from_array(weight, "b"), numpy_helper.from_array(np.float32(1 / 4096), "scale")],
    )
    path = tmp_path / "dequantized.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    kernels = legalized_kernels(path, {"kind": "llvm", "mcpu": "cascadelake"})
    assert len(kernels) == 1 and f'T.sblock("{INT8_TILES}")' in next(iter(kernels.values())).script()
    a = rng.integers(-128, 128, (20, 96)).astype(np.int8)
    artifact = passc.compile(path, target="host", output=tmp_path / "host")
    np.testing.assert_array_equal(artifact.run({"a": a})["y"], _expected(path, a))


def test_int8_matmul_uses_sdot_on_cortex_a76(tmp_path: Path) -> None:
    """rpi5 has Armv8.2's dotprod (no i8mm): the int8 products are summed by `sdot`, and the result
    run under qemu is onnxruntime's bit for bit."""
    objdump = _objdump("aarch64-linux-gnu-objdump")
    path, a = _int8_matmul(tmp_path)
    artifact = passc.compile(path, target="rpi5", output=tmp_path / "rpi5", bundle=True)
    assert re.search(r"\bsdot\s+v\d+\.4s", disassembly(objdump, artifact.path / "model.so"))
    np.testing.assert_array_equal(artifact.run({"a": a}, emulate=True)["y"], _expected(path, a))


@pytest.mark.parametrize(("rows", "depth", "count"), [SHAPES[0], SHAPES[1], SHAPES[3]])
def test_int8_matmul_uses_smmla_on_armv9(tmp_path: Path, rows: Any, depth: int, count: int) -> None:
    """armv9 has i8mm: the products are `smmla`s (2 × 8 by 8 × 2 into 2 × 2), and the result run
    under qemu (`-cpu max`) is onnxruntime's bit for bit."""
    objdump = _objdump("aarch64-linux-gnu-objdump")
    path, a = _int8_matmul(tmp_path, rows, depth, count)
    artifact = passc.compile(path, target="armv9", output=tmp_path / "armv9", bundle=True)
    code = disassembly(objdump, artifact.path / "model.so")
    assert re.search(r"\bsmmla\s+v\d+\.4s, v\d+\.16b, v\d+\.16b", code) and "sdot" not in code
    np.testing.assert_array_equal(artifact.run({"a": a}, emulate=True)["y"], _expected(path, a))


def _with_zero_points(tmp_path: Path, case: str) -> tuple[Path, dict[str, np.ndarray]]:
    """MatMulInteger a[6, 40] × b[40, 24] with zero points, and its inputs:
    - "u8-input": uint8 a whose scalar zero point is a model input (as onnxruntime's dynamic
      quantization writes it), int8 b with zero point 0;
    - "u8-columns": uint8 a and b, b with a zero point per column (b minus it fits int8);
    - "s8-wide": int8 a and b, b's zero point 3, so b minus it does not fit int8 (not narrowed)."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    unsigned = case.startswith("u8")
    a_type, a_dtype = (TensorProto.UINT8, np.uint8) if unsigned else (TensorProto.INT8, np.int8)
    a = rng.integers(0, 256, (6, 40)) if unsigned else rng.integers(-128, 128, (6, 40))
    feeds = {"a": a.astype(a_dtype)}
    inputs = [helper.make_tensor_value_info("a", a_type, [6, 40])]
    if case == "u8-input":
        weight, weight_zero, zero = rng.integers(-128, 128, (40, 24)).astype(np.int8), np.int8(0), None
        inputs.append(helper.make_tensor_value_info("a_zero", a_type, []))
        feeds["a_zero"] = np.array(131, np.uint8)
    elif case == "u8-columns":
        weight = rng.integers(60, 190, (40, 24)).astype(np.uint8)
        weight_zero, zero = rng.integers(120, 136, (24,)).astype(np.uint8), np.uint8(7)
    else:
        weight, weight_zero, zero = rng.integers(-128, 128, (40, 24)).astype(np.int8), np.int8(3), np.int8(-5)
    initializers = [
        numpy_helper.from_array(weight, "b"),
        numpy_helper.from_array(np.asarray(weight_zero), "b_zero"),
    ]
    if zero is not None:
        initializers.append(numpy_helper.from_array(np.asarray(zero), "a_zero"))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "a_zero", "b_zero"], ["y"])],
        case,
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.INT32, [6, 24])],
        initializers,
    )
    path = tmp_path / f"{case}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, feeds


@pytest.mark.parametrize("case", ["u8-input", "u8-columns", "s8-wide"])
def test_matmul_integer_with_zero_points_matches_onnxruntime_exactly(tmp_path: Path, case: str) -> None:
    """Σ_k (A - Z)·B = Σ_k A·B - Z·Σ_k B: a matmul with zero points takes the int8 kernels (uint8
    rows go to `vpdpbusd` unshifted) and the zero point's term after them, where its weight minus
    its zero point fits int8; else TVM's int32 matmul. Either way onnxruntime's result, bit for bit
    (a scalar input too)."""
    from passc.schedules.int8_matmul import INT8_TILES

    path, feeds = _with_zero_points(tmp_path, case)
    scripts = [f.script() for f in legalized_kernels(path, {"kind": "llvm", "mcpu": "cascadelake"}).values()]
    assert any(f'T.sblock("{INT8_TILES}")' in s for s in scripts) == (case != "s8-wide")
    artifact = passc.compile(path, target="host", output=tmp_path / "host")
    np.testing.assert_array_equal(artifact.run(feeds)["y"], _expected_with(path, feeds))


def test_uint8_rows_are_shifted_to_int8_for_smmla(tmp_path: Path) -> None:
    """`smmla` multiplies signed bytes: uint8 rows are packed as A - 128 and 128 · Σ_k B added
    back. Run under qemu, onnxruntime's result bit for bit."""
    _objdump("aarch64-linux-gnu-objdump")
    path, feeds = _with_zero_points(tmp_path, "u8-input")
    artifact = passc.compile(path, target="armv9", output=tmp_path / "armv9", bundle=True)
    np.testing.assert_array_equal(artifact.run(feeds, emulate=True)["y"], _expected_with(path, feeds))


def test_a_dynamically_quantized_model_runs_its_matmuls_in_int8(tmp_path: Path) -> None:
    """onnxruntime's `quantize_dynamic` writes DynamicQuantizeLinear + MatMulInteger (uint8
    activations with a computed zero point, int8 weights): every MatMulInteger takes the int8
    tiles, each activation's min and max (for its scale) `TrailingSum`'s vector partials, and the
    model's output is onnxruntime's to within one quantization step of the result (a float
    difference upstream can round an activation to the next step)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from passc.schedules import TrailingSum
    from passc.schedules.int8_matmul import INT8_TILES

    rng = np.random.default_rng(0)
    first, second = (rng.standard_normal(shape).astype(np.float32) * 0.05 for shape in ((64, 96), (96, 32)))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 32])],
        [numpy_helper.from_array(first, "w1"), numpy_helper.from_array(second, "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "float.onnx")
    path = tmp_path / "quantized.onnx"
    quantize_dynamic(tmp_path / "float.onnx", path, weight_type=QuantType.QInt8)
    assert sum(n.op_type == "MatMulInteger" for n in onnx.load(path).graph.node) == 2
    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
    kernels = legalized_kernels(path, target)
    assert sum(f'T.sblock("{INT8_TILES}")' in f.script() for f in kernels.values()) == 2
    extremes = [f for name, f in kernels.items() if re.fullmatch(r"(max|min)\d*", name)]
    assert len(extremes) == 4  # each activation's min and max, for its scale and zero point
    with target:  # a max over the whole tensor: vector partials, not one scalar chain
        assert all(TrailingSum().apply(f, target, False) is not None for f in extremes)
    x = {"x": rng.standard_normal((16, 64)).astype(np.float32)}
    artifact = passc.compile(path, target="host", output=tmp_path / "host")
    expected = oracle.run_onnxruntime(load_model(path).model, x)["y"]
    step = np.abs(expected).max() / 127
    np.testing.assert_allclose(artifact.run(x)["y"], expected, rtol=0, atol=step)


def _narrowed(zero_shape: tuple[int, ...]) -> str:
    """`narrow_int8_matmul` applied to matmul(astype(A, int32) - Z, astype(W, int32)), A int8
    [6, 40], W a constant int8 [40, 40] and Z an int32 input of `zero_shape`: the function's text."""
    from tvm import relax

    from passc.schedules.int8_matmul import narrow_int8_matmul

    weight = np.random.default_rng(0).integers(-128, 128, (40, 40)).astype(np.int8)
    a = relax.Var("a", relax.TensorType((6, 40), "int8"))
    zero = relax.Var("z", relax.TensorType(zero_shape, "int32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [a, zero]):
        with builder.dataflow():
            shifted = builder.emit(relax.op.subtract(builder.emit(relax.op.astype(a, "int32")), zero))
            wide = builder.emit(relax.op.astype(relax.const(weight), "int32"))
            y = builder.emit_output(relax.op.matmul(shifted, wide, out_dtype="int32"))
        builder.emit_func_output(y)
    return narrow_int8_matmul(builder.get())["main"].script()


def test_only_a_zero_point_constant_along_k_is_narrowed() -> None:
    """Σ_k (A - Z)·B = Σ_k A·B - Z·Σ_k B only when Z is the same for every k: a scalar or one
    per row ([6, 1]) is narrowed to an int8 matmul, a Z per k ([40]) is not. (B is square, so
    that Z·Σ_k B would broadcast without an error: a wrong narrowing would go unnoticed but for
    the numbers.)"""
    narrowed = 'R.matmul(a, metadata["ir.GenericConst"][0], out_dtype="int32")'
    assert narrowed in _narrowed(()) and narrowed in _narrowed((6, 1))
    assert "R.matmul(a," not in _narrowed((40,)) and 'R.astype(a, dtype="int32")' in _narrowed((40,))
