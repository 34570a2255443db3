"""CPU benchmark: TVM untuned vs passc's default schedules vs onnxruntime, same threads, on the host.

    python bench/cpu.py [--models resnet18 mobilenetv2 ...] [--all] [--threads 1 2] [--runs 5]
                        [--mcpu CPU] [--cache-dir DIR] [--out DIR]

For each model of the suite (bench/models.py; default: resnet18, mobilenetv2, bert-encoder and
yolov8n-style at their suite shapes) it compiles two host artifacts with the default passes: one
with TVM's naive legalized loops (PASSC_SCHEDULES=0) and one with passc's default schedules. Then,
for each thread count, one worker process (TVM reads TVM_NUM_THREADS once per process) runs both
artifacts and onnxruntime (intra_op_num_threads = TVM_NUM_THREADS, inter_op 1) on the original
ONNX model, interleaved, one warm-up each then --runs timed runs, and reports the medians and the
passc outputs' max relative error against onnxruntime. The table gives passc / onnxruntime latency
(below 1 is faster than onnxruntime) and untuned / passc (the schedules' speed-up), with geometric
means per thread count.

The host target compiles for this machine's CPU (mcpu "native"); --mcpu (e.g. haswell for AVX2,
x86-64 for baseline SSE2) compiles for another ISA instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import platformdirs
from models import suite
from passc.targets import get_target

import passc

DEFAULT = ["resnet18", "mobilenetv2", "bert-encoder", "yolov8n-style"]
ENGINES = ("untuned", "passc", "onnxruntime")


def _compile(model, out: Path, schedules: bool, mcpu: str | None) -> float:
    target = get_target("host")
    if mcpu:
        target = dataclasses.replace(target, tvm={**target.tvm, "mcpu": mcpu})
    os.environ["PASSC_SCHEDULES"] = "1" if schedules else "0"
    start = time.perf_counter()
    try:
        passc.compile(model.path, target, out, input_shapes=model.input_shapes)
    finally:
        del os.environ["PASSC_SCHEDULES"]
    return time.perf_counter() - start


def _inputs(model) -> dict[str, np.ndarray]:
    import onnx

    rng = np.random.default_rng(0)
    graph = onnx.load(model.path, load_external_data=False).graph
    feeds = {}
    for value in graph.input:
        shape = model.input_shapes[value.name]
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[value.name] = rng.integers(0, 1000, shape).astype(np.int64)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _worker(spec: dict) -> dict:
    """Times the engines in this process (TVM_NUM_THREADS is already set); returns medians in ms."""
    import onnxruntime as ort

    from passc import oracle
    from passc.loading import load_model

    threads = int(os.environ["TVM_NUM_THREADS"])
    model_path = Path(spec["onnx"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    untuned, scheduled = passc.load(spec["untuned"]), passc.load(spec["passc"])
    inputs = {k: np.load(v) for k, v in spec["inputs"].items()}
    engines = {
        "untuned": lambda: untuned.run(inputs),
        "passc": lambda: scheduled.run(inputs),
        "onnxruntime": lambda: session.run(None, inputs),
    }
    expected = oracle.run_onnxruntime(load_model(model_path).model, inputs)
    errors = {
        name: max(e.max_rel for e in oracle.compare(artifact.run(inputs), expected))
        for name, artifact in (("untuned", untuned), ("passc", scheduled))
    }
    times: dict[str, list[float]] = {name: [] for name in engines}
    for run in engines.values():
        run()  # warm-up: first-call allocation and thread pool start
    for _ in range(spec["runs"]):
        for name, run in engines.items():  # interleaved, so load changes hit every engine alike
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {"ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}, "max_rel": errors}


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"suite models (default {DEFAULT})")
    parser.add_argument("--all", action="store_true", help="every model of the suite")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine (median)")
    parser.add_argument("--mcpu", help="compile for this LLVM CPU instead of the host target's default")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(platformdirs.user_cache_dir("passc")) / "bench"
    )
    parser.add_argument("--out", type=Path, help="keep the artifacts here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker.read_text()))))
        return

    from models import NAMES

    names = NAMES if args.all else (args.models or DEFAULT)
    models = suite(args.cache_dir, names)
    work = args.out or Path(tempfile.mkdtemp(prefix="passc-cpu-"))
    rows = []
    for name, model in models.items():
        base = work / name
        base.mkdir(parents=True, exist_ok=True)
        try:
            seconds = {
                engine: _compile(model, base / engine, engine == "passc", args.mcpu)
                for engine in ("untuned", "passc")
            }
        except passc.PasscError as err:
            print(f"{name}: does not compile: {err}", file=sys.stderr)
            continue
        print(f"{name}: compiled untuned in {seconds['untuned']:.0f}s, passc in {seconds['passc']:.0f}s")
        inputs = {}
        for key, array in _inputs(model).items():
            inputs[key] = str(base / f"input-{len(inputs)}.npy")
            np.save(inputs[key], array)
        spec = {
            "onnx": str(model.path),
            "untuned": str(base / "untuned"),
            "passc": str(base / "passc"),
            "inputs": inputs,
            "runs": args.runs,
        }
        (base / "spec.json").write_text(json.dumps(spec))
        for threads in args.threads:
            env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            done = subprocess.run(
                [sys.executable, __file__, "--worker", str(base / "spec.json")],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode != 0:
                print(f"{name} ({threads} threads) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((name, threads, result))
            ms = result["ms"]
            print(f"  {threads} threads: " + ", ".join(f"{k} {ms[k]:.1f} ms" for k in ENGINES), flush=True)

    mcpu = args.mcpu or "native"
    print(f"\nhost, mcpu: {mcpu}; median of {args.runs} interleaved runs; ms")
    header = (
        f"{'model':16} {'thr':>3} {'untuned':>9} {'passc':>8} {'ort':>8} {'passc/ort':>9} {'speed-up':>8}"
    )
    print(header + f" {'max rel':>8}")
    for name, threads, result in rows:
        ms = result["ms"]
        print(
            f"{name:16} {threads:3d} {ms['untuned']:9.1f} {ms['passc']:8.1f} {ms['onnxruntime']:8.1f} "
            f"{ms['passc'] / ms['onnxruntime']:9.2f} {ms['untuned'] / ms['passc']:8.1f} "
            f"{result['max_rel']['passc']:8.1e}"
        )
    for threads in args.threads:
        chosen = [r for _, t, r in rows if t == threads]
        if chosen:
            ratio = _geomean([r["ms"]["passc"] / r["ms"]["onnxruntime"] for r in chosen])
            speedup = _geomean([r["ms"]["untuned"] / r["ms"]["passc"] for r in chosen])
            print(f"{'geomean':16} {threads:3d} {'':9} {'':8} {'':8} {ratio:9.2f} {speedup:8.1f}")


if __name__ == "__main__":
    main()
