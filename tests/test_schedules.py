"""passc's default CPU schedules: every kernel of small conv, depthwise, transformer and pooling nets
gets a schedule, and the compiled outputs still match onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import disassembly, legalized_kernels, matmul_by, weighted_model

import passc
from passc import oracle
from passc.loading import load_model

torch = pytest.importorskip("torch", reason="torch is the 'torch' extra")
nn = torch.nn
tvm = pytest.importorskip("tvm")

from passc.schedules import CPUSpec, cpu_spec, register_tile  # noqa: E402  (imports TVM)

TOLERANCE = 1e-4


class _ConvNet(nn.Module):
    """Stem conv (stride 2) + residual 3×3 block + 1×1 conv with bias, ReLU, SiLU, max pool, a dilated
    strided conv, a conv whose 12 output channels are no whole vector (not packed), global mean, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 7, 2, 3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv1 = nn.Conv2d(16, 16, 3, 1, 1)
        self.conv2 = nn.Conv2d(16, 32, 1)
        self.dilated = nn.Conv2d(32, 24, 3, 2, 2, dilation=2, bias=False)  # 3 half vectors
        self.odd = nn.Conv2d(24, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(self.conv1(x) + x)
        x = self.dilated(nn.functional.silu(self.conv2(x)))  # SiLU: sigmoid's exp
        return self.fc(self.odd(x).mean(dim=(2, 3)))


class _Separable(nn.Module):
    """MobileNet's inverted residual: pointwise expand, depthwise 3×3 (stride 1 and 2), ReLU6, project."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 24, 1)
        self.depthwise = nn.Conv2d(24, 24, 3, 1, 1, groups=24)
        self.project = nn.Conv2d(24, 8, 1)
        self.down = nn.Conv2d(8, 8, 3, 2, 1, groups=8)
        self.avg = nn.AvgPool2d(2)

    def forward(self, x):
        y = nn.functional.relu6(self.depthwise(nn.functional.relu6(self.expand(x))))
        return self.avg(self.down(x + self.project(y)))


class _WideKernels(nn.Module):
    """MobileNetV3's 5×5 depthwise convs on narrow maps (stride 1 on 24 channels: three half
    vectors on AVX-512; stride 2 on 32) with hardswish, and a 3×3 one that stays NCHW."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(24, 24, 5, 1, 2, groups=24)
        self.expand = nn.Conv2d(24, 32, 1)
        self.strided = nn.Conv2d(32, 32, 5, 2, 2, groups=32, bias=False)
        self.narrow = nn.Conv2d(32, 32, 3, 1, 1, groups=32)

    def forward(self, x):
        y = nn.functional.hardswish(self.wide(x))
        return self.narrow(torch.relu(self.strided(self.expand(y))))


class _Attention(nn.Module):
    """A transformer block: layer norm, multi-head attention (batch matmuls, softmax), GELU MLP."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(x)


class _BoxSoftmax(nn.Module):
    """YOLO's distribution focal loss head: a softmax over 16 bins that are not the innermost axis,
    weighted per bin (the softmax's reductions run over axis 1 of [1, 16, 4, boxes])."""

    def forward(self, x):
        return torch.softmax(x, dim=1) * torch.arange(16.0).reshape(1, 16, 1, 1)


class _Pools(nn.Module):
    """ResNet's 3×3 stride-2 max pool, then a 2×2 average pool: outputs 50 and 25 columns wide."""

    def forward(self, x):
        return nn.functional.avg_pool2d(nn.functional.max_pool2d(x, 3, 2, 1), 2)


class _Upsample(nn.Module):
    """U-Net's 2×2 stride-2 transposed conv, a 3×3 stride-3 one (both kernel = stride: packed), and
    a 3×3 stride-2 one with padding (TVM's own legalization)."""

    def __init__(self) -> None:
        super().__init__()
        self.up2 = nn.ConvTranspose2d(8, 16, 2, 2)
        self.up3 = nn.ConvTranspose2d(16, 8, 3, 3, bias=False)
        self.padded = nn.ConvTranspose2d(8, 8, 3, 2, 1)

    def forward(self, x):
        return self.padded(self.up3(torch.relu(self.up2(x))))


class _SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-excite block over a 24×24 map, then the global average pool: two means
    over 576 contiguous values (16-lane partials), and one over a 7×7 corner (49: no partials)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(16, 4, 1)
        self.up = nn.Conv2d(4, 16, 1)

    def forward(self, x):
        s = nn.functional.hardsigmoid(self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True)))))
        y = x * s
        return y.mean((2, 3)) + y[:, :, :7, :7].mean((2, 3))


class _SplitConcat(nn.Module):
    """YOLO's C2f and neck data movement on short rows: a channel split and concats of 40-column
    rows, a nearest upsample (x // 2 along the row) concatenated, and a concat of 10-column rows."""

    def forward(self, x):
        a, b = x.split(8, dim=1)
        up = nn.functional.interpolate(x[:, :, :5, :20], scale_factor=2.0)
        narrow = x[:, :, :, :10]
        return torch.cat([b, a, up], 1), torch.cat([narrow, narrow * 2], 1)


class _LongReductions(nn.Module):
    """1×1 convs with long reductions: 256 → 32 channels at 14² (a whole row × 2 vectors); 256 →
    320 at stride 2, then 320 → 128 at 7², whose tiles' weights (40 KB) do not stay in L1 and so
    reduce in chunks of 64 input channels over every row."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(256, 32, 1)
        self.down = nn.Conv2d(256, 320, 1, 2)
        self.chunked = nn.Conv2d(320, 128, 1)

    def forward(self, x):
        return self.wide(x), torch.relu(self.chunked(torch.relu(self.down(x))))


class _LongPointwise(nn.Module):
    """A 1×1 conv at stride 1 from 128 channels at 28²: its tiles' pixels of every input channel
    (57 KB) do not stay in L1, so it reduces in chunks of 64 input channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(128, 64, 1)

    def forward(self, x):
        return torch.relu(self.conv(x))


MODELS = {
    "conv": (_ConvNet, (1, 3, 40, 36)),
    "separable": (_Separable, (1, 8, 20, 20)),
    "separable-wide": (_Separable, (1, 8, 48, 48)),  # depthwise outputs 48 and 24 wide
    "wide-kernels": (_WideKernels, (1, 24, 14, 14)),
    "wide-kernels-short": (_WideKernels, (1, 24, 2, 96)),  # PaddleOCR's classifier: 2 rows of 96
    "attention": (_Attention, (2, 12, 32)),
    "attention-13": (_Attention, (1, 13, 32)),  # a prime token count: the matmuls get padded
    "attention-41": (_Attention, (1, 41, 32)),  # softmax rows of 41: two partial chunks and a tail of 9
    "box-softmax": (_BoxSoftmax, (1, 16, 4, 30)),
    "pools-wide": (_Pools, (1, 4, 100, 100)),
    "upsample": (_Upsample, (1, 8, 5, 7)),
    "squeeze-excite": (_SqueezeExcite, (1, 16, 24, 24)),
    "split-concat": (_SplitConcat, (1, 16, 10, 40)),
    "long-reductions": (_LongReductions, (1, 256, 14, 14)),
    "long-pointwise": (_LongPointwise, (1, 128, 28, 28)),
}


def _export(name: str, tmp_path: Path) -> Path:
    module_class, shape = MODELS[name]
    torch.manual_seed(0)
    module = module_class().eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(module, (torch.randn(shape),), path, dynamo=True, opset_version=18)
    return path


def _compile(path: Path, output: Path, monkeypatch, schedules: bool) -> passc.Artifact:
    monkeypatch.setenv("PASSC_SCHEDULES", "1" if schedules else "0")
    return passc.compile(path, target="host", output=output)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scheduled_model_matches_onnxruntime(tmp_path: Path, monkeypatch, name: str) -> None:
    path = _export(name, tmp_path)
    artifact = _compile(path, tmp_path / "art", monkeypatch, schedules=True)
    inputs = artifact.random_inputs()
    expected = oracle.run_onnxruntime(load_model(path).model, inputs)
    for error in oracle.compare(artifact(**inputs), expected):
        assert error.max_rel <= TOLERANCE, error


def test_every_kernel_of_the_conv_net_is_scheduled(tmp_path: Path) -> None:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from passc.schedules import PackedConv, legalize_passes, schedule_passes

    mod = from_onnx(onnx.load(_export("conv", tmp_path)), keep_params_in_input=False)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    with target:
        mod = tvm.transform.Sequential(legalize_passes())(mod)
        for gv, func in mod.functions_items():  # the packed conv rule, not a fallback, takes them
            if "conv2d_packed" in gv.name_hint:
                assert PackedConv().apply(func, target, False) is not None, gv.name_hint
        mod = tvm.transform.Sequential(schedule_passes(target))(mod)
    kernels = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    unscheduled = [name for name, f in kernels.items() if not f.attrs.get("tirx.is_scheduled", False)]
    assert kernels and not unscheduled
    # Every conv with 8k output channels has packed weights (16 lanes, or 8); the 12-channel one not.
    packed = [name for name in kernels if "conv2d_packed" in name]
    plain = [name for name in kernels if "conv2d" in name and name not in packed]
    assert len(packed) == 4 and len(plain) == 1, sorted(kernels)
    # The 12 → 10 classifier is one row times a constant: one packed panel of 16 columns, 6 padding.
    assert len([name for name in kernels if "dense_packed" in name]) == 1, sorted(kernels)


def test_pack_weight_blocks_output_channels_into_vectors() -> None:
    from passc.schedules import pack_weight

    weight = np.arange(8 * 3 * 2 * 2, dtype=np.float32).reshape(8, 3, 2, 2)
    packed = pack_weight(weight, 4)
    assert packed.shape == (2, 3, 2, 2, 4) and packed.flags["C_CONTIGUOUS"]
    for o, i, kh, kw in np.ndindex(weight.shape):
        assert packed[o // 4, i, kh, kw, o % 4] == weight[o, i, kh, kw]


@pytest.mark.parametrize(
    ("rows", "columns", "spec", "tile"),
    [
        (197, 1536, CPUSpec(16, 32), (6, 4)),  # ViT-S tokens: 198 rows, 4 vectors of 16
        (128, 768, CPUSpec(16, 32), (4, 4)),  # BERT: 4 divides 128, 6 would pad to 132
        (1, 1000, CPUSpec(16, 32), (1, 4)),  # a classifier: one row
        (3, 10, CPUSpec(16, 32), (3, 1)),  # 10 columns: one vector, not 4 (64 columns, 54 padding)
        (197, 1536, CPUSpec(8, 16), (6, 2)),  # AVX2: 6 × 2 vectors, 12 accumulators of 16 registers
        (50, 256, CPUSpec(4, 32), (5, 4)),  # NEON: 5 divides 50
    ],
)
def test_packed_dense_tile(rows: int, columns: int, spec: CPUSpec, tile: tuple[int, int]) -> None:
    from passc.schedules.packed_dense import panel_vectors, row_tile

    vectors = panel_vectors(columns, spec)
    assert (row_tile(rows, vectors, spec), vectors) == tile


def test_pack_panels_pads_the_last_panel_with_zeros() -> None:
    from passc.schedules.packed_dense import pack_panels

    matrix = np.arange(3 * 10, dtype=np.float32).reshape(3, 10) + 1
    packed = pack_panels(matrix, 4)
    assert packed.shape == (3, 3, 4) and packed.flags["C_CONTIGUOUS"]
    for k, n in np.ndindex(matrix.shape):
        assert packed[n // 4, k, n % 4] == matrix[k, n]
    assert not packed[2, :, 2:].any()  # columns 10 and 11 do not exist


@pytest.mark.parametrize(
    ("width", "blocks", "kernel", "spec", "tile"),
    [
        (56, 4, 3, CPUSpec(16, 32), (14, 1)),  # ResNet's first stage: 14 columns × 1 vector
        (7, 32, 3, CPUSpec(16, 32), (7, 2)),  # its last: 7 columns leave room for 2 vectors
        (7, 3, 3, CPUSpec(16, 32), (7, 1)),  # ... unless the channel blocks do not divide by 2
        (40, 8, 3, CPUSpec(8, 16), (8, 1)),  # AVX2's 16 registers: 8 accumulators (2 FMA units × 4 cycles)
        (56, 8, 3, CPUSpec(8, 16), (8, 1)),  # ResNet's first stage on AVX2: 8 × 1, not 4 × 1 (1.7× faster)
        (14, 16, 1, CPUSpec(16, 32), (7, 2)),  # 1×1: 14 FMAs per 9 loads, not per 15 as 14 × 1
        (112, 4, 7, CPUSpec(16, 32), (7, 2)),  # ResNet's 7×7 stem ranks like a 1×1
        (56, 8, 1, CPUSpec(8, 16), (4, 2)),  # AVX2's 1×1: 8 accumulators, 8 FMAs per 6 loads
        (14, 40, 1, CPUSpec(8, 16), (2, 4)),  # 1280 → 320 at 14²: 2 × 4, not 2 × 2 (1.3× faster)
        (7, 64, 1, CPUSpec(8, 16), (7, 1)),  # 7 columns: 7 accumulators, not 1 × 4
        (1, 8, 1, CPUSpec(4, 32), (1, 4)),  # a 1×1 output (a dense layer as conv): 4 vectors
    ],
)
def test_conv_tile(width: int, blocks: int, kernel: int, spec: CPUSpec, tile: tuple[int, int]) -> None:
    from passc.schedules import conv_tile

    assert conv_tile(width, blocks, spec, kernel) == tile


@pytest.mark.parametrize(
    ("width", "blocks", "kernel", "tile"),
    [
        (14, 36, 1, (14, 1)),  # MobileNetV2's 96 → 576 at 14²: the whole row, not 7 × 2
        (7, 60, 1, (7, 2)),  # 160 → 960 at 7²: a row of 7 leaves room for 2 vectors, as ranked
        (56, 4, 3, (14, 1)),  # a 3×3 conv: rows first, as without
        (28, 8, 1, (7, 2)),  # a row of 28 does not fit in 14 accumulators: ranked
    ],
)
def test_conv_tile_of_whole_rows(width: int, blocks: int, kernel: int, tile: tuple[int, int]) -> None:
    from passc.schedules import conv_tile

    assert conv_tile(width, blocks, CPUSpec(16, 32), kernel, whole_rows=True) == tile


@pytest.mark.parametrize(
    ("width", "blocks", "reduction", "whole_rows", "tile"),
    [
        (14, 16, 256, True, (14, 2)),  # PP-LCNet's 256 → 256 at 14²: 28 accumulators
        (14, 6, 576, False, (14, 2)),  # MobileNetV2's 576 → 96: also without whole rows
        (14, 36, 96, True, (14, 1)),  # 96 → 576: too short a reduction
        (14, 3, 256, True, (14, 1)),  # 3 channel blocks: no pair of vectors divides them
        (7, 32, 512, True, (7, 2)),  # a row of 7 is not over half the 14 accumulators: ranked
        (14, 16, 256, False, (14, 2)),
    ],
)
def test_one_by_one_convs_with_long_reductions_take_two_vectors_of_a_whole_row(
    width: int, blocks: int, reduction: int, whole_rows: bool, tile: tuple[int, int]
) -> None:
    from passc.schedules import conv_tile

    spec = CPUSpec(16, 32)
    assert conv_tile(width, blocks, spec, 1, whole_rows=whole_rows, reduction=reduction) == tile
    three = conv_tile(width, blocks, spec, 3, whole_rows=whole_rows, reduction=reduction)
    assert three == conv_tile(width, blocks, spec, 3, whole_rows=whole_rows)  # 3×3: no change


@pytest.mark.parametrize(
    ("channels", "channel_bytes", "chunk"),
    [
        (960, 128, 64),  # MobileNetV2's 960 → 320 at 7²: 120 KB of weights a tile
        (320, 128, 64),  # 320 → 1280: 40 KB
        (576, 128, 64),  # 576 → 160: 72 KB, in 9 chunks
        (160, 128, None),  # 160 → 960: 20 KB stay in a 32 KB L1
        (256, 128, None),  # exactly 32 KB
        (331, 128, None),  # a prime: chunks of one channel are not worth it
    ],
)
def test_weight_chunk(channels: int, channel_bytes: int, chunk: int | None) -> None:
    from passc.schedules.packed_conv import weight_chunk

    assert weight_chunk(channels, channel_bytes, CPUSpec(16, 32)) == chunk


@pytest.mark.parametrize(
    ("channels", "side", "rule", "decision"),
    [
        (320, 7, "PackedConv", [5, 64]),  # 40 KB of weights a tile
        (160, 7, "PackedConv", None),  # 20 KB
        (128, 28, "PointwiseConv", [2, 64]),  # 57 KB of pixels a tile (7 vectors of 16)
        (64, 28, "PointwiseConv", None),  # 28 KB
    ],
)
def test_one_by_one_convs_whose_operands_leave_l1_reduce_in_chunks(
    channels: int, side: int, rule: str, decision
) -> None:
    """A scheduled 1×1 conv to 96 channels splits its reduction into chunks of input channels (a
    tiling decision in its trace) when a tile's weights (a packed conv's, at 7²) or its pixels
    (a pointwise conv's, at 28²) of every input channel would not stay in L1."""
    from passc import schedules

    rng = np.random.default_rng(0)
    model = weighted_model(
        f"(float[1, {channels}, {side}, {side}] x) => (float y)",
        "y = Conv(x, w)",
        w=rng.standard_normal((96, channels, 1, 1)).astype(np.float32),
    )
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    (conv,) = [f for k, f in legalized_kernels(model, target).items() if "conv2d_p" in k]
    with target:
        sch = getattr(schedules, rule)().apply(conv, target, False)
    splits = [[int(v) for v in d] for d in sch.trace.decisions.values()]
    chunks = [split for split in splits if split[0] * split[1] == channels]
    assert chunks == ([decision] if decision else []), splits


def test_untuned_switch_leaves_kernels_unscheduled(tmp_path: Path, monkeypatch) -> None:
    """PASSC_SCHEDULES=0 leaves every kernel as TVM legalized it (no schedule applied); with the
    schedules on, passc's rules schedule them; both compute the same."""
    from passc.targets import get_target

    from passc.backends.cpu import CPUBackend
    from passc.compiler import prepare_model
    from passc.lowering import import_and_transform

    path = _export("separable", tmp_path)
    host, backend = get_target("host"), CPUBackend()
    scheduled_kernels = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("PASSC_SCHEDULES", flag)
        imported = import_and_transform(prepare_model(path, host).loaded.model, host)
        mod, _, _ = backend.schedule(backend.legalize(imported.mod, imported.target), imported.target, [])
        kernels = [f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        scheduled_kernels[flag] = sum(bool(f.attrs and f.attrs.get("tirx.is_scheduled")) for f in kernels)
    assert scheduled_kernels["0"] == 0 and scheduled_kernels["1"] > 0
    untuned = _compile(path, tmp_path / "untuned", monkeypatch, schedules=False)
    inputs = untuned.random_inputs()
    scheduled = _compile(path, tmp_path / "scheduled", monkeypatch, schedules=True)
    a, b = untuned(**inputs), scheduled(**inputs)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("target", "spec"),
    [
        ({"kind": "llvm"}, CPUSpec(lanes=4, registers=16)),
        ({"kind": "llvm", "mcpu": "haswell"}, CPUSpec(lanes=8, registers=16)),
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, CPUSpec(lanes=16, registers=32)),
        ({"kind": "llvm", "mattr": ["+avx512f"]}, CPUSpec(lanes=16, registers=32)),
        ({"kind": "llvm", "mcpu": "emeraldrapids"}, CPUSpec(lanes=16, registers=32)),
        (
            {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"]},
            CPUSpec(lanes=4, registers=32),
        ),
    ],
)
def test_vector_width_comes_from_the_target(target: dict, spec: CPUSpec) -> None:
    assert cpu_spec(tvm.target.Target(target)) == spec


SSE, AVX512 = CPUSpec(lanes=4, registers=16), CPUSpec(lanes=16, registers=32)


@pytest.mark.parametrize(
    ("extents", "spec", "kwargs", "factors"),
    [
        # conv 64→64 at 56×56 on AVX-512: 16 output channels × one vector of 14 columns
        ([1, 64, 56, 56], AVX512, {}, [1, 16, 1, 14]),
        # 7×7 maps on SSE: the whole row in two vectors; 5 channels (divides 1280) × 2 within 12 registers
        ([1, 1280, 7, 7], SSE, {}, [1, 5, 1, 7]),
        # depthwise: channels give no reuse, so rows of the output instead
        ([1, 64, 56, 56], SSE, {"reuse": [True, False, True, True]}, [1, 1, 8, 4]),
        # matrix-vector: no rows, so two vectors of columns for independent accumulators
        ([1, 1000], SSE, {}, [1, 8]),
        # pooling: one vector, nothing to reuse
        ([1, 64, 56, 56], SSE, {"rows": False}, [1, 1, 1, 4]),
    ],
)
def test_register_tile(extents: list[int], spec: CPUSpec, kwargs: dict, factors: list[int]) -> None:
    assert register_tile(extents, spec, **kwargs) == factors
    assert all(e % f == 0 for e, f in zip(extents, factors, strict=True))


def _fp16_matmul(tmp_path: Path) -> Path:
    from onnx import TensorProto

    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float16)
    return matmul_by(weight, "MatMul", 16, TensorProto.FLOAT16, tmp_path / "fp16.onnx")


def test_fp16_kernels_use_full_width_half_precision_fma_on_cortex_a76(tmp_path: Path) -> None:
    """rpi5 has +fullfp16: an fp16 matmul's vectors hold 8 halves, so its FMAs are `fmla vN.8h`."""
    import re
    import shutil

    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("aarch64-linux-gnu-objdump (binutils-aarch64-linux-gnu) is not installed")
    artifact = passc.compile(_fp16_matmul(tmp_path), target="rpi5", output=tmp_path / "art")
    assert re.search(r"\bfmla\s+v\d+\.8h", disassembly(objdump, artifact.path / "model.so"))


def test_fp16_kernels_are_scheduled_at_twice_the_float32_lanes() -> None:
    from passc.schedules.cpu import for_bits

    neon = CPUSpec(lanes=4, registers=32)
    assert for_bits(neon, 16) == CPUSpec(lanes=8, registers=32)
    assert for_bits(neon, 32) == neon
    assert for_bits(neon, 64) == CPUSpec(lanes=2, registers=32)
    assert for_bits(neon, 1) == CPUSpec(lanes=16, registers=32)  # bool: one byte a lane


def test_vector_exp_is_within_two_ulp_of_the_exact_exp() -> None:
    from tvm import te

    from passc.schedules import default_schedule
    from passc.schedules.fast_math import exp32

    x = te.placeholder((1 << 16,), "float32")
    func = te.create_prim_func([x, te.compute(x.shape, lambda i: exp32(x[i]))])
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        scheduled = default_schedule(func, target)
    library = tvm.compile(tvm.IRModule({"main": scheduled.mod["main"]}), target=target)
    values = np.linspace(-87.0, 88.0, 1 << 16, dtype=np.float32)
    result = tvm.runtime.tensor(np.zeros_like(values))
    library["main"](tvm.runtime.tensor(values), result)
    exact = np.exp(values.astype(np.float64))
    assert np.max(np.abs(result.numpy() - exact) / exact) <= 2 * 2.0**-24


def _legalized_unary(op: str, values: np.ndarray) -> np.ndarray:
    """relax.op.`op` of float32 `values`, legalized and scheduled through passc's phases, run."""
    from tvm import relax

    from passc.schedules import legalize_passes, schedule_passes

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(values.shape, "float32"))
    with builder.function("main", [x]):
        builder.emit_func_output(builder.emit(getattr(relax.op, op)(x)))
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = tvm.transform.Sequential(legalize_passes() + schedule_passes(target))(builder.get())
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(values)).numpy()


def test_vector_erf_is_within_4e_7_of_the_exact_erf() -> None:
    """GELU's erf, legalized through passc's legalize phases, against scipy's double-precision erf."""
    import scipy.special

    values = np.linspace(-6.0, 6.0, 1 << 16, dtype=np.float32)
    result = _legalized_unary("erf", values)
    assert np.max(np.abs(result - scipy.special.erf(values.astype(np.float64)))) <= 4e-7


def test_vector_tanh_is_within_6_ulp_of_the_exact_tanh() -> None:
    """An LSTM's tanh, legalized through passc's legalize phases, against numpy's double-precision
    tanh: relative error at most 6 float32 ulp, near 0 as well, and ±1 at ±inf."""
    values = np.concatenate([np.linspace(-12.0, 12.0, (1 << 16) - 4), [1e-6, -1e-30, np.inf, -np.inf]])
    values = values.astype(np.float32)
    result = _legalized_unary("tanh", values)
    exact = np.tanh(values.astype(np.float64))
    finite = np.isfinite(values) & (values != 0)
    assert np.max(np.abs(result - exact)[finite] / np.abs(exact[finite])) <= 6 * 2.0**-24
    assert result[-2:].tolist() == [1.0, -1.0]


@pytest.mark.parametrize(
    ("divisor", "multiplies"),
    [
        (np.float32(6.0), True),
        (np.float32(0.125), True),
        (np.float32(3e38), False),
        (np.full((1, 1), 6.0, np.float32), False),
    ],
)
def test_division_by_a_constant_multiplies_by_its_reciprocal(divisor: np.ndarray, multiplies: bool) -> None:
    """x / 6 becomes x · fl(1/6): no division left in the kernel, within one float32 ulp of the
    correctly rounded quotient (exact for 1/8). A divisor whose reciprocal is subnormal (3e38)
    and a divisor of shape [1, 1], which broadcasts x to two axes, keep TVM's division."""
    from tvm import relax

    from passc.schedules import legalize_passes, schedule_passes

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1 << 12,), "float32"))
    with builder.function("main", [x]):
        builder.emit_func_output(builder.emit(relax.op.divide(x, relax.const(divisor))))
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = tvm.transform.Sequential(legalize_passes() + schedule_passes(target))(builder.get())
    kernels = [f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert [" / " not in k for k in kernels] == [multiplies]
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    values = np.linspace(-1e4, 1e4, 1 << 12, dtype=np.float32)
    result = vm["main"](tvm.runtime.tensor(values)).numpy()
    quotient = values / divisor
    if divisor.size == 1 and divisor == 0.125:
        np.testing.assert_array_equal(result, quotient)
    assert np.all(np.abs(result - quotient) <= np.spacing(np.abs(quotient)))


@pytest.mark.parametrize("op", ["exp", "sigmoid"])
def test_vector_exp_and_sigmoid_never_return_subnormals(op: str) -> None:
    """Far below zero, e^x and sigmoid(x) return 1.6e-38 (e^−87) instead of a subnormal, whose
    arithmetic x86 runs through a microcode assist: an absolute error under 1.7e-38. Elsewhere
    sigmoid is within 4 float32 ulp of the exact one."""
    from tvm import relax

    from passc.schedules import legalize_passes, schedule_passes

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1 << 12,), "float32"))
    with builder.function("main", [x]):
        builder.emit_func_output(builder.emit(getattr(relax.op, op)(x)))
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = tvm.transform.Sequential(legalize_passes() + schedule_passes(target))(builder.get())
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    values = np.linspace(-200.0, 80.0 if op == "exp" else 200.0, 1 << 12, dtype=np.float32)
    result = vm["main"](tvm.runtime.tensor(values)).numpy()
    exact = np.exp(values.astype(np.float64))
    if op == "sigmoid":
        exact = 1.0 / (1.0 + np.exp(-values.astype(np.float64)))
    assert np.all(result >= np.finfo(np.float32).tiny)  # no subnormal, no zero
    tiny = exact < 1.7e-38
    assert np.max(np.abs(result[tiny] - exact[tiny])) <= 1.7e-38
    assert np.max(np.abs(result[~tiny] - exact[~tiny]) / exact[~tiny]) <= 4 * 2.0**-24


@pytest.mark.parametrize(("name", "taken"), [("separable", 1), ("separable-wide", 2)])
def test_wide_and_strided_depthwise_convs_take_the_loop_vectorized_schedule(
    tmp_path: Path, name: str, taken: int
) -> None:
    """separable's stride-1 depthwise conv is 20 columns wide (narrow), its stride-2 one 10: only
    the strided one takes the schedule. separable-wide's are 48 and 24 columns: both take it."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from passc.schedules import WideDepthwise, legalize_passes

    mod = from_onnx(onnx.load(_export(name, tmp_path)), keep_params_in_input=False)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    with target:
        mod = tvm.transform.Sequential(legalize_passes())(mod)
        depthwise = [
            f
            for gv, f in mod.functions_items()
            if "conv2d" in gv.name_hint and not any(k in gv.name_hint for k in ("packed", "pointwise"))
        ]
        assert len(depthwise) == 2  # the stride-1 and the stride-2 depthwise conv
        assert sum(WideDepthwise().apply(f, target, False) is not None for f in depthwise) == taken


def test_stride_1_depthwise_convs_keep_their_output_row_in_vector_registers(tmp_path: Path) -> None:
    """wide-kernels-short's 5×5 conv (96 columns) and 3×3 conv (48) run at stride 1 over rows of
    whole vectors: their schedules vectorize in TIR (the row's accumulators). The stride-2 conv
    (48 columns from 96) is left to LLVM's loop vectorizer."""
    from passc.schedules import WideDepthwise

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    kernels = _legalized("wide-kernels-short", tmp_path, target)
    depthwise = {
        k: f for k, f in kernels.items() if "conv2d" in k and not any(p in k for p in ("packed", "pointwise"))
    }
    assert len(depthwise) == 3, sorted(kernels)
    with target:
        scheduled = [WideDepthwise().apply(f, target, False) for f in depthwise.values()]
    assert all(s is not None for s in scheduled)
    assert sorted("T.vectorized" in s.mod.script() for s in scheduled) == [False, True, True]


def _rows_of_first_threads(script: str, block: str) -> set[int]:
    """The output rows that the first half of a kernel's parallel loop writes in `block` (inner
    loops at 0): what thread 0 of 2 computes. Read off the TVMScript of the scheduled kernel."""
    import re

    start = script.index(f'T.sblock("{block}")')
    loops = re.findall(r"for (\w+) in T\.parallel\(T\.int64\((\d+)\)\)", script[:start])
    parallel, extent = loops[-1]  # the one around the block
    binding = re.search(r"v_y = T\.axis\.spatial\(T\.int64\(\d+\), (.*)\)\n", script[start:]).group(1)
    names = set(re.findall(r"[A-Za-z_]\w*", binding)) - {"T", "int64"}
    scope = {"T": type("T", (), {"int64": int}), **dict.fromkeys(names, 0)}
    return {eval(binding, {**scope, parallel: i}) for i in range(int(extent) // 2)}


def test_packed_convs_over_maps_larger_than_their_weights_run_bands_of_rows_in_parallel() -> None:
    """A 3×3 conv whose input is larger than its weights cuts its rows into bands first, so the
    first of 2 threads computes the top half of both blocks of 16 output channels (the rows the
    previous kernel's first thread wrote), not all rows of the first block; a conv with more
    weights than input keeps its channel blocks outermost (the first 2 of 4 blocks, all rows)."""
    from passc.schedules import PackedConv

    rng = np.random.default_rng(0)
    model = weighted_model(
        "(float[1, 16, 32, 32] x) => (float y)",
        "h = Conv<pads = [1, 1, 1, 1]>(x, w) p = MaxPool<kernel_shape = [4, 4], strides = [4, 4]>(h) "
        "y = Conv<pads = [1, 1, 1, 1]>(p, w2)",
        w=rng.standard_normal((32, 16, 3, 3)).astype(np.float32),  # 4608 weights, 18496 inputs (padded)
        w2=rng.standard_normal((64, 32, 3, 3)).astype(np.float32),  # 18432 weights, 3200 inputs
    )
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    kernels = legalized_kernels(model, target)
    convs = {k: f for k, f in kernels.items() if "conv2d_packed" in k}
    assert len(convs) == 2, sorted(kernels)
    with target:
        scripts = {k: PackedConv().apply(f, target, False).mod.script() for k, f in convs.items()}
    first = {k: _rows_of_first_threads(s, "conv2d_nchw_packed_update") for k, s in scripts.items()}
    assert sorted(first.values(), key=len) == [set(range(8)), set(range(16))]  # 8×8: all; 32×32: the top half


@pytest.mark.parametrize(
    ("plane", "channels", "spec", "tile"),
    [
        ((56, 56), 144, CPUSpec(16, 32), (16, 7, 3)),  # 2 rows of 56: 7 vectors × 3 channels
        ((112, 112), 96, CPUSpec(16, 32), (16, 7, 3)),  # one row of 112
        ((40, 40), 64, CPUSpec(16, 32), (16, 5, 4)),  # 2 rows of 40: 5 vectors × 4 channels
        ((14, 14), 576, CPUSpec(16, 32), None),  # 196 pixels: no whole number of 8 or 16 lanes
        ((14, 14), 320, CPUSpec(8, 16), None),  # nor of 8: half vectors of 4 lose to the packed conv
        # AVX2's 16 registers: 7 vectors × 1 channel, not 12 channels × 1 vector (1.5–2× slower)
        ((56, 56), 24, CPUSpec(8, 16), (8, 7, 1)),
        ((64, 64), 24, CPUSpec(8, 16), (8, 2, 6)),  # 16 pixels × 6 channels beats 8 × 12
    ],
)
def test_pointwise_tile(plane: tuple[int, int], channels: int, spec: CPUSpec, tile: tuple | None) -> None:
    from passc.schedules import pointwise_tile

    assert pointwise_tile(*plane, channels, spec) == tile


def _legalized(name: str, tmp_path: Path, target: object) -> dict[str, object]:
    return legalized_kernels(_export(name, tmp_path), target)


@pytest.mark.parametrize(
    ("name", "fragment", "rule", "count"),
    [
        ("separable-wide", "conv2d_pointwise", "PointwiseConv", 2),  # 1×1 convs over 48×48 planes
        ("box-softmax", "softmax", "AxisReduction", 1),  # a softmax over axis 1 of 4
        ("pools-wide", "pool", "WideDepthwise", 2),  # a max and an average pool, 50 and 25 wide
        ("wide-kernels", "depthwise_conv2d_packed", "PackedDepthwise", 2),  # 5×5; not the 3×3
        ("upsample", "conv2d_transpose_packed", "PackedConv", 2),  # kernel = stride; not the padded one
        ("attention", "dense_packed", "PackedDense", 4),  # qkv, projection, MLP: rows of 2 × 12 tokens
        ("attention-13", "dense_packed", "PackedDense", 4),  # 13 rows, padded to 15
        ("attention-41", "softmax", "RowReduction", 1),  # over 41 keys
        ("attention-41", "layer_norm", "RowReduction", 1),  # over 32 channels
    ],
)
def test_kernels_take_their_rule(tmp_path: Path, name: str, fragment: str, rule: str, count: int) -> None:
    from passc import schedules

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    kernels = _legalized(name, tmp_path, target)
    chosen = [f for kernel, f in kernels.items() if fragment in kernel]
    assert len(chosen) == count, sorted(kernels)
    with target:
        assert all(getattr(schedules, rule)().apply(f, target, False) is not None for f in chosen)


def test_only_contraction_takes_a_plain_matmul() -> None:
    """TVM's own matmul (no block of passc's legalizations) is `Contraction`'s: each rule tied to
    a legalization by its block name declines it, and so do the rules for other shapes."""
    from tvm import te

    from passc import schedules

    a, b = te.placeholder((32, 64), name="a"), te.placeholder((64, 48), name="b")
    k = te.reduce_axis((0, 64), "k")
    y = te.compute((32, 48), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="matmul")
    func = te.create_prim_func([a, b, y])
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    with target:
        taken = [r for r in schedules.default_rules()[:-1] if r.apply(func, target, False) is not None]
    assert [type(r).__name__ for r in taken] == ["Contraction"]


def _vectorized_by_elementwise(tensors: list) -> list[int]:
    """The extents of the vectorized loops of block "y" (the TE compute of `tensors`), scheduled
    by `Elementwise` for AVX-512 (16 lanes)."""
    from tvm import te

    from passc.schedules import Elementwise

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    with target:
        sch = Elementwise(CPUSpec(16, 32)).apply(te.create_prim_func(tensors), target, False)
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("y"))]
    return [int(loop.extent) for loop in loops if loop.kind == tvm.tirx.ForKind.VECTORIZED]


@pytest.mark.parametrize(
    ("width", "index", "vector"),
    [
        (40, lambda c, w: (c + 8, w), 8),  # a channel split: a vector of the row's largest 2^k
        (56, lambda c, w: (c, w + 1), 8),  # a shifted copy (a pad's)
        (28, lambda c, w: (c, w), 4),
        (10, lambda c, w: (c, w), 2),
        (7, lambda c, w: (c, w), None),  # no even divisor: LLVM's
        (40, lambda c, w: (c, w // 2), None),  # an upsample's x // 2 would gather: LLVM's
        (40, lambda c, w: (w, c), None),  # a transpose: the row is not contiguous in the input
        (2100, lambda c, w: (c, w), None),  # a long row: LLVM's loop vectorizer does well
    ],
)
def test_short_rows_take_vectors_that_divide_them(width: int, index, vector: int | None) -> None:
    """A copy of 16 rows of `width` columns."""
    from tvm import te

    source = te.placeholder((2 * width + 16, 2 * width + 16), name="x")
    copy = te.compute((16, width), lambda c, w: source[index(c, w)], name="y")
    assert _vectorized_by_elementwise([source, copy]) == ([vector] if vector else [])


def test_short_rows_scaled_by_a_scalar_take_vectors() -> None:
    """A scalar operand (a 0-d buffer) has no axis to step along: the row still takes vectors."""
    from tvm import te

    source, scale = te.placeholder((16, 40), name="x"), te.placeholder((), name="s")
    scaled = te.compute((16, 40), lambda c, w: source[c, w] * scale[()], name="y")
    assert _vectorized_by_elementwise([source, scale, scaled]) == [8]


def test_means_over_trailing_axes_sum_in_vector_partials(tmp_path: Path) -> None:
    """TrailingSum takes the squeeze-excite mean and the final pool (576 = 36 × 16 values each, the
    second with the residual add as epilogue), not the mean over a 7×7 corner (49 values)."""
    from passc import schedules

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    kernels = _legalized("squeeze-excite", tmp_path, target)
    with target:
        taken = {
            name: schedules.TrailingSum().apply(f, target, False) is not None
            for name, f in kernels.items()
            if "mean" in name
        }
    assert sorted(taken.values()) == [False, True, True], taken
    assert not taken["mean2"]


def test_an_epilogue_operand_computed_before_the_reduction_keeps_the_packed_rule(tmp_path: Path) -> None:
    """MetaFormer's residual, res_scale · x + mlp(x), with the scale computed first: the multiply
    feeds only the epilogue, so it is inlined there and the packed rules still take the kernel (the
    fallback recomputed the row tiles for every output element: 22× slower in caformer_s18)."""
    import onnx_ir as ir

    from passc import schedules

    rng = np.random.default_rng(0)
    model = weighted_model(
        "(float[1, 400, 16] x, float[1, 16, 20, 20] m) => (float t, float u)",
        """s = Mul(x, token_scale)
           h = Softmax(x)
           d = MatMul(h, w)
           t = Add(s, d)
           sm = Mul(m, map_scale)
           g = Softmax<axis = 1>(m)
           c = Conv(g, wc)
           u = Add(sm, c)""",
        token_scale=rng.uniform(0.5, 1.5, 16).astype(np.float32),
        w=rng.standard_normal((16, 16)).astype(np.float32),
        map_scale=rng.uniform(0.5, 1.5, (16, 1, 1)).astype(np.float32),
        wc=rng.standard_normal((16, 16, 1, 1)).astype(np.float32),
    )
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    kernels = legalized_kernels(model, target)
    for fragment, rule in (
        ("dense_packed", schedules.PackedDense),
        ("conv2d_pointwise", schedules.PointwiseConv),
    ):
        (name,) = [k for k in kernels if fragment in k]
        assert name.startswith("fused_multiply"), name  # the scale is the kernel's first block
        with target:
            assert rule().apply(kernels[name], target, False) is not None, name
    path = tmp_path / "scaled.onnx"
    ir.save(model, path)
    inputs = oracle.random_inputs(oracle.input_specs(model))
    got = passc.compile(path, target="host", output=tmp_path / "art").run(inputs)
    for error in oracle.compare(got, oracle.run_onnxruntime(model, inputs)):
        assert error.max_rel < 1e-5, error


def test_a_schedule_that_recomputes_a_block_is_declined() -> None:
    """dlight's Reduction rule, given the packed dense of a residual whose scale it cannot place,
    packs the row tiles again for every output element; the guard counts block runs from the
    TIR and declines it, so that kernel falls to the next rule instead of shipping a cliff."""
    from tvm.s_tir import dlight

    from passc import schedules
    from passc.schedules.rules import default_rules
    from passc.schedules.work import block_runs, recomputed

    rng = np.random.default_rng(0)
    model = weighted_model(
        "(float[1, 400, 16] x) => (float t)",
        """s = Mul(x, scale)
           h = Softmax(x)
           d = MatMul(h, w)
           t = Add(s, d)""",
        scale=rng.uniform(0.5, 1.5, 16).astype(np.float32),
        w=rng.standard_normal((16, 16)).astype(np.float32),
    )
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    (func,) = [f for k, f in legalized_kernels(model, target).items() if "dense_packed" in k]
    with target:
        raw = dlight.cpu.Reduction().apply(func, target, False)
        assert raw is not None
        repacked = recomputed(func, raw.mod["main"])
        assert repacked.get("block dense_rows_packed", 0) > 10, repacked
        assert default_rules()[-1].apply(func, target, False) is None  # the same rule, guarded
        packed = schedules.PackedDense().apply(func, target, False)
    assert packed is not None and not recomputed(func, packed.mod["main"])
    assert block_runs(packed.mod["main"])["dense_packed"] == block_runs(func)["dense_packed"]


def test_an_upsample_row_is_left_to_llvm_and_a_concat_row_is_vectorized() -> None:
    """A nearest ×2 upsample (as torch exports nn.Upsample) reads its row at x // 2: TIR's
    vectors would gather lane by lane (3× slower than the plain loops in PP-OCR's detector), so
    its row is left to LLVM; a concat reads along its row one element per lane and keeps TIR's
    vectors."""
    from passc import schedules

    model = weighted_model(
        "(float[1, 8, 16, 32] x) => (float y, float z)",
        """s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
           y = Resize<mode = "nearest", coordinate_transformation_mode = "asymmetric",
                      nearest_mode = "floor">(x, , s)
           z = Concat<axis = 1>(x, x)""",
    )
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    kernels = legalized_kernels(model, target)
    scripts = {}
    for fragment in ("resize", "concatenate"):
        (name,) = [k for k in kernels if fragment in k]
        with target:
            scripts[fragment] = schedules.Elementwise().apply(kernels[name], target, False).mod.script()
    assert "T.vectorized" not in scripts["resize"]
    assert "T.vectorized(T.int64(8))" in scripts["concatenate"]
