"""int8 matmul benchmark: passc's int8 kernels against onnxruntime's MatMulInteger, on the host.

    python bench/int8.py [--threads 1 2] [--rounds 15] [--calls 20] [--cache-dir DIR]

For each shape (rows × K × N: BERT-base's and ViT-S's linear layers, and one row) it builds an
ONNX MatMulInteger of an int8 input by a constant int8 matrix into int32, and times, in one
process per thread count, interleaved:
- `passc`: the host artifact, with the kernel this CPU gets (`vpdpbusd` tiles with AVX-512 VNNI);
- `passc-dot`: the host artifact for the same CPU with VNNI turned off (mattr -avx512vnni,
  -avxvnni): the dot-product kernel, whose products LLVM sums with `vpmaddwd`;
- `ort-s8s8`: onnxruntime on the same model;
- `ort-u8s8`: onnxruntime on the same product written the way its own quantizer writes it
  (uint8 input A + 128 with zero point 128), which takes its fastest kernels (MLAS's VNNI or AMX
  ones, where the CPU has them).
Each round runs every engine, in a rotating order (bench/cpu.py's `interleaved`), after a pause
of bench/cpu.py's PAUSE_S, one untimed call, then `--calls` calls back to back (a round's time is
their mean); the table gives the medians over `--rounds`, in µs, and passc's time as a ratio of
each other engine's (below 1: passc is faster). Every engine's output is checked against
onnxruntime's first, exactly.

Then a whole model: bench/models.py's BERT encoder (torch export, cached in --cache-dir), float
and quantized by onnxruntime's `quantize_dynamic` (int8 weights; uint8 activations quantized at
run time, DynamicQuantizeLinear + MatMulInteger with zero points), each run by passc and by
onnxruntime, one call per round. passc's int8 output is not onnxruntime's bit for bit (a float
difference upstream can round an activation to the next quantization step); its largest
difference is printed as a fraction of the output's largest value.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import platformdirs
from cpu import interleaved, session_options
from passc.targets import get_target

from passc.lowering import resolve_target

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (197, 384, 1536), (1, 768, 768)]
ENGINES = ("passc", "passc-dot", "ort-s8s8", "ort-u8s8")
MODEL = "bert-encoder"  # bench/models.py's, quantized by onnxruntime's quantize_dynamic


def _model(rows: int, depth: int, count: int, unsigned: bool, path: Path) -> Path:
    """MatMulInteger of a[rows, depth] (int8, or uint8 with zero point 128) by a constant int8 b."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).integers(-128, 128, (depth, count)).astype(np.int8)
    initializers = [numpy_helper.from_array(weight, "b")]
    if unsigned:
        initializers.append(numpy_helper.from_array(np.array(128, np.uint8), "a_zero_point"))
    in_type = TensorProto.UINT8 if unsigned else TensorProto.INT8
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zero_point"][: 2 + unsigned], ["y"])
    graph = helper.make_graph(
        [node],
        path.stem,
        [helper.make_tensor_value_info("a", in_type, [rows, depth])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, count])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _engines(artifacts: dict, sessions: dict, a: np.ndarray) -> dict:
    """Each engine as a call on the input `a` (shifted to uint8 for `ort-u8s8`)."""
    shifted = (a.astype(np.int16) + 128).astype(np.uint8)
    engines = {key: functools.partial(_run_artifact, artifact, a) for key, artifact in artifacts.items()}
    engines["ort-s8s8"] = functools.partial(_run_session, sessions["ort-s8s8"], a)
    engines["ort-u8s8"] = functools.partial(_run_session, sessions["ort-u8s8"], shifted)
    return engines


def _run_artifact(artifact, a: np.ndarray) -> np.ndarray:
    return artifact.run({"a": a})["y"]


def _run_session(session, a: np.ndarray) -> np.ndarray:
    return session.run(None, {"a": a})[0]


def _matmuls(threads: int, rounds: int, calls: int, scratch: Path) -> dict:
    """The MatMulInteger shapes' times, by shape."""
    import onnxruntime as ort

    import passc

    host = get_target("host")
    mattr = ["-avx512vnni", "-avxvnni"]
    no_vnni = dataclasses.replace(host, tvm={**resolve_target(host.tvm), "mattr": mattr})
    options = session_options(ort, threads)
    results = {}
    for rows, depth, count in SHAPES:
        name = f"{rows}x{depth}x{count}"
        signed = _model(rows, depth, count, False, scratch / f"{name}-s8.onnx")
        unsigned = _model(rows, depth, count, True, scratch / f"{name}-u8.onnx")
        artifacts = {
            "passc": passc.compile(signed, host, scratch / f"{name}-passc"),
            "passc-dot": passc.compile(signed, no_vnni, scratch / f"{name}-dot"),
        }
        sessions = {
            key: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for key, path in (("ort-s8s8", signed), ("ort-u8s8", unsigned))
        }
        a = np.random.default_rng(1).integers(-128, 128, (rows, depth)).astype(np.int8)
        engines = _engines(artifacts, sessions, a)
        expected = engines["ort-s8s8"]()
        for key, run in engines.items():
            if not np.array_equal(run(), expected):
                raise SystemExit(f"{key} differs from onnxruntime on {name}")
        results[name] = _microseconds(interleaved(engines, rounds, dict.fromkeys(engines, 1), calls))
    return results


def _quantized_model(threads: int, rounds: int, cache_dir: Path, scratch: Path) -> dict:
    """The suite's BERT encoder, float and quantized by onnxruntime's `quantize_dynamic` (int8
    weights; uint8 activations with a zero point, quantized at run time): passc and onnxruntime
    on each; and passc's int8 output's largest difference from onnxruntime's."""
    import onnxruntime as ort
    from models import suite
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import passc

    model = suite(cache_dir, [MODEL])[MODEL]
    quantized = scratch / f"{MODEL}-int8.onnx"
    quantize_dynamic(model.path, quantized, weight_type=QuantType.QInt8)
    (name,) = model.input_shapes
    feeds = {name: np.random.default_rng(0).integers(0, 1000, model.input_shapes[name]).astype(np.int64)}
    options = session_options(ort, threads)
    engines = {}
    for key, path in (("int8", quantized), ("fp32", model.path)):
        artifact = passc.compile(path, get_target("host"), scratch / f"{MODEL}-{key}")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        engines[f"passc-{key}"] = functools.partial(_first_output, artifact.run, feeds)
        engines[f"ort-{key}"] = functools.partial(_first_output, lambda f, s=session: s.run(None, f), feeds)
    expected = engines["ort-int8"]()
    error = float(np.abs(engines["passc-int8"]() - expected).max() / np.abs(expected).max())
    return {"us": _microseconds(interleaved(engines, rounds, dict.fromkeys(engines, 1))), "error": error}


def _microseconds(seconds: dict[str, float]) -> dict[str, float]:
    return {name: value * 1e6 for name, value in seconds.items()}


def _first_output(run, feeds: dict) -> np.ndarray:
    outputs = run(feeds)
    return next(iter(outputs.values())) if isinstance(outputs, dict) else outputs[0]


def _worker(threads: int, rounds: int, calls: int, cache_dir: Path, scratch: Path) -> dict:
    """Times every engine in this process (TVM_NUM_THREADS is already set)."""
    return {
        "matmuls": _matmuls(threads, rounds, calls, scratch),
        "model": _quantized_model(threads, rounds, cache_dir, scratch),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(platformdirs.user_cache_dir("passc")) / "bench"
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        with tempfile.TemporaryDirectory() as scratch:
            results = _worker(args.worker, args.rounds, args.calls, args.cache_dir, Path(scratch))
        print(json.dumps(results))
        return
    cpu = resolve_target(get_target("host").tvm)["mcpu"]
    print(f"host CPU (LLVM): {cpu}; µs per call, median of {args.rounds} rounds")
    for threads in args.threads:
        env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
        command = [sys.executable, __file__, "--worker", str(threads), "--rounds", str(args.rounds)]
        command += ["--calls", str(args.calls), "--cache-dir", str(args.cache_dir)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr)
        results = json.loads(done.stdout.splitlines()[-1])
        print(f"\n{threads} thread(s)")
        print(f"{'shape':>16} " + " ".join(f"{e:>10}" for e in ENGINES) + "   passc / (dot, s8s8, u8s8)")
        for name, us in results["matmuls"].items():
            ratios = " ".join(f"{us['passc'] / us[e]:5.2f}" for e in ENGINES[1:])
            print(f"{name:>16} " + " ".join(f"{us[e]:10.1f}" for e in ENGINES) + f"   {ratios}")
        model = results["model"]
        us = {key: value / 1e3 for key, value in model["us"].items()}
        print(
            f"{MODEL}, ms: passc int8 {us['passc-int8']:.2f}, onnxruntime int8 {us['ort-int8']:.2f} "
            f"(ratio {us['passc-int8'] / us['ort-int8']:.2f}); passc fp32 {us['passc-fp32']:.2f}, "
            f"onnxruntime fp32 {us['ort-fp32']:.2f}; passc int8's largest difference from "
            f"onnxruntime int8's output: {model['error']:.1e} of its largest value"
        )


if __name__ == "__main__":
    main()
