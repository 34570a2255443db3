"""SESR collapse benchmark: MACs, parameters and host latency, expanded vs collapsed, side by side.

    python bench/sesr.py [--variant m5] [--scale 2] [--size 1080x1920] [--runs 3] [--out DIR]

Exports the example's SESR (examples/sesr/sesr.py) in its training-time expanded form, then:
1. counts MACs and parameters before and after `fold-linear-blocks` (passc's pass log);
2. checks the collapsed graph against the expanded one under onnxruntime (max relative error);
3. times onnxruntime on both graphs and the two compiled passc host artifacts (expanded: pipeline
   `canonicalize`; collapsed: the default pipeline), interleaved in one process, same threads,
   median of --runs, and prints the expanded / collapsed latency ratios.
TVM builds are untuned (see the CPU-performance issue), so compare the passc rows with each other,
not with onnxruntime. The expanded artifact at 1080p takes minutes per run; --size shrinks it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from passc.passes.canonicalize import Canonicalize
from passc.passes.fold_linear_blocks import FoldLinearBlocks

import passc
from passc import oracle
from passc.loading import bind_input_shapes, load_model
from passc.stats import model_stats

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sesr" / "sesr.py"


def _example():
    spec = importlib.util.spec_from_file_location("sesr_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _session(model, threads: int) -> Callable[[dict[str, np.ndarray]], object]:
    import onnx_ir as ir

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda inputs: session.run(None, inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="m5", choices=["m3", "m5", "m7", "m11"])
    parser.add_argument("--scale", type=int, default=2, choices=[2, 4])
    parser.add_argument("--size", default="1080x1920", help="input HxW (default 1080x1920)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine (median)")
    parser.add_argument("--skip-compiled", action="store_true", help="time onnxruntime only")
    parser.add_argument("--out", type=Path, help="keep the exported model and artifacts here")
    args = parser.parse_args()
    height, width = map(int, args.size.lower().split("x"))
    shape = (1, 1, height, width)
    work = args.out or Path(tempfile.mkdtemp(prefix="passc-sesr-"))
    work.mkdir(parents=True, exist_ok=True)
    threads = passc.targets.get_target("host").threads

    source = _example().export(args.variant, args.scale, work / f"sesr_{args.variant}_x{args.scale}.onnx")
    expanded = load_model(source).model
    bind_input_shapes(expanded, {"x": shape})
    Canonicalize()(expanded)
    collapsed = load_model(source).model
    bind_input_shapes(collapsed, {"x": shape})
    Canonicalize()(collapsed)
    folding = FoldLinearBlocks()
    folding(collapsed)
    before, after = model_stats(expanded), model_stats(collapsed)

    print(f"SESR-{args.variant.upper()} x{args.scale}, input 1x1x{height}x{width}, {threads} threads")
    print(f"  rewrites: {dict(folding.fired)}")
    macs = f"{before.macs / 1e9:9.2f} G -> {after.macs / 1e9:7.2f} G"
    print(f"  MACs   : {macs}  ({before.macs / after.macs:.2f}x)")
    print(f"  params : {before.params:9,d}   -> {after.params:7,d}    ({before.params / after.params:.2f}x)")

    inputs = {"x": np.random.default_rng(0).random(shape, dtype=np.float32)}
    engines = {
        "onnxruntime expanded": _session(expanded, threads),
        "onnxruntime collapsed": _session(collapsed, threads),
    }
    reference = engines["onnxruntime expanded"](inputs)
    folded_out = engines["onnxruntime collapsed"](inputs)
    error = oracle.compare({"y": folded_out[0]}, {"y": reference[0]})[0]
    print(f"  collapsed vs expanded (onnxruntime): max abs {error.max_abs:.3g}, max rel {error.max_rel:.3g}")

    if not args.skip_compiled:
        for name, passes in (("passc expanded", ["canonicalize"]), ("passc collapsed", None)):
            out = work / name.replace(" ", "-")
            start = time.perf_counter()
            passc.compile(source, "host", out, input_shapes={"x": shape}, passes=passes)
            print(f"  compiled {name} in {time.perf_counter() - start:.0f}s")
            artifact = passc.load(out)
            engines[name] = lambda x, a=artifact: a.run(x)
        got = engines["passc collapsed"](inputs)
        error = oracle.compare({"y": got["y"]}, {"y": reference[0]})[0]
        print(f"  passc collapsed artifact vs onnxruntime expanded: max rel {error.max_rel:.3g}")

    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.runs):
        for name, run in engines.items():  # interleaved, so load changes hit every engine alike
            start = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n  {'engine':24} {'median ms':>10}")
    for name, seconds in median.items():
        print(f"  {name:24} {seconds * 1e3:10.1f}")
    for engine in ("onnxruntime", "passc"):
        if f"{engine} collapsed" in median:
            ratio = median[f"{engine} expanded"] / median[f"{engine} collapsed"]
            print(f"  {engine}: expanded / collapsed latency = {ratio:.1f}x")


if __name__ == "__main__":
    main()
