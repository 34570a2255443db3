"""No performance cliffs: each kernel with passc's schedule against TVM's plain loops of the same kernel.

    python bench/cliffs.py [--models NAME ...] [--threads 1] [--rounds 3] [--cache-dir DIR]

Each suite model (bench/models.py; default: all) is compiled twice for the host in one process,
from the same optimised graph and without tuning records: with passc's default schedules, and
with TVM's plain loops (PASSC_SCHEDULES=0). Both run in turn on the same random inputs, a warm-up
then `--rounds` runs each, every kernel timed inside the runs (the VM's instrument hook,
`passc.runtime.kernel_times`). A kernel's ratio is the median over rounds of its scheduled time
over its plain time (below 1: the schedule is faster). The table gives, per model, the worst
ratio among the kernels that take at least `MIN_SHARE` of the scheduled run, the kernel it belongs
to, and how many such kernels run slower scheduled than plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import platformdirs
from models import NAMES, suite
from passc.targets import get_target

from passc import oracle
from passc.compiler import prepare_model
from passc.lowering import lower
from passc.runtime import kernel_times

MIN_SHARE = 0.01  # kernels under 1% of the scheduled run are timer noise, not cliffs


def ratios(model, threads: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per kernel: scheduled / plain time ratio (median over rounds), and its share of the scheduled run."""
    target = get_target("host")
    prepared = prepare_model(model.path, target, input_shapes=model.input_shapes)
    graph = prepared.loaded.model
    scheduled = lower(graph, target, [], prepared.relax_passes)
    os.environ["PASSC_SCHEDULES"] = "plain"
    try:
        plain = lower(graph, target, [], prepared.relax_passes)
    finally:
        del os.environ["PASSC_SCHEDULES"]
    inputs = oracle.random_inputs([(s.name, s.shape, s.dtype) for s in scheduled.inputs])
    arrays = [inputs[s.name] for s in scheduled.inputs] + [a for _, a in scheduled.params]
    fast, slow = kernel_times(
        [scheduled.executable, plain.executable], arrays, threads=threads, rounds=rounds
    )
    total = statistics.median(sum(v for k, v in run.items() if "." not in k) for run in fast)
    result, share = {}, {}
    for name in slow[0]:
        if "." in name:  # VM builtins
            continue
        pairs = [(f.get(name), s.get(name)) for f, s in zip(fast, slow, strict=True)]
        values = [a / b for a, b in pairs if a and b]
        if values:
            result[name] = statistics.median(values)
            share[name] = statistics.median(f[name] for f in fast if name in f) / total
    return result, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=NAMES, choices=NAMES, metavar="NAME")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(platformdirs.user_cache_dir("passc")) / "bench"
    )
    args = parser.parse_args()
    models = suite(args.cache_dir, args.models)
    head = "| model | kernels | worst scheduled / plain | its kernel | slower scheduled |"
    print(f"{head} (threads {args.threads}) |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        start = time.time()
        result, share = ratios(model, args.threads, args.rounds)
        counted = {k: r for k, r in result.items() if share[k] >= MIN_SHARE}
        worst = max(counted, key=counted.get)
        slower = sum(1 for r in counted.values() if r > 1.0)
        print(
            f"| {name} | {len(counted)} of {len(result)} | {counted[worst]:.3f} | `{worst}` | {slower} | "
            f"{time.time() - start:.0f} s |",
            flush=True,
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
