"""Real pretrained models from PyPI wheels: PaddleOCR's text-direction classifier (a
MobileNetV3, opset 11, dynamic batch/height/width) and text detector, shipped inside
rapidocr-onnxruntime 1.4.4, whose exported graphs compute Reshape targets with Shape/Slice/Concat
that must fold away; and Silero VAD (silero-vad 6.2.3), an LSTM behind If nodes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PACKAGE = "rapidocr_onnxruntime"  # pip install --no-deps rapidocr-onnxruntime==1.4.4 (scripts/setup.sh --dev)
SHAPE = ["--input-shape", "x:1x3x48x192"]


def _model(name: str) -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds the files without importing the package
    assert spec is not None, "rapidocr-onnxruntime is not installed: run scripts/setup.sh --dev"
    return Path(spec.submodule_search_locations[0]) / "models" / name


CLASSIFIER = "ch_ppocr_mobile_v2.0_cls_infer.onnx"


@pytest.mark.parametrize("target", ["host", "rpi5"])
def test_paddleocr_classifier_verifies(run_cli, tmp_path: Path, target: str) -> None:
    emulate = ["--emulate"] if target != "host" else []
    status, stdout, err = run_cli(
        "verify", _model(CLASSIFIER), "--target", target, *emulate, *SHAPE, "-o", tmp_path / "art"
    )
    assert status == 0, err + stdout
    assert stdout.strip().endswith("verified")
    assert "pass canonicalize: modified" in err


def test_paddleocr_detector_verifies_on_host(run_cli, tmp_path: Path) -> None:
    status, stdout, err = run_cli(
        "verify", _model("ch_PP-OCRv4_det_infer.onnx"), "--target", "host",
        "--input-shape", "x:1x3x256x256", "-q",
    )  # fmt: skip
    assert status == 0, err + stdout
    assert stdout.strip().endswith("verified")


@pytest.mark.parametrize("target", ["host", "rpi5"])
def test_silero_vad_verifies(run_cli, tmp_path: Path, target: str) -> None:
    """Its If nodes fold once shapes are bound and its LSTM expands; on rpi5 the bundled runner
    runs it under qemu."""
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None, "silero-vad is not installed: run scripts/setup.sh --dev"
    model = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad_16k_op15.onnx"
    emulate = ["--emulate"] if target != "host" else []
    status, stdout, err = run_cli(
        "verify", model, "--target", target, *emulate, "--input-shape", "input:1x512",
        "--input-shape", "state:2x1x128", "-o", tmp_path / "art",
    )  # fmt: skip
    assert status == 0, err + stdout
    assert stdout.strip().endswith("verified")
    assert "pass expand-recurrent: modified" in err and "LSTM x1" in err
