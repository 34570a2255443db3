"""`passc report`: one self-contained HTML page per artifact that shows what the compiler did and
where the time goes.

The page holds: a summary (model, target, versions, sizes, kernel counts, signatures); the
verification result when a verify run wrote it; the pass pipeline (table and waterfall of nodes
and MACs, with wall times and the rules' near misses when a compile run wrote it); per-kernel
times measured here (or FLOPs and estimates for an artifact this machine cannot run) by op
family; the sections passes add for themselves (`PasscPass.report_sections`); the tuned kernels and their
gain over the default schedules;
the artifact's files; the optimised graph as a layer list. Charts are matplotlib SVG, inline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from passc.artifact import Artifact
from passc.atomic import atomic_file
from passc.errors import PasscError, UsageError
from passc.report import sections
from passc.report.kernels import default_threads, measure, target_peak, tuning_gains, unmeasured
from passc.report.page import Details, Figure, Num, Section, Table, Text, render_page

__all__ = [
    "Details",
    "Figure",
    "Num",
    "Section",
    "Table",
    "Text",
    "build_report",
    "default_report_path",
    "write_report",
]

ROUNDS = 5  # whole-model runs whose per-kernel times the report takes the median of


def default_report_path(artifact: str | Path) -> Path:
    """Beside the artifact, not inside it (its files are a function of its inputs; times are not):
    `build/m.rpi5` → `build/m.rpi5.report.html`."""
    path = Path(artifact)
    return path.with_name(f"{path.name}.report.html")


def build_report(
    artifact: Artifact,
    *,
    compiled: Any | None = None,
    verified: Any | None = None,
    measure_kernels: bool = True,
    threads: int | None = None,
    rounds: int = ROUNDS,
    progress: Callable[[str], None] = lambda _: None,
) -> str:
    """The report page of `artifact` as HTML text.

    `compiled` (a `CompileResult`) adds pass wall times and near misses, `verified` (a
    `VerifyReport`) the verification. Kernels are timed here when `measure_kernels` and the
    artifact runs on this machine, on `threads` threads (the artifact's default, at most this
    machine's CPUs) over `rounds` runs; otherwise the page shows FLOPs and estimates."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    info = artifact.info
    peak = target_peak(artifact)
    runs_here = artifact.target.runs_on_host and (artifact.path / "model.so").is_file()
    timed_threads = threads or default_threads(artifact)
    kernel_sections: list[Section] = []
    all_rows = []
    if measure_kernels and runs_here:
        for function in info.functions:
            progress(f"timing the kernels of {function} ({rounds} runs, {timed_threads} threads)")
            try:
                rows = measure(artifact, function, timed_threads, rounds)
            except (PasscError, RuntimeError, OSError) as err:  # TVM's runtime raises builtin types
                rows = unmeasured(artifact)
                where = f"timing failed ({err})"
            else:
                where = "on this machine"
            all_rows += rows
            section = sections.kernels(rows, peak, timed_threads, where)
            if len(info.functions) > 1:
                section = Section(f"{section.title}: {function}", section.blocks)
            kernel_sections.append(section)
    else:
        why = (
            "measurement was switched off"
            if runs_here
            else f"{artifact.target.name} binaries do not run on this machine"
        )
        all_rows = unmeasured(artifact)
        kernel_sections.append(sections.kernels(all_rows, peak, info.target.threads, why))
    progress("reading the optimised graphs")
    models = {
        name: model
        for name in info.functions
        if (model := sections.optimized_model(artifact, name)) is not None
    }
    page = [
        sections.summary(artifact, timed_threads if measure_kernels and runs_here else None, peak),
        sections.verification(verified),
        sections.passes(artifact, compiled),
        *kernel_sections,
        *sections.pass_pages(artifact, models),
    ]
    gains, why = None, "this machine does not run the artifact" if not runs_here else "measurement was off"
    if info.tuned and measure_kernels and runs_here:
        progress("timing the tuned kernels against passc's default schedules")
        try:
            gains = tuning_gains(artifact, next(iter(info.functions)), timed_threads, rounds)
        except (PasscError, RuntimeError, OSError) as err:
            why = str(err)
    tuning = sections.tuning(artifact, all_rows, gains, why)
    page += [tuning] if tuning is not None else []
    page += [sections.files(artifact), sections.layers(models)]
    names = ", ".join(f.source or n for n, f in info.functions.items())
    subtitle = f"{names} for {artifact.target.name} ({artifact.target.description}); passc {info.passc}"
    return render_page(f"passc report: {artifact.path.name}", subtitle, page)


def write_report(
    artifact: str | Path | Artifact,
    output: str | Path | None = None,
    **options: Any,
) -> Path:
    """Writes the report of `artifact` to `output` (default: `default_report_path`), atomically;
    returns its path. Options are `build_report`'s."""
    artifact = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    path = Path(output) if output is not None else default_report_path(artifact.path)
    if path.is_dir():
        raise UsageError(f"-o {path}: a directory is there; -o names the report's .html file")
    text = build_report(artifact, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
