"""The `passc` command line: compile, verify, tune, optimize, run, report, inspect, passes, targets."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from passc.errors import PasscError, UsageError

__all__ = ["main"]


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines on stderr, unless --quiet."""
    if args.quiet:
        return lambda _: None
    return lambda line: print(f"passc: {line}", file=sys.stderr, flush=True)


def _input_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    from passc.loading import parse_input_shape

    return dict(parse_input_shape(text) for text in args.input_shape)


def _split_input(text: str) -> tuple[str, str]:
    """`NAME=FILE` → (NAME, FILE). A name may itself hold `=`: the split is at the `=` after
    which an existing file is named (the first `=` when none is)."""
    splits = [i for i, c in enumerate(text) if c == "="]
    at = next((i for i in splits if Path(text[i + 1 :]).is_file()), splits[0] if splits else -1)
    name, path = (text[:at], text[at + 1 :]) if at >= 0 else ("", "")
    if not (name and path):
        raise UsageError(f"bad --input {text!r}: expected NAME=FILE.npy")
    return name, path


def _read_inputs(texts: list[str]) -> dict[str, np.ndarray]:
    """Reads `--input NAME=file.npy` flags."""
    inputs = {}
    for text in texts:
        name, path = _split_input(text)
        if not Path(path).is_file():
            raise UsageError(f"input file not found: {path}")
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise UsageError(f"{path} is not a .npy file (numpy.save writes them)")
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise UsageError(f"cannot read {path} as a .npy array: {err}") from None
    return inputs


def _pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pass pipeline flags that `compile`, `verify` and `optimize` share."""
    return {
        "passes": [p for p in args.passes.split(",") if p] if args.passes is not None else None,
        "pass_options": args.pass_option
        + (["canonicalize.keep_initializer_inputs=true"] if args.keep_initializer_inputs else []),
        "pipeline_file": args.pipeline,
        "plugins": args.plugin,
        "progress": _say(args),
    }


def _compile_options(args: argparse.Namespace) -> dict[str, Any]:
    records = [] if args.no_records else (args.records or None)
    return {
        **_pipeline_options(args),
        "verify_each": args.verify_each,
        "threads": args.threads,
        "records": records,
        "explain": args.report is not None,  # the report lists the rules' near misses
    }


def _write_report(args: argparse.Namespace, artifact: Any, path: Path | None, **facts: Any) -> None:
    """Writes the artifact's report (`--report`) and prints its path."""
    from passc.report import write_report

    written = write_report(artifact, path, progress=_say(args), **facts)
    print(written)


def _print_pass_log(records: list[Any]) -> None:
    print(f"{'pass':<24} {'modified':<9} {'nodes':>15} {'params':>21} {'MACs':>27} {'time':>8}")
    for r in records:
        print(
            f"{r.name:<24} {'yes' if r.modified else 'no':<9} "
            f"{f'{r.before.nodes} -> {r.after.nodes}':>15} "
            f"{f'{r.before.params} -> {r.after.params}':>21} "
            f"{f'{r.before.macs} -> {r.after.macs}':>27} {r.seconds:>7.2f}s"
        )


def _entry_points(texts: list[str]) -> dict[str, Path]:
    """The models of `compile MODEL…`: `NAME=FILE` names an entry point, a plain FILE is `main`."""
    from passc.artifact import ENTRY

    functions: dict[str, Path] = {}
    for text in texts:
        name, eq, path = text.partition("=")
        if not eq or Path(text).exists():
            name, path = ENTRY, text
        if not (name and path):
            raise UsageError(f"bad model {text!r}: expected FILE.onnx or NAME=FILE.onnx")
        if name in functions:
            raise UsageError(f"function {name!r} is given twice")
        functions[name] = Path(path)
    return functions


def _print_pass_logs(result: Any) -> None:
    """Each entry point's ONNX pass log (headed by its name when there are several), then the
    Relax passes'."""
    for name, log in result.pass_logs.items():
        if len(result.pass_logs) > 1:
            print(f"function {name}:")
        _print_pass_log(log)
    if result.relax_log:
        print("relax passes:")
        _print_pass_log(result.relax_log)


def _print_explanations(records: list[Any]) -> None:
    """Where the rules of each pass that explains itself fired and nearly fired, run by run."""
    explained = [r for r in records if r.report is not None]
    runs = Counter(r.name for r in explained)
    seen: Counter[str] = Counter()
    for record in explained:
        seen[record.name] += 1
        label = f"{record.name} run {seen[record.name]}" if runs[record.name] > 1 else record.name
        print(f"{label}: where rules fired and nearly fired")
        for match in record.report.matches:
            print(f"  {match.rule}: fired on {', '.join(match.nodes)}")
        for miss in record.report.near_misses:
            print(f"  {miss.rule}: not on {', '.join(miss.nodes)}: {miss.reason}")
        if not (record.report.matches or record.report.near_misses):
            print("  no matches and no near misses")


def cmd_compile(args: argparse.Namespace) -> int:
    from passc.compiler import compile_model

    functions = _entry_points(args.model)
    stem = next(iter(functions.values())).stem
    output = Path(args.output) if args.output else Path("build") / f"{stem}.{args.target}"
    result = compile_model(
        functions,
        args.target,
        output,
        input_shapes=_input_shapes(args),
        bundle=args.bundle,
        depfile=args.depfile,
        **_compile_options(args),
    )
    if not args.quiet:
        _print_pass_logs(result)
    print(output)
    if args.report is not None:
        _write_report(args, result.artifact, args.report or None, compiled=result)
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from passc.optimize import optimize_model

    result = optimize_model(
        Path(args.model),
        Path(args.output),
        input_shapes=_input_shapes(args),
        explain=args.explain,
        **_pipeline_options(args),
    )
    if not args.quiet:
        _print_pass_log(result.pass_log)
    for record in result.pass_log:
        if record.fired:
            print(f"{record.name} fired: " + ", ".join(f"{r} x{n}" for r, n in record.fired.items()))
    print(f"nodes {result.before.nodes} -> {result.after.nodes}")
    if args.explain:
        _print_explanations(result.pass_log)
    print(result.output)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from passc.verify import verify_model

    functions = _entry_points(args.model)
    with tempfile.TemporaryDirectory(prefix="passc-verify-") as tmp:
        # With --report, the artifact must outlive verify_model: in -o, else here until reported.
        stem = f"{next(iter(functions.values())).stem}.{args.target}"
        output = args.output or (Path(tmp) / stem if args.report is not None else None)
        report = verify_model(
            functions,
            args.target,
            inputs=_read_inputs(args.input) or None,
            emulate=args.emulate,
            tolerance=args.tolerance,
            output=output,
            input_shapes=_input_shapes(args),
            **_compile_options(args),
        )
        _print_verification(args, report)
        if args.report is not None:
            default = None if args.output else Path("build") / f"{stem}.report.html"
            path = Path(args.report) if args.report else default
            _write_report(args, report.compiled.artifact, path, compiled=report.compiled, verified=report)
    return 0 if report.passed else 1


def _print_verification(args: argparse.Namespace, report: Any) -> None:
    from passc import oracle

    where = (
        "under emulation"
        if args.emulate and not report.compiled.artifact.target.runs_on_host
        else "on the host"
    )
    print(f"{args.target} artifact run {where} vs onnxruntime (tolerance: max rel err {report.tolerance:g})")
    for function, errors in report.functions.items():
        if len(report.functions) > 1 or function != "main":
            print(f"function {function}:")
        for e in errors:
            print(
                f"  {e.name}: max abs err {e.max_abs:.3g}, max rel err {e.max_rel:.3g} "
                f"(onnxruntime's own float32 rounding: {e.noise:.3g} abs)  {report.verdict(e)}"
            )
    for function in report.unchecked:
        print(f"function {function}: not checked (a Relax pass added it; it has no ONNX model to run)")
    if any(report.verdict(e) == "ok: rounding" for e in report.errors):
        print(
            f"ok: rounding: outside the tolerance, but within {oracle.NOISE_MULTIPLE:g}× onnxruntime's own "
            "float32 rounding (its float32 result against float64, and without its graph optimisations)"
        )
    print("verified" if report.passed else "NOT verified: outside tolerance")


def cmd_report(args: argparse.Namespace) -> int:
    from passc.artifact import Artifact

    artifact = Artifact(args.artifact)
    _write_report(
        args,
        artifact,
        Path(args.output) if args.output else None,
        measure_kernels=not args.no_measure,
        threads=args.threads,
        rounds=args.rounds,
    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from passc.tuner import tune_model

    report = tune_model(
        Path(args.model),
        args.target,
        trials=args.trials,
        records=args.records,
        fresh=args.fresh,
        rpc=args.rpc,
        tracker=args.tracker,
        key=args.key,
        threads=args.threads,
        timeout_s=args.timeout,
        input_shapes=_input_shapes(args),
        **_pipeline_options(args),
    )
    kernels = sorted(report.kernels, key=lambda k: -(k.weight * (k.default_us or 0.0)))
    print(
        f"{'kernel':<40} {'calls':>5} {'default us':>11} {'tuned us':>10} {'speed-up':>8} {'trials':>6}"
        f"  in the model (tuned / default)"
    )
    for k in kernels:
        default = f"{k.default_us:.1f}" if k.default_us is not None else "-"
        best = f"{k.best_us:.1f}" if k.best_us is not None else "-"
        speedup = f"{k.speedup:.2f}x" if k.speedup is not None else "-"
        checked = ", ".join(f"{r:.2f} at {n} thr" for n, r in sorted(k.in_model.items()))
        verdict = "; default kept" if k.reverted else "; tuned kept" if checked else ""
        print(
            f"{k.name[:40]:<40} {k.weight:>5} {default:>11} {best:>10} {speedup:>8} {k.trials:>6}  "
            f"{checked}{verdict}".rstrip()
        )
    default, best = report.total("default_us"), report.total("best_us")
    summary = f"summed kernel latency {default / 1e3:.3f} ms -> {best / 1e3:.3f} ms"
    print(f"{report.trials} trials in {report.seconds:.0f} s; {summary}")
    print(f"records: {report.records} (passc compile applies them)")
    return 0


def _output_files(names: list[str]) -> dict[str, str]:
    """A distinct .npy file name for each output: its name with characters other than letters,
    digits, `_`, `.` and `-` replaced by `_`, and `_2`, `_3`, … added where two would collide."""
    files: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "output"
        candidate, count = stem, 1
        while f"{candidate}.npy".lower() in taken:
            count += 1
            candidate = f"{stem}_{count}"
        taken.add(f"{candidate}.npy".lower())
        files[name] = f"{candidate}.npy"
    return files


def cmd_run(args: argparse.Namespace) -> int:
    from passc.artifact import Artifact

    artifact = Artifact(args.artifact)
    artifact.function(args.function)  # an unknown name fails before any work
    inputs = _read_inputs(args.input)
    if not inputs:
        _say(args)("no --input given: running on random inputs")
        inputs = artifact.random_inputs(function=args.function)
    outputs = artifact.run(inputs, function=args.function, emulate=args.emulate)
    if args.output:
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"-o {out_dir}: a file is there; -o names a directory for NAME.npy files")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, file_name in _output_files(list(outputs)).items():
            path = out_dir / file_name
            np.save(path, outputs[name])
            print(path if file_name == f"{name}.npy" else f"{name} -> {path}")
    else:
        for name, value in outputs.items():
            print(
                f"{name}: {value.dtype} {'x'.join(map(str, value.shape))}  "
                f"min {value.min():.6g}  max {value.max():.6g}  mean {value.mean():.6g}"
            )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import onnx_ir.passes.common

    from passc.artifact import MANIFEST, OPTIMIZED_MODEL
    from passc.loading import bind_input_shapes, is_static_dim, load_model
    from passc.pass_base import BIT_WIDTHS_KEY
    from passc.stats import model_stats, op_counts

    path = Path(args.model)
    if path.is_dir() and (path / MANIFEST).is_file():
        path = path / OPTIMIZED_MODEL  # an artifact: inspect the graph it was compiled from
    model = load_model(path).model
    bind_input_shapes(model, _input_shapes(args))
    try:
        onnx_ir.passes.common.ShapeInferencePass()(model)
    except Exception as err:  # inspect still reports what it can without inferred shapes
        _say(args)(f"shape inference failed, MACs may be undercounted: {err}")
    stats = model_stats(model)
    inputs = [
        {
            "name": v.name,
            "dtype": v.dtype.numpy().name if v.dtype is not None else None,
            "shape": [d if is_static_dim(d) else str(d) for d in (v.shape or [])],
            "dynamic_dims": [i for i, d in enumerate(v.shape or []) if not is_static_dim(d)],
        }
        for v in model.graph.inputs
    ]
    outputs = [
        {
            "name": v.name,
            "dtype": v.dtype.numpy().name if v.dtype is not None else None,
            "shape": [d if is_static_dim(d) else str(d) for d in v.shape] if v.shape is not None else None,
        }
        for v in model.graph.outputs
    ]
    report = {
        **stats.as_dict(),
        "inputs": inputs,
        "outputs": outputs,
        "ops": dict(op_counts(model).most_common()),
    }
    if BIT_WIDTHS_KEY in model.metadata_props:
        report["bit_widths"] = json.loads(model.metadata_props[BIT_WIDTHS_KEY])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.model}: {stats.nodes} nodes, {stats.params:,} params "
        f"in {stats.initializers} initializers, {stats.macs:,} MACs"
    )
    for value in inputs:
        dynamic = f"  dynamic dims: {value['dynamic_dims']}" if value["dynamic_dims"] else ""
        print(f"  input  {value['name']}: {value['dtype']} [{', '.join(map(str, value['shape']))}]{dynamic}")
    for value in outputs:
        shape = (
            f"[{', '.join(map(str, value['shape']))}]" if value["shape"] is not None else "(shape unknown)"
        )
        print(f"  output {value['name']}: {value['dtype'] or '(dtype unknown)'} {shape}")
    print("  ops: " + ", ".join(f"{op} {n}" for op, n in report["ops"].items()))
    if "bit_widths" in report:
        names = {32: "float32", 16: "float16"}
        widths = ", ".join(f"{layer} {names.get(w, f'{w}-bit')}" for layer, w in report["bit_widths"].items())
        print(f"  weight widths: {widths}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from passc.pass_base import describe_options
    from passc.registry import all_passes, load_plugin

    for plugin in args.plugin:
        load_plugin(plugin)
    for name, cls in all_passes().items():
        if cls.tolerance is None:
            tolerance = "tolerance measured per run"
        else:
            tolerance = "exact" if cls.tolerance == 0 else f"tolerance {cls.tolerance:g}"
        print(f"{name}  ({cls.stage} pass, {tolerance})  {cls.summary()}")
        for option, type_name, default, help_text in describe_options(cls):
            print(f"    {name}.{option}: {type_name} = {default}  {help_text}".rstrip())
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from passc.targets import all_targets

    for target in all_targets().values():
        emulator = " ".join(target.emulator) if target.emulator else "none (runs natively)"
        print(f"{target.name}: {target.description}")
        print(f"    device {target.device}, arch {target.arch}, {target.threads} threads")
        print(f"    TVM target {json.dumps(target.tvm)}")
        print(
            f"    toolchain {target.cxx} (apt: {target.cxx_apt_package}), "
            f"runtime wheels {target.wheel_platform}"
        )
        print(f"    emulator {emulator}")
        print(f"    default passes: {', '.join(target.default_passes)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from passc.pipeline import OPTIMIZE_PASSES

    def global_flags(default: object) -> argparse.ArgumentParser:
        # Accepted before and after the command; SUPPRESS keeps a sub-command's parser from
        # resetting a flag given before the command (`passc --debug compile …`).
        flags = argparse.ArgumentParser(add_help=False)
        flags.add_argument("--debug", action="store_true", default=default, help="show tracebacks on errors")
        flags.add_argument(
            "-q", "--quiet", action="store_true", default=default, help="no progress on stderr"
        )
        return flags

    common = global_flags(argparse.SUPPRESS)

    shapes = argparse.ArgumentParser(add_help=False)
    shapes.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="bind an input's shape, e.g. input:1x3x224x224 (repeatable)",
    )

    inputs = argparse.ArgumentParser(add_help=False)
    inputs.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="an input (repeatable; default: random)",
    )

    pipeline = argparse.ArgumentParser(add_help=False, parents=[shapes])
    pipeline.add_argument(
        "--passes", help="comma-separated pass list, replacing the default (the target's, for builds)"
    )
    pipeline.add_argument(
        "--pass-option",
        action="append",
        default=[],
        metavar="PASS.KEY=VALUE",
        help="set a pass option (repeatable)",
    )
    pipeline.add_argument("--pipeline", type=Path, help="TOML pipeline file (passes and options)")
    pipeline.add_argument(
        "--keep-initializer-inputs",
        action="store_true",
        help="keep graph inputs that have an initializer (old ONNX files list every weight) as inputs; "
        "by default they are constants",
    )
    pipeline.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="load passes from a Python file or module (repeatable)",
    )

    build = argparse.ArgumentParser(add_help=False, parents=[pipeline])
    build.add_argument("--target", required=True, help="target name (see `passc targets`)")
    build.add_argument("-o", "--output", help="artifact directory (default build/MODEL.TARGET)")
    build.add_argument(
        "--verify-each",
        action="store_true",
        help="check the model against onnxruntime after every pass",
    )
    build.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="the artifact's default thread count (default: the target's; TVM_NUM_THREADS overrides)",
    )

    records = build.add_mutually_exclusive_group()
    records.add_argument(
        "--records",
        action="append",
        type=Path,
        metavar="DIR",
        help="apply the tuning records in DIR (repeatable) instead of the target's cache",
    )
    records.add_argument("--no-records", action="store_true", help="apply no tuning records")
    build.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="FILE.html",
        help="also write the artifact's HTML report (default: beside the artifact, ARTIFACT.report.html)",
    )

    parser = argparse.ArgumentParser(prog="passc", description=__doc__, parents=[global_flags(False)])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models_help = "the .onnx file (entry point main), or NAME=FILE.onnx for each entry point"
    p = sub.add_parser("compile", parents=[common, build], help="compile a model into an artifact")
    p.add_argument("model", nargs="+", metavar="MODEL", help=models_help)
    p.add_argument(
        "--bundle",
        action="store_true",
        help="add passc-run and the TVM runtime libraries, so the device needs no Python",
    )
    p.add_argument("--depfile", type=Path, help="write a Make-style depfile for build systems")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "verify", parents=[common, build, inputs], help="compile, run and compare with onnxruntime"
    )
    p.add_argument("model", nargs="+", metavar="MODEL", help=models_help)
    p.add_argument("--emulate", action="store_true", help="run a non-host target under its emulator")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed max-abs error relative to the output's range (default 1e-4)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "tune",
        parents=[common, pipeline],
        help="search faster kernel schedules (MetaSchedule), locally or over RPC; compile applies them",
    )
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--target", required=True, help="target name (see `passc targets`)")
    p.add_argument(
        "--trials",
        type=int,
        default=500,
        help="candidates measured in all (default 500; 0: only check the records held in the model)",
    )
    p.add_argument(
        "--records", type=Path, metavar="DIR", help="record database (default: the target's cache)"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="remove the records the database holds for this model's kernels before tuning",
    )
    p.add_argument("--rpc", metavar="HOST:PORT", help="measure on this TVM RPC server (a board)")
    p.add_argument("--tracker", metavar="HOST:PORT", help="measure on devices from this TVM RPC tracker")
    p.add_argument("--key", help="the device key for --tracker")
    p.add_argument("--threads", type=int, metavar="N", help="threads per run (default: the target's)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per build and run (default 60)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "optimize",
        parents=[common, pipeline],
        help=f"run passes (default: {','.join(OPTIMIZE_PASSES)}) on ONNX, write ONNX (no TVM)",
    )
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="the optimized .onnx file")
    p.add_argument(
        "--explain", action="store_true", help="say where each fuse rule fired and why near misses did not"
    )
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("run", parents=[common, inputs], help="run an artifact")
    p.add_argument("artifact", help="artifact directory written by `passc compile`")
    p.add_argument("--function", default="main", help="the entry point to run (default main)")
    p.add_argument("-o", "--output", help="write each output to DIR/NAME.npy")
    p.add_argument(
        "--emulate",
        action="store_true",
        help="run through the bundled passc-run (under the target's emulator)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "inspect", parents=[common, shapes], help="ops, params, MACs, dynamic dims, weight bit widths"
    )
    p.add_argument("model", help="the .onnx file, or an artifact directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "report", parents=[common], help="write an artifact's HTML report: passes, kernel times, sizes"
    )
    p.add_argument("artifact", help="artifact directory written by `passc compile`")
    p.add_argument("-o", "--output", help="the .html file (default: ARTIFACT.report.html, beside it)")
    p.add_argument("--no-measure", action="store_true", help="do not time the kernels on this machine")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads to time with (default: the artifact's, at most the CPUs)",
    )
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="timed runs per kernel (default 5)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("passes", parents=[common], help="list passes and their options")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("targets", parents=[common], help="list targets")
    p.set_defaults(func=cmd_targets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except PasscError as err:
        if args.debug:
            traceback.print_exc()
        print(f"passc: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # the reader (e.g. `| head`) went away: not an error of ours
        return 0
    except KeyboardInterrupt:
        print("passc: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        print(
            f"passc: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
