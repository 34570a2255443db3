"""Structural re-parameterisation benchmark: passc on timm's training-form models vs the authors' reparam.

    python bench/reparam.py --torch-python PATH [--models repvgg_a0 ...] [--threads 1 2] [--runs 7]
                            [--cache-dir DIR] [--out DIR] [--no-time]

For each model (default MODELS: RepVGG, MobileOne, RepViT, FastViT, RepGhostNet) the training form
and the form after timm's `reparameterize_model` are exported by bench/reparam_export.py, run by
--torch-python: a Python with torch, torchvision and timm (the guide's separate benchmark venv,
`pip install torch==2.14.1 torchvision==0.29.1 timm onnx onnxscript`; passc's own venv has torch
2.13, beside which torchvision does not load). Random weights, randomised BatchNorm statistics.

It prints, per model:
1. Conv / BatchNormalization / Add(+Sub) node counts and MACs of the training form as exported,
   after passc's default ONNX passes (`passc optimize`), and of the authors' reparam form as
   exported; "ok" when passc's counts and MACs are all at or below the reparam form's;
2. passc's optimized training form against the exported training form under onnxruntime: max
   abs difference relative to the output's range (must be ≤ 1e-5);
   beside the same measure for the authors' reparam form (float32 rounding of a random network
   whose activations grow large: the floor any reparameterisation meets);
3. host artifacts (default passes, no tuning) of the training form and of the reparam form, timed
   interleaved in one worker process per thread count as bench/cpu.py does, and their ratio
   (train / reparam; 1.00 is the same speed), beside the noise: the reparam artifact loaded a
   second time and timed as a third engine, over the first.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import platformdirs
from cpu import PAUSE_S, interleaved, run_worker

import passc
from passc import oracle
from passc.loading import load_model
from passc.pipeline import DEFAULT_PASSES, build_pipeline, run_pipeline
from passc.stats import model_stats

MODELS = ["repvgg_a0", "mobileone_s0", "repvit_m0_9", "fastvit_t8", "fastvit_sa12", "repghostnet_050"]
EXPORT = Path(__file__).with_name("reparam_export.py")
COUNTED = ("Conv", "BatchNormalization", "Add")


def _export(name: str, cache: Path, torch_python: str) -> tuple[Path, Path]:
    train, reparam = cache / f"{name}.train.onnx", cache / f"{name}.reparam.onnx"
    if not (train.exists() and reparam.exists()):
        subprocess.run([torch_python, str(EXPORT), name, str(cache)], check=True)
    return train, reparam


def _counts(model) -> dict[str, float]:
    ops = collections.Counter(n.op_type for n in model.graph)
    counts: dict[str, float] = {op: ops[op] for op in COUNTED}
    counts["Add"] += ops["Sub"]
    counts["nodes"] = sum(ops.values())
    counts["MMACs"] = model_stats(model).macs / 1e6
    return counts


def _relative_error(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """Max |got − expected| over the outputs (in order: the two forms name them differently),
    relative to each expected output's range."""
    return max(
        float(np.abs(g - e).max() / max(np.ptp(e), np.finfo(np.float32).tiny))
        for g, e in zip(got.values(), expected.values(), strict=True)
    )


def _optimized(path: Path):
    model = load_model(path).model
    run_pipeline(model, build_pipeline(DEFAULT_PASSES))
    return model


def _worker(spec_path: Path) -> None:
    """Times the two artifacts in this process (TVM_NUM_THREADS is set); prints medians in ms."""
    spec = json.loads(spec_path.read_text())
    inputs = {k: np.load(v) for k, v in spec["inputs"].items()}
    engines = {form: functools.partial(passc.load(spec[form]).run, inputs) for form in ("train", "reparam")}
    # The reparam artifact loaded a second time: its ratio to the first is the run-to-run noise.
    engines["again"] = functools.partial(passc.load(spec["reparam"]).run, inputs)
    for run in engines.values():
        run()
    seconds = interleaved(engines, spec["runs"], {form: 1 for form in engines})
    print(json.dumps({form: s * 1e3 for form, s in seconds.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python with torch, torchvision and timm (for exports)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per artifact (median)")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(platformdirs.user_cache_dir("passc")) / "bench-reparam"
    )
    parser.add_argument("--out", type=Path, help="keep the artifacts here")
    parser.add_argument("--no-time", action="store_true", help="counts and numerics only")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    work = args.out or Path(tempfile.mkdtemp(prefix="passc-reparam-"))

    rows = []
    for name in args.models:
        train, reparam = (
            _export(name, args.cache_dir, args.torch_python)
            if args.torch_python
            else (args.cache_dir / f"{name}.train.onnx", args.cache_dir / f"{name}.reparam.onnx")
        )
        if not train.exists():
            sys.exit(f"{train} is missing: give --torch-python to export it")
        raw, optimized, reparam_model = load_model(train).model, _optimized(train), load_model(reparam).model
        counts = {"train": _counts(raw), "passc": _counts(optimized), "reparam": _counts(reparam_model)}
        ok = all(counts["passc"][k] <= counts["reparam"][k] for k in (*COUNTED, "MMACs"))
        inputs = oracle.random_inputs(oracle.input_specs(raw))
        expected = oracle.run_onnxruntime(raw, inputs)
        error, floor = (
            _relative_error(oracle.run_onnxruntime(m, inputs), expected) for m in (optimized, reparam_model)
        )
        row = {"name": name, "counts": counts, "ok": ok, "error": error, "floor": floor, "ms": {}}
        print(
            f"{name}: "
            + "; ".join(
                f"{form} {c['nodes']:.0f} nodes (Conv {c['Conv']:.0f}, BN {c['BatchNormalization']:.0f}, "
                f"Add/Sub {c['Add']:.0f}, {c['MMACs']:.1f} MMACs)"
                for form, c in counts.items()
            )
            + f"; {'ok' if ok else 'MORE than reparam'}; error/range {error:.2g}"
            + f" (authors' reparam {floor:.2g})",
            flush=True,
        )
        if not args.no_time:
            base = work / name
            base.mkdir(parents=True, exist_ok=True)
            spec = {"runs": args.runs, "inputs": {}}
            for form, path in (("train", train), ("reparam", reparam)):
                passc.compile(path, "host", base / form)
                spec[form] = str(base / form)
            for key, array in inputs.items():
                spec["inputs"][key] = str(base / f"input-{len(spec['inputs'])}.npy")
                np.save(spec["inputs"][key], array)
            row["artifact_error"] = _relative_error(passc.load(base / "train").run(inputs), expected)
            row["kernels"] = [
                json.loads((base / f / "manifest.json").read_text())["kernels"] for f in ("train", "reparam")
            ]
            (base / "spec.json").write_text(json.dumps(spec))
            for threads in args.threads:
                done = run_worker(__file__, base / "spec.json", threads)
                if done.returncode != 0:
                    sys.exit(f"{name} ({threads} threads) failed:\n{done.stderr[-2000:]}")
                row["ms"][threads] = json.loads(done.stdout.strip().splitlines()[-1])
                ms = row["ms"][threads]
                print(
                    f"  {threads} threads: train form {ms['train']:.2f} ms, "
                    f"reparam form {ms['reparam']:.2f} ms, ratio {ms['train'] / ms['reparam']:.3f} "
                    f"(reparam loaded twice: {ms['again'] / ms['reparam']:.3f})",
                    flush=True,
                )
        rows.append(row)

    print(f"\nhost, median of {args.runs} interleaved runs, each after a {PAUSE_S}s pause and 1 untimed run")
    head = "| model | form | nodes | Conv | BN | Add+Sub | MMACs |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for row in rows:
        for form, c in row["counts"].items():
            print(
                f"| {row['name']} | {form} | {c['nodes']:.0f} | {c['Conv']:.0f} "
                f"| {c['BatchNormalization']:.0f} | {c['Add']:.0f} | {c['MMACs']:.1f} |"
            )
    print(
        "\n| model | passc ≤ reparam | error / range | authors' reparam error / range "
        "| artifact error / range | kernels train, reparam | "
        + " | ".join(f"{t}T train ms | {t}T reparam ms | {t}T ratio | {t}T noise" for t in args.threads)
        + " |"
    )
    print("|" + "---|" * (6 + 4 * len(args.threads)))
    for row in rows:
        cells = [
            row["name"],
            "yes" if row["ok"] else "NO",
            f"{row['error']:.1g}",
            f"{row['floor']:.1g}",
            f"{row.get('artifact_error', float('nan')):.1g}",
            ", ".join(map(str, row.get("kernels", []))) or "-",
        ]
        for t in args.threads:
            ms = row["ms"].get(t)
            cells += (
                [
                    f"{ms['train']:.2f}",
                    f"{ms['reparam']:.2f}",
                    f"{ms['train'] / ms['reparam']:.3f}",
                    f"{ms['again'] / ms['reparam']:.3f}",
                ]
                if ms
                else ["-"] * 4
            )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
