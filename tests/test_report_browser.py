"""Reports opened in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
loads each page with the network off; no console error, page error or failed request; a
screenshot; the page's own text shows the manifest's numbers; sorting a table works.

Set PASSC_REPORT_SCREENSHOTS=DIR to keep the screenshots (docs/ holds two of them).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE
from onnx import helper, numpy_helper

from passc.artifact import Artifact
from passc.compiler import compile_model
from passc.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not HAVE_PLAYWRIGHT,
    reason="needs Debian's chromium and the playwright package (scripts/setup.sh --dev installs both)",
)
# As the machine's probe runs it: no sandbox (root in CI), and no background connections to Google.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


class Opened:
    """A report loaded in the browser: its page, and what went wrong while loading."""

    def __init__(self, browser, path: Path, screenshot: Path) -> None:
        self.context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")
        self.page.screenshot(path=str(screenshot), full_page=False)

    def text(self, selector: str = "body") -> str:
        return " ".join(self.page.inner_text(selector).split())

    def close(self) -> None:
        self.context.close()


def screenshot_path(tmp_path: Path, name: str) -> Path:
    keep = os.environ.get("PASSC_REPORT_SCREENSHOTS")
    directory = Path(keep) if keep else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.png"


def check_page(browser, report: Path, artifact: Path, tmp_path: Path, name: str) -> Opened:
    """Opens the report; asserts a clean load, a screenshot, and the manifest's key numbers."""
    shot = screenshot_path(tmp_path, name)
    opened = Opened(browser, report, shot)
    assert opened.problems == []
    assert opened.requests == [report.resolve().as_uri()]  # the page fetched nothing else
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
    info = Artifact(artifact).info
    summary = opened.text("#summary")
    assert f"kernels {info.kernels:,}" in summary
    assert f"weights compiled into model.so (bytes) {info.constant_bytes:,}" in summary
    assert f"runtime parameters in params.bin (bytes) {info.params_bytes:,}" in summary
    for function in info.functions.values():
        for tensor in (*function.inputs, *function.outputs):
            assert f"{tensor.name}: {tensor.dtype} {'×'.join(map(str, tensor.shape))}" in summary
    pipeline = opened.text("#pass-pipeline")
    for function in info.functions.values():
        for record in function.passes:
            a = record["after"]
            assert f"{a['nodes']:,}" in pipeline and f"{a['macs']:,}" in pipeline
    return opened


def sorted_by_click(opened: Opened, section: str, column: str) -> tuple[list[float], list[float]]:
    """A sortable table's column values before and after clicking its header."""
    table = opened.page.locator(f"#{section} table.sortable").last
    index = table.locator("th").all_inner_texts().index(column)

    def values() -> list[float]:
        cells = table.locator(f"tbody tr td:nth-child({index + 1})")
        return [float(c.get_attribute("data-v")) for c in cells.all() if c.get_attribute("data-v")]

    before = values()
    table.locator("th").nth(index).click()
    return before, values()


def test_host_report_in_chromium(browser, tmp_path: Path) -> None:
    out = tmp_path / "cnn.host"
    compiled = compile_model(EXAMPLE, "host", out, input_shapes={"input": (1, 3, 64, 64)}, explain=True)
    report = write_report(compiled.artifact, compiled=compiled)
    opened = check_page(browser, report, out, tmp_path, "report-cnn-host")
    before, after = sorted_by_click(opened, "where-the-time-goes", "ms")
    assert len(after) == len(before) > 3 and after == sorted(before, reverse=True)
    opened.page.locator("summary", has_text="fuse:").click()  # the near-miss table unfolds
    assert opened.page.locator("#pass-pipeline details[open] table").count() == 1
    opened.close()


def _mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i, (n, m) in enumerate([(64, 256), (256, 256), (256, 10)]):
        weights.append(
            numpy_helper.from_array((rng.standard_normal((n, m)) / np.sqrt(n)).astype(np.float32), f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"layer{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"]))
        x = f"a{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)], weights,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_assign_bits_report_in_chromium(browser, tmp_path: Path) -> None:
    out = tmp_path / "mlp.q"
    options = {"widths": "2,4,8,32", "budget": "avg-bits=6", "keep_first": "false", "frontier": "true"}
    compiled = compile_model(
        _mlp(tmp_path / "mlp.onnx"), "host", out, passes=["canonicalize", "assign-bits"],
        pass_options={"assign-bits": options},
    )  # fmt: skip
    report = write_report(compiled.artifact, compiled=compiled, rounds=2)
    opened = check_page(browser, report, out, tmp_path, "report-assign-bits")
    section = opened.text("#bit-widths-assign-bits")
    assert "Budget avg-bits=6" in section and "layer2 float32" in section  # keep_last
    widths = compiled.artifact.manifest["functions"]["main"]["passes"][-1]["fired"]
    assert widths and all(f"{n} {label}" in section for label, n in widths.items())
    assert opened.page.locator("#bit-widths-assign-bits svg").count() == 1  # the frontier
    opened.close()


def test_multi_function_and_cross_target_reports_in_chromium(browser, tmp_path: Path) -> None:
    out = tmp_path / "two.rpi5"
    compiled = compile_model(
        {"main": EXAMPLE, "b4": EXAMPLE}, "rpi5", out,
        input_shapes={"main": {"input": (1, 3, 64, 64)}, "b4": {"input": (4, 3, 64, 64)}}, bundle=True,
    )  # fmt: skip
    report = write_report(compiled.artifact, compiled=compiled)
    opened = check_page(browser, report, out, tmp_path, "report-two-functions-rpi5")
    assert "function b4" in opened.text("#pass-pipeline")
    bundled = [p for p in out.iterdir() if p.name == "passc-run" or p.name.startswith("libtvm")]
    runtime = sum(p.stat().st_size for p in bundled)
    assert runtime > 0 and f"bundled runtime (bytes) {runtime:,}" in opened.text("#summary")
    assert "estimated ms at peak" in opened.text("#where-the-time-goes")
    opened.close()


def _bench_suite():
    """bench/models.py's `suite`, loaded by path (bench/ is not a package)."""
    path = Path(__file__).parent.parent / "bench" / "models.py"
    spec = importlib.util.spec_from_file_location("bench_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_models"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_suite_reports_in_chromium(browser, tmp_path: Path) -> None:
    """Every model of the benchmark suite: compiled for the host, reported, opened; each page
    under a few MB."""
    models = _bench_suite()
    cache = Path(os.environ.get("PASSC_BENCH_CACHE", tmp_path / "models"))
    for name, model in models.suite(cache).items():
        out = tmp_path / f"{name}.host"
        compiled = compile_model(model.path, "host", out, input_shapes=model.input_shapes, explain=True)
        report = write_report(compiled.artifact, compiled=compiled, rounds=2)
        assert report.stat().st_size < 3_000_000, name
        check_page(browser, report, out, tmp_path, f"suite-{name}").close()
