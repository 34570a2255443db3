"""Mixed-precision benchmark: accuracy vs weight size for ILP, greedy and uniform bit widths.

    python bench/bits.py [--budgets 3,4,5,6] [--runs 5] [--out DIR]

Trains the digits CNN and transformer (examples/digits/train.py: real weights, scikit-learn's
digits), then for each average-bits budget compiles a passc host artifact per method with
`assign-bits` (method = ilp, greedy, uniform; calibration = 360 training images) and reports, per
artifact: the weight bytes it holds for the assigned layers (params.bin), Σ Ω (the summed
per-layer distortion the ILP minimises), the artifact's test accuracy and its agreement with the
float model's predictions, and its host latency on the 360 test images (median of --runs, runs of
all artifacts of a model interleaved). The float artifact is the baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from passc.passes.assign_bits import ASSIGNMENT_KEY

import passc

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("ilp", "greedy", "uniform")
PIPELINE = ["canonicalize", "fuse", "fold-linear-blocks"]


def _train(out: Path) -> None:
    spec = importlib.util.spec_from_file_location("digits", ROOT / "examples" / "digits" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv, sys.argv = sys.argv, ["train.py", "-o", str(out)]
    try:
        module.main()
    finally:
        sys.argv = argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="2.5,3,4,6", help="average bits per weight, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per artifact (median)")
    parser.add_argument("--out", type=Path, help="keep models and artifacts here")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="passc-bits-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data.npz").is_file():
        _train(work)
    data = np.load(work / "data.npz")
    x_test, y_test = data["x_test"], data["y_test"]
    shape = {"x": tuple(x_test.shape)}
    calibration = work / "calibration.npz"
    np.savez(calibration, x=data["x_train"][: len(x_test)])  # one batch shaped like the test set

    for model in ("cnn", "transformer"):
        source = work / f"{model}.onnx"
        builds: dict[str, tuple[passc.Artifact, dict]] = {}
        start = time.perf_counter()
        builds["float32"] = (passc.compile(source, "host", work / f"{model}-float", input_shapes=shape,
                                           passes=PIPELINE), {})  # fmt: skip
        for budget in args.budgets.split(","):
            for method in METHODS:
                options = {"budget": f"avg-bits={budget}", "method": method, "calibration": str(calibration)}
                out = work / f"{model}-{budget}-{method}"
                artifact = passc.compile(
                    source, "host", out, input_shapes=shape, passes=[*PIPELINE, "assign-bits"],
                    pass_options={"assign-bits": options},
                )  # fmt: skip
                builds[f"avg-bits={budget} {method}"] = (artifact, options)
        print(f"\n{model}: compiled {len(builds)} artifacts in {time.perf_counter() - start:.0f}s")

        reference = builds["float32"][0].run({"x": x_test})["logits"].argmax(1)
        times: dict[str, list[float]] = {name: [] for name in builds}
        for _ in range(args.runs):
            for name, (artifact, _) in builds.items():
                t = time.perf_counter()
                artifact.run({"x": x_test})
                times[name].append(time.perf_counter() - t)
        float_ms = statistics.median(times["float32"]) * 1e3
        header = f"{'weights B':>10} {'Σ Ω':>9} {'accuracy':>9} {'agree':>7} {'ms':>7} {'vs fp32':>8}"
        print(f"{'artifact':24} {header}")
        for name, (artifact, _) in builds.items():
            logits = artifact.run({"x": x_test})["logits"]
            weights = artifact.manifest["weights"]
            held = weights["params_bytes"] + weights["constant_bytes"]
            record = next(
                (p for p in artifact.manifest["functions"]["main"]["passes"] if p["pass"] == "assign-bits"),
                None,
            )
            objective = "" if record is None else f"{_objective(artifact):9.3g}"
            accuracy = (logits.argmax(1) == y_test).mean()
            agree = (logits.argmax(1) == reference).mean()
            ms = statistics.median(times[name]) * 1e3
            print(
                f"{name:24} {held:10,d} {objective:>9} {accuracy:9.3f} {agree:7.3f} {ms:7.2f} "
                f"{ms / float_ms:7.2f}x"
            )


def _objective(artifact: passc.Artifact) -> float:
    """Σ Ω of the artifact's assignment, as the pass recorded it in the optimised model's metadata."""
    metadata = {p.key: p.value for p in onnx.load(artifact.path / "model.onnx").metadata_props}
    return float(json.loads(metadata[ASSIGNMENT_KEY])["objective"])


if __name__ == "__main__":
    main()
