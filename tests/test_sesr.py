"""The SESR example (examples/sesr): its expanded training-time graph collapses exactly, ~23× fewer MACs."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import onnx_ir as ir
import pytest
from passc.passes.canonicalize import Canonicalize
from passc.passes.fold_linear_blocks import FoldLinearBlocks

from passc import oracle
from passc.loading import bind_input_shapes, load_model
from passc.stats import model_stats

EXAMPLE = Path(__file__).parent.parent / "examples" / "sesr" / "sesr.py"


@pytest.fixture(scope="session")
def sesr(tmp_path_factory):
    """export(variant, scale) → path of the SESR ONNX export (made once per variant)."""
    pytest.importorskip("torch", reason="torch is the 'torch' extra")
    spec = importlib.util.spec_from_file_location("sesr_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("sesr")
    made: dict[tuple[str, int], Path] = {}

    def export(variant: str, scale: int) -> Path:
        if (variant, scale) not in made:
            made[variant, scale] = module.export(variant, scale, out / f"sesr_{variant}_x{scale}.onnx")
        return made[variant, scale]

    return export


def expected_macs_per_pixel(m: int, scale: int, hidden: int = 256, f: int = 16) -> tuple[int, int]:
    """MACs per input pixel of SESR-M<m>, expanded and collapsed, from the paper's architecture."""
    out = scale * scale
    expanded = (
        (25 * hidden + hidden * f) + m * (9 * f * hidden + hidden * f) + (25 * f * hidden + hidden * out)
    )
    collapsed = 25 * f + m * 9 * f * f + 25 * f * out
    return expanded, collapsed


def fold(path: Path, height: int, width: int) -> tuple[ir.Model, int, int, list[oracle.OutputError]]:
    """Binds the input shape, canonicalizes, folds; returns (model, MACs before, after, errors)."""
    model = load_model(path).model
    bind_input_shapes(model, {"x": (1, 1, height, width)})
    Canonicalize()(model)
    inputs = oracle.random_inputs(oracle.input_specs(model))
    expected = oracle.run_onnxruntime(model, inputs)
    before = model_stats(model).macs
    assert FoldLinearBlocks()(model).modified
    errors = oracle.compare(oracle.run_onnxruntime(model, inputs), expected)
    return model, before, model_stats(model).macs, errors


@pytest.mark.parametrize(("variant", "scale"), [("m5", 2), ("m3", 4)])
def test_sesr_collapses_exactly(sesr, variant: str, scale: int) -> None:
    model, before, after, errors = fold(sesr(variant, scale), 48, 40)
    m = int(variant[1:])

    assert all(e.max_rel <= oracle.FLOAT_ROUNDING for e in errors), errors
    expanded, collapsed = expected_macs_per_pixel(m, scale)
    assert (before, after) == (expanded * 48 * 40, collapsed * 48 * 40)
    convs = [n.inputs[1].shape for n in model.graph if n.op_type == "Conv"]
    assert convs == [ir.Shape([16, 1, 5, 5])] + [ir.Shape([16, 16, 3, 3])] * m + [
        ir.Shape([scale**2, 16, 5, 5])
    ]
    assert Counter(n.op_type for n in model.graph)["Add"] == 2  # the long and the input residual stay
    assert not FoldLinearBlocks()(model).modified


def test_sesr_m5_x2_mac_ratio_meets_the_paper(sesr) -> None:
    _, before, after, _ = fold(sesr("m5", 2), 16, 16)
    assert before / after >= 20  # the paper: 41.77 B / 1.84 B ≈ 22.7; this graph: 318720 / 13520 ≈ 23.6


def test_sesr_compiles_folded_for_the_host(sesr, run_cli, tmp_path) -> None:
    code, out, err = run_cli(
        "verify", sesr("m5", 2), "--target", "host", "--input-shape", "x:1x1x32x48", "-o", tmp_path / "a"
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    fold_record = next(
        p for p in manifest["functions"]["main"]["passes"] if p["pass"] == "fold-linear-blocks"
    )
    assert fold_record["fired"] == {"conv-conv": 7, "conv-plus-identity": 5}
    assert fold_record["before"]["macs"] / fold_record["after"]["macs"] > 20


@pytest.mark.slow
def test_sesr_m5_x2_at_1080p_collapses_exactly(sesr) -> None:
    _, before, after, errors = fold(sesr("m5", 2), 1080, 1920)
    assert all(e.max_rel <= oracle.FLOAT_ROUNDING for e in errors), errors
    assert (before, after) == tuple(n * 1080 * 1920 for n in expected_macs_per_pixel(5, 2))


@pytest.mark.slow
def test_sesr_runs_folded_on_rpi5_under_emulation(sesr, run_cli, tmp_path) -> None:
    code, out, err = run_cli(
        "verify",
        sesr("m5", 4),
        "--target",
        "rpi5",
        "--emulate",
        "--input-shape",
        "x:1x1x24x32",
        "-o",
        tmp_path / "a",
    )
    assert code == 0, err
    assert "verified" in out
