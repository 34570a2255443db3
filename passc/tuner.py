"""`passc tune`: search for faster kernel schedules with MetaSchedule and keep them as records.

The model goes through the same loading, shape binding and pass pipeline as `passc compile`, so
the fused kernels tuned here are the ones compile builds; compile then applies the records found
in the target's cache (or in the `--records` directories it is given).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from passc.compiler import prepare_model, records_dir
from passc.errors import UsageError
from passc.lowering import legalized_kernels
from passc.metaschedule import TuneReport, parse_address, require_tuning_packages, tune_kernels
from passc.targets import Target, get_target

__all__ = ["tune_model"]


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
    the records the database already holds for this model's kernels are removed first.
    `pipeline_options` are `passes`, `pass_options`, `pipeline_file` and `plugins`, as for compile.
    """
    target = target if isinstance(target, Target) else get_target(target)
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
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
    mod, tvm_target = legalized_kernels(prepared.loaded.model, target.tvm)
    where = (
        f"the RPC server at {rpc}"
        if rpc
        else f"'{key}' devices of the tracker at {tracker}"
        if tracker
        else "this machine"
    )
    progress(f"tuning on {where}, {trials} trials, records in {directory}")
    return tune_kernels(
        mod,
        tvm_target,
        trials=trials,
        records=directory,
        cxx=target.cxx,
        threads=threads or target.threads,
        fresh=fresh,
        rpc=rpc,
        tracker=tracker,
        key=key,
        timeout_s=timeout_s,
        progress=progress,
    )
