"""The report's sections, each from the artifact (its manifest and optimised models) and, where
given, what the compile and verify runs still hold (pass wall times, rules' near misses,
output errors)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import onnx_ir as ir

from passc import oracle
from passc.artifact import MANIFEST, PARAMS, Artifact, optimized_model_name
from passc.report import charts
from passc.report.kernels import KernelRow, Peak
from passc.report.page import Block, Details, Figure, Num, Section, Table, Text

__all__ = ["files", "kernels", "layers", "pass_pages", "passes", "summary", "verification"]


def _shape(shape: Any) -> str:
    return "×".join(map(str, shape)) or "scalar"


def _tensors(tensors: Any) -> str:
    return ", ".join(f"{t.name}: {t.dtype} {_shape(t.shape)}" for t in tensors)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def summary(artifact: Artifact, threads: int | None, peak: Peak | None) -> Section:
    """Model, target, versions, sizes, kernel counts and each function's signature."""
    info, target = artifact.info, artifact.target
    tvm_flags = " ".join(
        f"-{k}={','.join(v) if isinstance(v, list) else v}" for k, v in info.target.tvm.items() if k != "kind"
    )
    rows: list[list[Any]] = [
        [
            "model",
            "; ".join(f"{n}: {f.source or '(added by a Relax pass)'}" for n, f in info.functions.items()),
        ],
        ["target", f"{target.name}: {target.description}"],
        ["TVM target", f"{info.target.tvm.get('kind', '')} {tvm_flags}".strip()],
        ["passc", info.passc],
        ["TVM", ", ".join(f"{k} {v}" for k, v in sorted(info.tvm.items()))],
        ["threads (runtime default)", info.target.threads],
        ["functions", len(info.functions)],
        ["kernels", info.kernels],
        ["kernels from tuning records", info.tuned_kernels],
        ["weights compiled into model.so (bytes)", info.constant_bytes],
        ["runtime parameters in params.bin (bytes)", info.params_bytes],
        ["artifact size (bytes)", sum(p.stat().st_size for p in _files(artifact))],
    ]
    library = artifact.path / "model.so"
    if library.is_file():
        rows.append(["model.so (bytes)", library.stat().st_size])
    if artifact.bundled:
        own = {MANIFEST, "model.so", PARAMS}
        runtime = [p for p in _files(artifact) if p.name not in own and p.suffix != ".onnx"]
        rows.append(["bundled runtime (bytes)", sum(p.stat().st_size for p in runtime)])
    if threads is not None:
        rows.append(["threads (kernel times below)", threads])
    if peak is not None:
        rows.append(
            [
                "peak FP32 GFLOP/s per core",
                Num(peak.gflops_per_core, f"{peak.gflops_per_core:.1f} ({peak.source})"),
            ]
        )
    signature = Table(
        ["function", "inputs", "outputs", "runtime parameters"],
        [[n, _tensors(f.inputs), _tensors(f.outputs), len(f.params)] for n, f in info.functions.items()],
    )
    return Section("Summary", [Table([], rows), signature])


def _files(artifact: Artifact) -> list[Path]:
    return sorted(p for p in artifact.path.iterdir() if p.is_file())


def files(artifact: Artifact) -> Section:
    """Each file of the artifact, its size and whether the manifest lists it (with its sha256)."""
    listed = artifact.info.files
    rows = [
        [
            p.name,
            p.stat().st_size,
            _mb(p.stat().st_size),
            (listed.get(p.name) or "")[:16]
            or ("the manifest itself" if p.name == MANIFEST else "not in the manifest"),
        ]
        for p in _files(artifact)
    ]
    return Section("Files", [Table(["file", "bytes", "size", "sha256 (first 16)"], rows, sortable=True)])


def verification(verified: Any | None) -> Section:
    """The verify run's verdict and each output's error against onnxruntime."""
    if verified is None:
        return Section(
            "Verification",
            [
                Text(
                    "Not verified in this report: `passc verify MODEL --target T -o ARTIFACT --report` "
                    "verifies against onnxruntime and writes the report with the result."
                )
            ],
        )
    rows = [
        [function, e.name, e.max_abs, e.max_rel, e.noise, verified.verdict(e)]
        for function, errors in verified.functions.items()
        for e in errors
    ]
    verdict = "verified" if verified.passed else "NOT verified: outside tolerance"
    blocks: list[Block] = [
        Text(f"{verdict}; tolerance: max relative error {verified.tolerance:g} (of each output's range)."),
        Table(
            ["function", "output", "max abs err", "max rel err", "reference's own rounding", "verdict"], rows
        ),
        Text(
            "The reference's own rounding: onnxruntime's float32 result against float64 and against "
            f"itself without graph optimisations (max abs). Within {oracle.NOISE_MULTIPLE:g}× of it, an "
            "output is rounding (ok: rounding) whatever its relative error."
        ),
    ]
    for function in verified.unchecked:
        blocks.append(Text(f"function {function}: not checked (a Relax pass added it; no ONNX model to run)"))
    return Section("Verification", blocks)


def _pass_table(records: list[dict[str, Any]], seconds: list[float] | None) -> Table:
    rows = []
    for i, r in enumerate(records):
        b, a = r["before"], r["after"]
        rows.append(
            [
                r["pass"],
                r["modified"],
                Num(seconds[i], f"{seconds[i]:.2f} s") if seconds else None,
                b["nodes"],
                a["nodes"],
                b["params"],
                a["params"],
                b["macs"],
                a["macs"],
                ", ".join(f"{k} ×{v}" for k, v in r.get("fired", {}).items()),
                r.get("tolerance", 0.0),
            ]
        )
    columns = [
        "pass",
        "modified",
        "time",
        "nodes before",
        "nodes after",
        "params before",
        "params after",
        "MACs before",
        "MACs after",
        "rules fired",
        "tolerance",
    ]
    return Table(columns, rows)


def _waterfall(records: list[dict[str, Any]]) -> Block:
    svg = charts.waterfall(
        [r["pass"] for r in records],
        {
            key: (float(records[0]["before"][key]), [float(r["after"][key]) for r in records])
            for key in ("nodes", "macs")
        },
    )
    if svg is None:
        return Text(charts.MISSING)
    return Figure(
        svg,
        "Nodes and MACs through the pipeline: each pass's change from the count before it. MACs are "
        "counted where shapes are known: before canonicalize infers them, a model may count 0.",
    )


def _explanations(live: list[Any]) -> list[Block]:
    blocks: list[Block] = []
    for record in live:
        report = getattr(record, "report", None)
        if report is None:
            continue
        rows = [[m.rule, "fired", ", ".join(m.nodes), ""] for m in report.matches]
        rows += [[m.rule, "near miss", ", ".join(m.nodes), m.reason] for m in report.near_misses]
        blocks.append(
            Details(
                f"{record.name}: {len(report.matches)} rewrites, {len(report.near_misses)} near misses",
                [Table(["rule", "", "nodes", "why not"], rows, sortable=True)] if rows else [Text("none")],
            )
        )
    return blocks


def passes(artifact: Artifact, compiled: Any | None) -> Section:
    """Each function's ONNX pass log, then the Relax passes': table, waterfall and, from a live
    compile with `explain`, where rules fired and nearly fired."""
    logs: dict[str, tuple[list[dict[str, Any]], list[Any] | None]] = {}
    for name, entry in artifact.info.functions.items():
        if entry.passes:
            live = compiled.pass_logs.get(name) if compiled is not None else None
            logs[f"function {name}" if len(artifact.info.functions) > 1 else "ONNX passes"] = (
                list(entry.passes),
                live,
            )
    if artifact.info.relax_passes:
        logs["Relax passes (whole module)"] = (
            list(artifact.info.relax_passes),
            compiled.relax_log if compiled is not None else None,
        )
    blocks: list[Block] = []
    if compiled is None:
        blocks.append(
            Text(
                "Pass wall times and near misses come from the compile run: "
                "`passc compile … --report` shows them."
            )
        )
    for title, (records, live) in logs.items():
        seconds = [r.seconds for r in live] if live and len(live) == len(records) else None
        blocks += [Text(title), _pass_table(records, seconds), _waterfall(records)]
        blocks += _explanations(live or [])
    return Section("Pass pipeline", blocks)


def kernels(rows: list[KernelRow], peak: Peak | None, threads: int | None, measured_where: str) -> Section:
    """Per-kernel times (or, unmeasured, FLOPs and the time at peak), by family and kernel."""
    measured = any(r.seconds is not None for r in rows)
    peak_flops = peak.gflops_per_core * 1e9 * (threads or 1) if peak else None
    total = sum(r.seconds or 0.0 for r in rows)
    by_family: dict[str, float] = defaultdict(float)
    table_rows = []
    for r in rows:
        if measured:
            seconds = r.seconds or 0.0
            rate = r.flops / seconds if r.flops and seconds > 0 else None
            by_family[r.family] += seconds * 1e3
            table_rows.append(
                [
                    r.name,
                    r.family,
                    Num(seconds * 1e3, f"{seconds * 1e3:.3f}"),
                    Num(
                        seconds / total * 100 if total else 0.0,
                        f"{seconds / total * 100 if total else 0:.1f}%",
                    ),
                    r.flops,
                    Num(rate / 1e9, f"{rate / 1e9:.2f}") if rate else None,
                    Num(rate / peak_flops * 100, f"{rate / peak_flops * 100:.1f}%")
                    if rate and peak_flops
                    else None,
                    r.tuned,
                ]
            )
        else:
            estimate = r.flops / peak_flops * 1e3 if r.flops and peak_flops else None
            by_family[r.family] += (estimate or 0.0) if peak_flops else (r.flops or 0) / 1e6
            table_rows.append(
                [
                    r.name,
                    r.family,
                    r.flops,
                    Num(estimate, f"{estimate:.3f}") if estimate is not None else None,
                    r.tuned,
                ]
            )
    if measured:
        intro = (
            f"Each kernel timed inside whole runs {measured_where} (median over the runs), "
            f"{threads} thread{'s' if threads != 1 else ''}; total {total * 1e3:.3f} ms."
        )
        columns = ["kernel", "family", "ms", "share", "FLOPs", "GFLOP/s", "of peak", "tuned"]
        label = "ms per run"
    else:
        intro = f"Not timed: {measured_where}. FLOPs are counted from the kernels' TIR; " + (
            "the times are estimates: each kernel at the target's peak FP32 FLOP/s on "
            f"{threads} thread{'s' if threads != 1 else ''} (a lower bound)."
            if peak_flops
            else "the target file gives no peak FLOP/s to estimate times from."
        )
        columns = ["kernel", "family", "FLOPs", "estimated ms at peak", "tuned"]
        label = "estimated ms at peak" if peak_flops else "MFLOP"
    families = sorted(by_family.items(), key=lambda kv: -kv[1])
    svg = charts.bars([f for f, _ in families], [v for _, v in families], label, "by op family")
    blocks: list[Block] = [Text(intro), Figure(svg, f"{label} by op family") if svg else Text(charts.MISSING)]
    blocks.append(Table(["family", label], [[f, Num(v, f"{v:.3f}")] for f, v in families], sortable=True))
    blocks.append(Table(columns, table_rows, sortable=True, caption="kernels (click a header to sort)"))
    return Section("Where the time goes", blocks)


def tuning(
    artifact: Artifact, rows: list[KernelRow], gains: dict[str, float] | None, why: str
) -> Section | None:
    """The kernels scheduled from tuning records: their times and, where measured, their gain in
    the model over passc's default schedule."""
    info = artifact.info
    if not info.tuned_kernels:
        return None
    seconds = {r.name: r.seconds for r in rows}
    table_rows = []
    for name in info.tuned:
        ms = seconds.get(name)
        gain = (gains or {}).get(name)
        table_rows.append([
            name,
            Num(ms * 1e3, f"{ms * 1e3:.3f}") if ms is not None else None,
            Num(gain, f"{gain:.2f}×") if gain is not None else None,
        ])  # fmt: skip
    intro = (
        f"{info.tuned_kernels} of {info.kernels} kernels took their schedule from `passc tune`'s records. "
        + (
            "Gain: the kernel's time with passc's default schedule over its time in this artifact, both "
            "builds run in turn on this machine (median over the runs); below 1 the record is slower."
            if gains is not None
            else f"Gains not measured: {why}."
        )
    )
    return Section(
        "Tuning records", [Text(intro), Table(["kernel", "ms per run", "gain"], table_rows, sortable=True)]
    )


def _layer_rows(model: ir.Model, limit: int) -> list[list[Any]]:
    from passc.stats import node_macs

    rows = []
    for i, node in enumerate(model.graph):
        if i == limit:
            break
        params = sum(
            math.prod(v.shape)
            for v in node.inputs
            if v is not None
            and v.const_value is not None
            and v.shape is not None
            and all(isinstance(d, int) for d in v.shape)
        )
        outputs = "; ".join(f"{_shape(v.shape) if v.shape is not None else '?'}" for v in node.outputs)
        rows.append([i, node.name or "", node.op_type, outputs, params, node_macs(node)])
    return rows


LAYER_LIMIT = 5000


def optimized_model(artifact: Artifact, function: str) -> ir.Model | None:
    """The function's optimised ONNX graph with shapes inferred, or None if it has none."""
    import onnx_ir.passes.common

    path = artifact.path / optimized_model_name(function)
    if not path.is_file():
        return None
    model = ir.load(path)
    try:
        onnx_ir.passes.common.ShapeInferencePass()(model)
    except Exception:  # shapes are for display only: show what the file has
        pass
    return model


def layers(models: dict[str, ir.Model]) -> Section:
    """The optimised graph of each function as a layer list: op, output shapes, params, MACs."""
    blocks: list[Block] = []
    for name, model in models.items():
        rows = _layer_rows(model, LAYER_LIMIT)
        cut = f" (the first {LAYER_LIMIT} of {len(model.graph)})" if len(model.graph) > LAYER_LIMIT else ""
        blocks.append(
            Details(
                f"function {name}: {len(model.graph)} nodes{cut}",
                [Table(["#", "node", "op", "output shapes", "params", "MACs"], rows, sortable=True)],
            )
        )
    return Section("Optimised graph", blocks)


def pass_pages(artifact: Artifact, models: dict[str, ir.Model]) -> list[Section]:
    """The sections passes add for themselves (`report_sections`), for each run that recorded one."""
    from passc.errors import UsageError
    from passc.registry import get_pass

    sections: list[Section] = []
    runs = [(name, r, models.get(name)) for name, f in artifact.info.functions.items() for r in f.passes]
    runs += [(None, r, None) for r in artifact.info.relax_passes]
    for function, record, model in runs:
        try:
            cls = get_pass(record["pass"])
        except UsageError:  # a plugin's pass that is not loaded here
            continue
        for section in cls.report_sections(record, model):
            if function is not None and len(artifact.info.functions) > 1:
                section = Section(f"{section.title} (function {function})", section.blocks)
            sections.append(section)
    return sections
