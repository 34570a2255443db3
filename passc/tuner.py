"""`passc tune`: search for faster kernel schedules with MetaSchedule and keep them as records.

The model goes through the same loading, shape binding and pass pipeline as `passc compile`, so
the fused kernels tuned here are the ones compile builds; compile then applies the records found
in the target's cache (or in the `--records` directories it is given).

A kernel is searched alone, and wins alone: in the model it runs after another kernel, with the
caches that one left, and on fewer threads when the user asks. So on the host, the search's
winners are checked in the model before they stay: the model is compiled with the default
schedules and with the records, both run in turn (`ROUNDS` times, at the tuning's thread count and
at one thread), and each kernel is timed inside the runs. A kernel keeps its searched schedule
only if, at every thread count, the median of its per-round time ratio searched / default is at
most `KEEP_BELOW`; otherwise its records are removed and its default schedule stays.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from passc.compiler import Prepared, prepare_model, records_dir
from passc.errors import UsageError
from passc.lowering import legalized_kernels, lower
from passc.metaschedule import (
    KernelResult,
    TuneReport,
    parse_address,
    require_tuning_packages,
    tune_kernels,
)
from passc.runtime import kernel_times
from passc.targets import Target, get_target

__all__ = ["tune_model"]

# Whole-model runs per engine and thread count when checking searched schedules in the model.
ROUNDS = 15
# A searched schedule stays if, in the model, it takes at most this share of the default's time.
KEEP_BELOW = 0.99


def tune_model(
    model: Any,
    target: str | Target,
    *,
    trials: int,
    records: str | Path | None = None,
    fresh: bool = False,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    threads: int | None = None,
    timeout_s: float = 60.0,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    progress: Callable[[str], None] = lambda _: None,
    **pipeline_options: Any,
) -> TuneReport:
    """Tunes `model`'s kernels for `target` with `trials` measured candidates in all.

    Candidates run on this machine, on the RPC server at `rpc` ("HOST:PORT"), or on a device of
    kind `key` from the RPC tracker at `tracker`. Records are appended to the directory `records`
    (default: the target's database in passc's cache, which `passc compile` reads); with `fresh`,
    the records the database already holds for this model's kernels are removed first. On this
    machine, the searched schedules that win are then checked in the whole model (see the module
    docstring). With `trials=0` nothing is searched: the defaults are measured and the records
    the database already holds for the model's kernels are checked.
    `pipeline_options` are `passes`, `pass_options`, `pipeline_file` and `plugins`, as for compile.
    """
    target = target if isinstance(target, Target) else get_target(target)
    if trials < 0:
        raise UsageError(f"--trials must be 0 or more, got {trials}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if rpc is not None and tracker is not None:
        raise UsageError("give --rpc (one server) or --tracker (a device farm), not both")
    if rpc is not None:
        parse_address(rpc, "--rpc")
    if tracker is not None:
        parse_address(tracker, "--tracker")
        if not key:
            raise UsageError("--tracker needs --key, the device key the boards registered with")
    if not target.runs_on_host and rpc is None and tracker is None:
        raise UsageError(
            f"target {target.name} runs on {target.arch} devices; tuning measures there: "
            "give --rpc HOST:PORT (a `python -m tvm.exec.rpc_server` on the board) or --tracker and --key"
        )
    target.require_cxx()
    require_tuning_packages()
    directory = Path(records) if records is not None else records_dir(target)
    prepared = prepare_model(model, target, input_shapes=input_shapes, progress=progress, **pipeline_options)
    progress(f"extracting kernels for {target.name} ({target.description})")
    mod, tvm_target = legalized_kernels(prepared.loaded.model, target, prepared.relax_passes)
    where = (
        f"the RPC server at {rpc}"
        if rpc
        else f"'{key}' devices of the tracker at {tracker}"
        if tracker
        else "this machine"
    )
    progress(f"tuning on {where}, {trials} trials, records in {directory}")
    threads = threads or target.threads
    local = rpc is None and tracker is None
    return tune_kernels(
        mod,
        tvm_target,
        trials=trials,
        records=directory,
        cxx=target.cxx,
        threads=threads,
        fresh=fresh,
        rpc=rpc,
        tracker=tracker,
        key=key,
        timeout_s=timeout_s,
        check=_in_model_check(prepared, target, directory, threads, progress) if local else None,
        progress=progress,
    )


def _in_model_check(
    prepared: Prepared, target: Target, directory: Path, threads: int, progress: Callable[[str], None]
) -> Callable[[list[KernelResult]], set[int]]:
    """The check `tune_kernels` runs after its search: which searched kernels lose in the model."""

    def check(kernels: list[KernelResult]) -> set[int]:
        searched = [i for i, k in enumerate(kernels) if k.tuned and k.default_us is not None and k.symbols]
        if not searched:
            return set()
        counts = sorted({threads, 1}, reverse=True)
        progress(
            f"checking {len(searched)} searched kernels in the model against their default schedules "
            f"({ROUNDS} runs each at {' and '.join(map(str, counts))} threads)"
        )
        model, relax_passes = prepared.loaded.model, prepared.relax_passes
        default = lower(model, target, [], relax_passes)
        tuned = lower(model, target, [directory], relax_passes)
        from passc import oracle  # imports onnxruntime: only here

        inputs = oracle.random_inputs([(s.name, s.shape, s.dtype) for s in default.inputs], 0)
        arrays = [inputs[s.name] for s in default.inputs] + [a for _, a in default.params]
        for count in counts:
            before, after = kernel_times(
                [default.executable, tuned.executable], arrays, threads=count, rounds=ROUNDS
            )
            for i in searched:
                ratio = _median_ratio(before, after, kernels[i].symbols)
                if ratio is not None:  # None: the model did not call it (a branch not taken)
                    kernels[i].in_model[count] = ratio
        lost = {i for i in searched if max(kernels[i].in_model.values(), default=0.0) > KEEP_BELOW}
        progress(
            f"kept {len(searched) - len(lost)} searched kernels; {len(lost)} ran no faster "
            "in the model and keep their default schedules"
        )
        return lost

    return check


def _median_ratio(
    before: list[dict[str, float]], after: list[dict[str, float]], symbols: list[str]
) -> float | None:
    """The median over rounds of the kernels' summed time in `after` over that in `before`."""
    pairs = [
        (sum(a.get(s, 0.0) for s in symbols), sum(b.get(s, 0.0) for s in symbols))
        for a, b in zip(before, after, strict=True)
    ]
    ratios = [b / a for a, b in pairs if a > 0 and b > 0]
    return statistics.median(ratios) if ratios else None
