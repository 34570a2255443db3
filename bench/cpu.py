"""CPU benchmark: TVM untuned vs passc's default schedules vs passc tuned vs onnxruntime, on the host.

    python bench/cpu.py [--models resnet18 mobilenetv2 ...] [--all] [--threads 1 2] [--runs 5]
                        [--tune TRIALS] [--records DIR] [--mcpu CPU] [--cache-dir DIR] [--out DIR]

For each model of the suite (bench/models.py; default: resnet18, mobilenetv2, bert-encoder and
yolov8n-style at their suite shapes) it compiles three host artifacts with the default passes: one
with TVM's naive legalized loops (PASSC_SCHEDULES=0), one with passc's default schedules and no
tuning records, and one applying the tuning records in --records (default bench/records/host-CPU,
kept in the repo so the numbers reproduce without re-tuning). `--tune TRIALS` first runs `passc
tune` on each model with that budget (2 threads, the host target's), adding to those records.

Then, for each thread count, one worker process (TVM reads TVM_NUM_THREADS once per process) runs
the artifacts and onnxruntime (intra_op_num_threads = TVM_NUM_THREADS, inter_op 1) on the original
ONNX model, interleaved (each run after a pause of PAUSE_S, so that no engine's spinning threads
slow the next, then --warm untimed runs of the same engine, so that the timed run does not pay
for the machine waking from the pause; each round starts one engine later than the last, so no
engine always follows the same one), one warm-up each then --runs timed runs, and reports the
medians and the passc outputs' max relative error against onnxruntime. The table gives passc /
onnxruntime latency (below 1 is faster than onnxruntime) for the default schedules and tuned, and
untuned / default (the schedules' speed-up), with geometric means per thread count.

The host target compiles for this machine's CPU (mcpu "native"); --mcpu (e.g. haswell for AVX2,
x86-64 for baseline SSE2) compiles for another ISA instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from models import suite
from passc.targets import get_target

import passc
from passc.lowering import resolve_target

DEFAULT = ["resnet18", "mobilenetv2", "bert-encoder", "yolov8n-style"]
ENGINES = ("untuned", "passc", "tuned", "onnxruntime")
ARTIFACTS = ("untuned", "passc", "tuned")
RECORDS = Path(__file__).parent / "records"
# Both thread pools spin a while after a run before their workers sleep: onnxruntime's (its
# default) and TVM's (TVM_THREAD_POOL_SPIN_COUNT). With 2 threads on 2 cores, an engine timed right
# after the other ran 3-4x slower (YOLO: passc 64 ms just after onnxruntime, 18 ms after a pause;
# onnxruntime 48 ms 50 ms after passc, 17 ms after 200 ms). Every timed run waits this long first.
PAUSE_S = 0.25
# A run just after a pause pays for the machine waking up, whatever engine runs: on a 2-vCPU VM
# here, summing 1000 floats took 97 µs right after a 50 ms sleep and 1 µs otherwise, and
# PaddleOCR's classifier took 1.2 ms (passc) and 1.7 ms (onnxruntime) first after the pause, 0.5
# and 0.9-1.1 ms on the run after that (untuned: 5.2 and 3.7 ms). That fixed cost is the
# machine's, not the engine's; it halves small models' ratios. So after the pause each engine
# runs WARM_RUNS times untimed, then the run that is timed (--warm 0: time the first); an engine
# whose run takes over LONG_RUN_S skips them, as the wake-up is then under 1% of its time.
WARM_RUNS = 1
LONG_RUN_S = 0.1


def _target(mcpu: str | None):
    target = get_target("host")
    return dataclasses.replace(target, tvm={**target.tvm, "mcpu": mcpu}) if mcpu else target


def _compile(model, out: Path, engine: str, mcpu: str | None, records: Path) -> float:
    os.environ["PASSC_SCHEDULES"] = "0" if engine == "untuned" else "1"
    start = time.perf_counter()
    try:
        passc.compile(
            model.path,
            _target(mcpu),
            out,
            input_shapes=model.input_shapes,
            records=[records] if engine == "tuned" and records.is_dir() else [],
        )
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
    session = ort.InferenceSession(
        str(model_path), session_options(ort, threads), providers=["CPUExecutionProvider"]
    )
    artifacts = {name: passc.load(spec[name]) for name in ARTIFACTS}
    inputs = {k: np.load(v) for k, v in spec["inputs"].items()}
    engines = {name: functools.partial(artifact.run, inputs) for name, artifact in artifacts.items()}
    engines["onnxruntime"] = lambda: session.run(None, inputs)
    expected = oracle.run_onnxruntime(load_model(model_path).model, inputs)
    errors = {
        name: max(e.max_rel for e in oracle.compare(artifact.run(inputs), expected))
        for name, artifact in artifacts.items()
    }
    warm = {}
    for name, run in engines.items():
        start = time.perf_counter()
        run()  # warm-up: first-call allocation and thread pool start
        warm[name] = spec["warm"] if time.perf_counter() - start < LONG_RUN_S else 0
    seconds = interleaved(engines, spec["runs"], warm)
    return {"ms": {k: v * 1e3 for k, v in seconds.items()}, "max_rel": errors}


def session_options(ort: Any, threads: int) -> Any:
    """onnxruntime's session options for a run at `threads` threads (intra-op; inter-op 1)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def interleaved(
    engines: dict[str, Callable[[], Any]], rounds: int, warm: dict[str, int], calls: int = 1
) -> dict[str, float]:
    """Each engine's median seconds per call over `rounds` rounds. In each round every engine
    waits PAUSE_S, runs `warm[name]` times untimed, then `calls` times back to back (a round's
    time is their mean). Interleaved, so load changes hit every engine alike, and each round
    starts one engine later, so no engine always runs after the same one (after untuned's seconds
    of naive loops, say, which leave the caches full of its own data)."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(PAUSE_S)  # the previous engine's idle workers stop spinning
            for _ in range(warm[name]):
                engines[name]()
            start = time.perf_counter()
            for _ in range(calls):
                engines[name]()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(v) for name, v in times.items()}


def run_worker(script: str, spec: Path, threads: int) -> subprocess.CompletedProcess[str]:
    """Runs `script --worker spec` in a new process at `threads` threads (TVM reads
    TVM_NUM_THREADS once per process); its last stdout line is its JSON result."""
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(
        [sys.executable, script, "--worker", str(spec)], capture_output=True, text=True, env=env
    )


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"suite models (default {DEFAULT})")
    parser.add_argument("--all", action="store_true", help="every model of the suite")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine (median)")
    parser.add_argument(
        "--warm",
        type=int,
        default=WARM_RUNS,
        help=f"untimed runs after each pause, before a timed run under {LONG_RUN_S} s (default {WARM_RUNS})",
    )
    parser.add_argument("--mcpu", help="compile for this LLVM CPU instead of the host target's default")
    parser.add_argument(
        "--tune",
        type=int,
        metavar="TRIALS",
        help="tune each model first, adding to --records (0: only check the records in the model)",
    )
    parser.add_argument("--records", type=Path, help="tuning records (default bench/records/host-CPU)")
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
    records = args.records or RECORDS / f"host-{resolve_target(_target(args.mcpu).tvm)['mcpu']}"
    if args.tune is None and not records.is_dir():
        kept = ", ".join(str(d) for d in sorted(RECORDS.glob("host-*"))) or "none"
        print(
            f"note: no tuning records in {records}: 'tuned' will be the default schedules; "
            f"records kept in the repo: {kept} (--records DIR)",
            file=sys.stderr,
        )
    if args.tune is not None:
        for name, model in models.items():
            start = time.perf_counter()
            report = passc.tune(
                model.path,
                _target(args.mcpu),
                trials=args.tune,
                records=records,
                input_shapes=model.input_shapes,
                progress=lambda line, name=name: print(f"{name}: {line}", flush=True),
            )
            default, best = report.total("default_us") / 1e3, report.total("best_us") / 1e3
            kept = sum(1 for k in report.kernels if k.tuned)
            reverted = sum(1 for k in report.kernels if k.reverted)
            print(
                f"{name}: tuned {report.trials} trials in {time.perf_counter() - start:.0f} s; "
                f"summed kernel latency {default:.2f} -> {best:.2f} ms; checked in the model: "
                f"{kept} kernels keep searched schedules, {reverted} went back to the default"
            )
    rows = []
    for name, model in models.items():
        base = work / name
        base.mkdir(parents=True, exist_ok=True)
        try:
            seconds = {
                engine: _compile(model, base / engine, engine, args.mcpu, records) for engine in ARTIFACTS
            }
        except passc.PasscError as err:
            print(f"{name}: does not compile: {err}", file=sys.stderr)
            continue
        tuned = json.loads((base / "tuned" / "manifest.json").read_text())
        print(
            f"{name}: compiled in "
            + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
            + f"; {tuned['tuned_kernels']} of {tuned['kernels']} kernels from tuning records"
        )
        inputs = {}
        for key, array in _inputs(model).items():
            inputs[key] = str(base / f"input-{len(inputs)}.npy")
            np.save(inputs[key], array)
        spec = {
            "onnx": str(model.path),
            **{engine: str(base / engine) for engine in ARTIFACTS},
            "inputs": inputs,
            "runs": args.runs,
            "warm": args.warm,
        }
        (base / "spec.json").write_text(json.dumps(spec))
        for threads in args.threads:
            done = run_worker(__file__, base / "spec.json", threads)
            if done.returncode != 0:
                print(f"{name} ({threads} threads) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((name, threads, result))
            ms = result["ms"]
            print(f"  {threads} threads: " + ", ".join(f"{k} {ms[k]:.1f} ms" for k in ENGINES), flush=True)

    mcpu = args.mcpu or "native"
    print(
        f"\nhost, mcpu: {mcpu}; records: {records}; median of {args.runs} interleaved runs, "
        f"each after a pause and {args.warm} untimed runs; ms"
    )
    header = f"{'model':16} {'thr':>3} {'untuned':>9} {'passc':>8} {'tuned':>8} {'ort':>8}"
    print(header + f" {'passc/ort':>9} {'tuned/ort':>9} {'speed-up':>8} {'max rel':>8}")
    for name, threads, result in rows:
        ms, err = result["ms"], result["max_rel"]
        print(
            f"{name:16} {threads:3d} {ms['untuned']:9.1f} {ms['passc']:8.1f} {ms['tuned']:8.1f} "
            f"{ms['onnxruntime']:8.1f} {ms['passc'] / ms['onnxruntime']:9.2f} "
            f"{ms['tuned'] / ms['onnxruntime']:9.2f} {ms['untuned'] / ms['passc']:8.1f} "
            f"{max(err['passc'], err['tuned']):8.1e}"
        )
    for threads in args.threads:
        chosen = [r["ms"] for _, t, r in rows if t == threads]
        if chosen:
            ratio = _geomean([ms["passc"] / ms["onnxruntime"] for ms in chosen])
            tuned = _geomean([ms["tuned"] / ms["onnxruntime"] for ms in chosen])
            speedup = _geomean([ms["untuned"] / ms["passc"] for ms in chosen])
            blank = f"{'':9} {'':8} {'':8} {'':8}"
            print(f"{'geomean':16} {threads:3d} {blank} {ratio:9.2f} {tuned:9.2f} {speedup:8.1f}")


if __name__ == "__main__":
    main()
