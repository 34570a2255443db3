"""`passc report`: the page is self-contained, has its sections, and its numbers are the manifest's."""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
from pathlib import Path

import pytest
from conftest import EXAMPLE

from passc.artifact import Artifact
from passc.cli import main as cli_main
from passc.report import Num, Section, Table, Text, default_report_path
from passc.report.kernels import family
from passc.report.page import render_page

SHAPE = ["--input-shape", "input:1x3x64x64"]


def page_text(path: Path) -> str:
    """The page's visible text, roughly: tags, styles and scripts removed, entities decoded."""
    text = path.read_text()
    text = re.sub(r"<(style|script)>.*?</\1>", " ", text, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def external_references(text: str) -> list[str]:
    """Every src/href that would make the browser fetch something (anything but an anchor)."""
    return [m for m in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) if not m.startswith("#")]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[Path, Path]:
    """The example compiled for the host with --report: (artifact, report)."""
    out = tmp_path_factory.mktemp("report") / "cnn.host"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        status = cli_main(["compile", str(EXAMPLE), "--target", "host", *SHAPE, "-o", str(out), "--report"])
    assert status == 0
    stdout = printed.getvalue()
    report = default_report_path(out)
    assert stdout.split()[-1] == str(report)
    return out, report


def test_compile_report_is_beside_the_artifact_and_self_contained(compiled) -> None:
    artifact, report = compiled
    assert report == artifact.with_name("cnn.host.report.html") and report.is_file()
    assert not (artifact / report.name).exists()  # the artifact's own files stay a function of its inputs
    text = report.read_text()
    assert external_references(text) == []
    assert "<link" not in text and "@import" not in text and not re.search(r"url\((?!#)", text)
    for section in (
        "summary",
        "verification",
        "pass-pipeline",
        "where-the-time-goes",
        "files",
        "optimised-graph",
    ):
        assert f'<section id="{section}">' in text
    assert text.count("<svg") >= 2  # the waterfall and the op-family chart, inline


def test_report_numbers_are_the_manifests(compiled) -> None:
    artifact, report = compiled
    manifest = json.loads((artifact / "manifest.json").read_text())
    text = page_text(report)
    assert f"kernels {manifest['kernels']:,}" in " ".join(text.split())
    assert f"weights compiled into model.so (bytes) {manifest['weights']['constant_bytes']:,}" in " ".join(
        text.split()
    )
    words = " ".join(text.split())
    for record in manifest["functions"]["main"]["passes"]:
        b, a = record["before"], record["after"]
        row = f"{record['pass']} {'yes' if record['modified'] else 'no'}"
        assert row in words
        assert (
            f"{b['nodes']:,} {a['nodes']:,} {b['params']:,} {a['params']:,} {b['macs']:,} {a['macs']:,}"
            in words
        )
    for name, flops in manifest["kernel_flops"].items():
        if flops:
            assert re.search(rf"{re.escape(name)} \S+ [\d.]+ [\d.]+% {flops:,} ", words), name


def test_report_times_every_kernel_on_the_host(compiled) -> None:
    artifact, report = compiled
    text = " ".join(page_text(report).split())
    assert "timed inside whole runs on this machine" in text
    manifest = Artifact(artifact).info
    timed = [k for k in manifest.kernel_flops if re.search(rf"\b{re.escape(k)} \S+ [\d.]+ ", text)]
    assert timed, "no kernel row with a time"
    assert "fuse: 1 rewrites" in text  # --report turns on the rules' explanations


def test_report_command_without_measuring(compiled, run_cli, tmp_path: Path) -> None:
    artifact, _ = compiled
    out = tmp_path / "r.html"
    status, stdout, _ = run_cli("report", str(artifact), "-o", str(out), "--no-measure")
    assert status == 0 and stdout.strip() == str(out)
    text = " ".join(page_text(out).split())
    assert "Not timed: measurement was switched off" in text
    assert "compile … --report` shows them" in text  # no live pass times after the fact


def test_report_of_a_cross_target_estimates_from_the_target_peak(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "cnn.rpi5"
    status, _, _ = run_cli("compile", str(EXAMPLE), "--target", "rpi5", *SHAPE, "-o", str(out))
    assert status == 0
    status, stdout, _ = run_cli("report", str(out))
    assert status == 0
    text = " ".join(page_text(Path(stdout.strip())).split())
    assert "Not timed: rpi5 binaries do not run on this machine" in text
    assert "estimated ms at peak" in text and "38.4" in text
    manifest = Artifact(out).info
    name, flops = max(manifest.kernel_flops.items(), key=lambda kv: kv[1])
    estimate = flops / (38.4e9 * 4) * 1e3  # at the rpi5 file's peak, 4 threads
    assert f"{name} conv {flops:,} {estimate:.3f}" in text


def test_report_refuses_a_directory_and_a_non_artifact(compiled, run_cli, tmp_path: Path) -> None:
    artifact, _ = compiled
    status, _, err = run_cli("report", str(artifact), "-o", str(tmp_path))
    assert status == 2 and "a directory is there" in err
    status, _, err = run_cli("report", str(tmp_path))
    assert status == 2 and "not a passc artifact" in err


def test_inspect_prints_output_shapes_and_dtypes(run_cli) -> None:
    status, stdout, _ = run_cli("inspect", str(EXAMPLE), *SHAPE)
    assert status == 0 and "output probs: float32 [1, 10]" in stdout
    status, stdout, _ = run_cli("inspect", str(EXAMPLE), "--json")
    assert json.loads(stdout)["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ["batch", 10]}]


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("fused_conv2d_add_relu", "conv"),
        ("fused_multiply5_dense_packed3_add6", "matmul"),
        ("fused_batch_norm_relu", "norm"),
        ("fused_reshape_transpose", "data movement"),
        ("fused_left_shift1_right_shift1_reshape2_cast1_subtract1", "elementwise"),
        ("vm.builtin.alloc_tensor", "runtime (VM)"),
        ("fused_sum1_divide", "reduce"),
    ],
)
def test_kernel_families(kernel: str, expected: str) -> None:
    assert family(kernel) == expected


def test_page_escapes_text_and_sorts_numbers_by_value() -> None:
    page = render_page(
        "<t>",
        "a & b",
        [
            Section(
                "Über <x>",
                [Text("<script>alert(1)</script>"), Table(["n"], [[Num(1500.0, "1.5 k")], [12]], True)],
            )
        ],
    )
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert '<td class="num" data-v="1500.0">1.5 k</td>' in page and 'data-v="12">12</td>' in page
    assert '<section id="ber-x">' in page or '<section id="über-x">' in page


def test_verify_report_shows_each_outputs_error(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    status, stdout, _ = run_cli("verify", str(EXAMPLE), "--target", "host", *SHAPE, "--report")
    assert status == 0
    report = Path(stdout.split()[-1])
    assert report == Path("build/model.host.report.html") and report.is_file()  # no -o: the artifact is gone
    text = " ".join(page_text(report).split())
    error = re.search(r"probs: max abs err (\S+), max rel err (\S+) \(.*\)\s+ok", stdout)
    assert error is not None
    assert "verified; tolerance: max relative error 0.0001" in text
    row = re.search(r"main probs (\S+) (\S+) (\S+) ok", text)
    assert row is not None and float(row.group(2)) == pytest.approx(float(error.group(2)), rel=0.01)


def test_report_measures_each_tuned_kernels_gain_in_the_model(tmp_path: Path) -> None:
    """Records that claim 1 ns but hold TVM's naive loops (a search's winner measured wrong): the
    artifact takes them, and the report, timing it against the default schedules, shows the loss."""
    from conftest import conv_with_naive_records

    from passc.compiler import compile_model
    from passc.report import write_report

    model, records = conv_with_naive_records(tmp_path)
    compiled = compile_model(model, "host", tmp_path / "art", records=[records])
    [tuned] = compiled.artifact.info.tuned
    report = write_report(compiled.artifact, rounds=3)
    text = " ".join(page_text(report).split())
    assert "1 of 1 kernels took their schedule from `passc tune`'s records" in text
    gain = re.search(rf"{re.escape(tuned)} [\d.]+ ([\d.]+)×", text)
    assert gain is not None and float(gain.group(1)) < 0.5, text[text.index("Tuning records") :]


def test_report_times_a_model_with_a_scalar_input(tmp_path: Path) -> None:
    """A 0-d input (Silero VAD's sample rate) reaches the timed runs as a 0-d tensor."""
    import onnx
    from onnx import helper

    from passc.compiler import compile_model
    from passc.report import write_report

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "scaled",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 8]),
            helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 8])],
    )
    path = tmp_path / "scaled.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    compiled = compile_model(path, "host", tmp_path / "a")
    text = " ".join(page_text(write_report(compiled.artifact, rounds=2)).split())
    assert "timed inside whole runs on this machine" in text, text[text.index("Where the time goes") :][:300]
