"""Tuning with TVM's MetaSchedule, and the records database `passc compile` applies.

Part of the TVM layer, with `passc.lowering` and `passc.schedules`: the only modules that import TVM.

Tasks are the model's fused, legalized kernels, produced by exactly the preprocessing `passc
compile` runs, so a record matches its kernel by structural hash in a later compile. Before
searching, each task's default schedule (`passc.schedules`) is measured and committed as a record.
That seeds the evolutionary search: its initial population includes the database's best records,
and the default schedule's tile sizes are sampled decisions its mutator can change, so the search
explores around the default as well as MetaSchedule's own design space. It also makes the
database's fastest record, which compile applies, never slower than the default as measured.

Records are a MetaSchedule JSON database (two JSON-lines files) in one directory per target. A
batch is appended when MetaSchedule collects it (when it next returns to that task, or at the end),
so an interrupted run keeps every batch collected so far.
Candidates are measured on this machine (`LocalRunner`) or on a board over TVM RPC: a server
directly (`rpc="HOST:PORT"`) or a tracker and device key, TVM's device farm (`tracker`, `key`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passc.atomic import atomic_file
from passc.errors import PasscError, UsageError

__all__ = [
    "KernelResult",
    "TuneReport",
    "forget_records",
    "open_records",
    "parse_address",
    "require_tuning_packages",
    "tune_kernels",
]

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"

# Candidates a batch builds and measures per task: MetaSchedule's default, down to MIN_BATCH
# when the budget is small, so that every chosen kernel gets a first batch.
BATCH = 64
MIN_BATCH = 8
# Tuning spends its trials on the slowest kernels (by weight × default latency) that together take
# this share of the model's summed kernel time; the rest keep their default schedule.
COVERAGE = 0.95
# Timed runs per candidate, each after a cache flush (`_runner`); their mean is its latency.
FLUSHED_RUNS = 10
# The evolutionary search's population per batch. MetaSchedule's default, 512, is sized for
# budgets of thousands of trials; on a 2-core machine 128 took half the time of 512 between
# batches (4 kernels, 32 trials).
POPULATION = 256


@dataclass
class KernelResult:
    """One tuning task: a fused kernel, how often the model calls it, and its latencies in µs."""

    name: str
    weight: int
    default_us: float | None  # passc's default schedule, as measured (None: no rule applies, or failed)
    best_us: float | None = None  # the fastest record after tuning
    trials: int = 0
    symbols: list[str] = field(default_factory=list)  # the model's kernels (calls) of this task
    tuned: bool = False  # its fastest record is a searched schedule, not the default
    in_model: dict[int, float] = field(default_factory=dict)  # threads -> tuned / default, in the model
    reverted: bool = False  # the search's record lost in the model; the default schedule is kept

    @property
    def speedup(self) -> float | None:
        if self.default_us is None or self.best_us is None:
            return None
        return self.default_us / self.best_us


@dataclass
class TuneReport:
    """What a tuning run measured; latencies are sums of weight × kernel latency, in µs."""

    records: Path
    trials: int
    seconds: float
    kernels: list[KernelResult] = field(default_factory=list)

    def total(self, which: str) -> float:
        """Σ weight × latency over kernels measured both ways (`which`: "default_us" or "best_us")."""
        both = [k for k in self.kernels if k.default_us is not None and k.best_us is not None]
        return sum(k.weight * getattr(k, which) for k in both)


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """ "HOST:PORT" → (host, port), or a UsageError naming the flag."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{flag} must be HOST:PORT, got {text!r}")
    return host, int(port)


def open_records(directories: list[Path]) -> Any | None:
    """The tuning records in `directories` as one MetaSchedule database (the fastest record of
    a kernel wins across them), or None when none of them holds records."""
    from tvm.s_tir import meta_schedule as ms

    present = [d for d in directories if (d / WORKLOADS).is_file() and (d / RECORDS).is_file()]
    if not present:
        return None
    for directory in present:
        check_database(directory)
    _import_cpu_tensor_intrinsics()  # records may tensorize with them
    databases = [ms.database.JSONDatabase(work_dir=str(d), allow_missing=False) for d in present]
    return databases[0] if len(databases) == 1 else ms.database.UnionDatabase(*databases)


def check_database(records: Path) -> None:
    """PasscError naming the file and line when a records database in `records` is damaged (a
    line that is not JSON: a truncated or edited file), before MetaSchedule reads it."""
    for name in (WORKLOADS, RECORDS):
        path = records / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                if line.strip():
                    json.loads(line)
            except ValueError:
                raise PasscError(
                    f"the tuning records file {path} is damaged (line {number} is not JSON): "
                    "remove it, or tune again with --fresh into another --records directory"
                ) from None


def forget_records(records: Path, kernels: list[Any]) -> int:
    """Removes the records of `kernels` (their IRModules) from the database in the directory
    `records`; returns how many records it removed.

    A record line is [workload index, record] and workload line i is [structural hash, module].
    The records file is rewritten, atomically, without the lines of these kernels' workloads (the
    database finds each kernel's workload, structurally equal, and gives its hash); the workload
    lines stay, so every other record keeps its index.
    """
    from tvm.s_tir import meta_schedule as ms

    if not ((records / WORKLOADS).is_file() and (records / RECORDS).is_file()):
        return 0
    database = ms.database.JSONDatabase(work_dir=str(records), allow_missing=False)
    hashes = {str(database.commit_workload(k).as_json()[0]) for k in kernels if database.has_workload(k)}
    workloads = [line for line in (records / WORKLOADS).read_text().splitlines() if line.strip()]
    forgotten = {i for i, line in enumerate(workloads) if json.loads(line)[0] in hashes}
    lines = [line for line in (records / RECORDS).read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)[0] not in forgotten]
    if len(kept) < len(lines):
        with atomic_file(records / RECORDS) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


# MetaSchedule stores a candidate that failed to build or run with this time (1e10 s): never a
# real measurement, and never kept.
FAILED_RUN_SECS = 1e9


def forget_failed_records(records: Path) -> int:
    """Removes the records of failed measurements from the database in `records` (rewritten
    atomically); returns how many it removed. A record line is [workload index, [trace, run
    seconds, target, arguments]]."""
    path = records / RECORDS
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]

    def failed(line: str) -> bool:
        run_secs = json.loads(line)[1][1]
        return not run_secs or any(float(t) >= FAILED_RUN_SECS for t in run_secs)

    kept = [line for line in lines if not failed(line)]
    if len(kept) < len(lines):
        with atomic_file(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def tune_kernels(
    mod: Any,
    target: Any,
    *,
    trials: int,
    records: Path,
    cxx: str,
    threads: int,
    fresh: bool = False,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    timeout_s: float = 60.0,
    check: Callable[[list[KernelResult]], set[int]] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> TuneReport:
    """Tunes the legalized Relax module `mod`'s kernels for `target` with a budget of `trials`
    measured candidates in all (0: no search), appending records to the database directory
    `records`. With `fresh`, the kernels' earlier records are removed first (`forget_records`):
    compile applies a kernel's fastest record as measured, so records timed another way (hot
    rather than cold) or on a busier machine would otherwise keep winning over the new ones.

    `check`, given the kernels after the search, returns the indices of those whose fastest
    record must give way to the default schedule (it lost in the whole model): their records are
    removed and the default's record, as measured in this run, is committed again.
    """
    from tvm.s_tir import meta_schedule as ms

    if trials < 0:
        raise UsageError(f"--trials must be 0 or more, got {trials}")
    start = time.perf_counter()
    try:
        records.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PasscError(
            f"cannot write tuning records at {records}: {err.strerror or err} "
            "(give --records DIR, or set PASSC_CACHE_DIR to a writable directory)"
        ) from None
    tune_target = _with_cores(target, threads)
    tasks = ms.relax_integration.extract_tasks(mod, tune_target)
    if not tasks:
        raise PasscError("the model has no kernels to tune")
    check_database(records)
    if fresh:
        removed = forget_records(records, [task.dispatched[0] for task in tasks])
        progress(f"removed {removed} earlier records of these kernels")
    database = ms.database.JSONDatabase(work_dir=str(records))
    _import_cpu_tensor_intrinsics()
    with _runner_environment(threads), _quiet_metaschedule():
        builder = ms.builder.LocalBuilder(
            timeout_sec=timeout_s, f_build=_build, f_export=functools.partial(_export, cxx)
        )
        runner = _runner(rpc, tracker, key, timeout_s)
        progress(f"measuring the default schedules of {len(tasks)} kernels")
        kernels, defaults = _measure_defaults(tasks, tune_target, database, builder, runner)
        for kernel, symbols in zip(kernels, _task_symbols(mod, tasks), strict=True):
            kernel.symbols = symbols
        searched, succeeded = (
            _search(tasks, kernels, trials, threads, builder, runner, database, progress)
            if trials
            else (0, 0)
        )
    dropped = forget_failed_records(records)
    if searched and not succeeded:
        raise PasscError(f"tuning failed: none of the {searched} candidates measured could be timed")
    if dropped:
        progress(f"{dropped} candidates failed to build or run; their records were not kept")
    for i, (kernel, task) in enumerate(zip(kernels, tasks, strict=True)):
        best = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
        kernel.best_us = _mean_us(best[0].run_secs) if best else None
        kernel.tuned = bool(best) and (i not in defaults or str(best[0].trace) != str(defaults[i].trace))
    if check is not None:
        reverted = sorted(i for i in check(kernels) if i in defaults)
        forget_records(records, [tasks[i].dispatched[0] for i in reverted])
        for i in reverted:
            database.commit_tuning_record(defaults[i])
            kernels[i].best_us, kernels[i].tuned, kernels[i].reverted = kernels[i].default_us, False, True
    return TuneReport(records, searched, time.perf_counter() - start, kernels)


def _search(
    tasks: list[Any],
    kernels: list[KernelResult],
    trials: int,
    threads: int,
    builder: Any,
    runner: Any,
    database: Any,
    progress: Callable[[str], None],
) -> int:
    """MetaSchedule's evolutionary search over the kernels that take the time, `trials` in all;
    returns how many candidates it measured."""
    from tvm.s_tir import meta_schedule as ms

    chosen = _heaviest(kernels, COVERAGE)
    progress(f"tuning the {len(chosen)} kernels that take {COVERAGE:.0%} of the time with default schedules")
    watcher = _Progress(kernels, chosen, trials, progress)
    with tempfile.TemporaryDirectory(prefix="passc-tune-") as work_dir:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [tasks[i] for i in chosen],
            work_dir,
            strategy=ms.search_strategy.EvolutionarySearch(population_size=POPULATION),
            num_threads=threads,
        )
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=work_dir,
            max_trials_global=trials,
            num_trials_per_iter=max(MIN_BATCH, min(BATCH, trials // len(chosen))),
            builder=watcher.builder(builder),
            runner=runner,
            database=database,
            cost_model="xgb",
            measure_callbacks=[*_default_callbacks(), watcher.callback()],
        )
    return watcher.trials, watcher.succeeded


def _measure_defaults(
    tasks: list[Any], target: Any, database: Any, builder: Any, runner: Any
) -> tuple[list[KernelResult], dict[int, Any]]:
    """Builds and times each task's default schedule in one batch and commits it as a record;
    returns the kernels and, by task index, the records committed. When no kernel could be
    measured (an unreachable RPC server, a board that cannot load the library), PasscError with
    the first failure."""
    from tvm.s_tir import meta_schedule as ms

    from passc.schedules import default_schedule

    kernels = [KernelResult(task.task_name, int(task.weight), None) for task in tasks]
    scheduled = []
    for i, task in enumerate(tasks):
        with target:
            schedule = default_schedule(task.dispatched[0]["main"], target)
        if schedule is not None:
            scheduled.append((i, task, schedule))
    built = builder.build([ms.builder.BuilderInput(s.mod, target) for _, _, s in scheduled])
    inputs, measured, defaults, errors = [], [], {}, []
    for (i, task, schedule), result in zip(scheduled, built, strict=True):
        if result.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args))
            measured.append((i, task, schedule, args))
        else:
            errors.append(f"building {task.task_name}: {result.error_msg}")
    try:
        for (i, task, schedule, args), future in zip(measured, runner.run(inputs), strict=True):
            result = future.result()
            if result.error_msg is not None or not result.run_secs:
                errors.append(f"running {task.task_name}: {result.error_msg or 'no time measured'}")
                continue
            kernels[i].default_us = _mean_us(result.run_secs)
            workload = database.commit_workload(task.dispatched[0])
            defaults[i] = ms.database.TuningRecord(schedule.trace, workload, result.run_secs, target, args)
            database.commit_tuning_record(defaults[i])
    finally:
        for result in built:
            if result.artifact_path is not None:
                shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
    if scheduled and not defaults:
        first = (errors or ["no measurement came back"])[0].strip().splitlines()
        raise PasscError(f"tuning failed: no kernel could be measured ({first[0] if first else '?'})")
    return kernels, defaults


def _task_symbols(mod: Any, tasks: list[Any]) -> list[list[str]]:
    """For each task, the names of the kernels in `mod` it stands for (a task is one kernel
    structure; a model may call several kernels of that structure)."""
    import tvm
    from tvm_ffi import structural_hash

    names: dict[int, list[str]] = {}
    for var, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            key = structural_hash(func.with_attr("global_symbol", "main"))
            names.setdefault(key, []).append(var.name_hint)
    return [names.get(structural_hash(task.dispatched[0]["main"]), []) for task in tasks]


def require_tuning_packages() -> None:
    """A PasscError naming what to install when the `tune` extra's packages are missing."""
    missing = [
        name for name in ("xgboost", "cloudpickle", "psutil") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise PasscError(f"tuning needs {', '.join(missing)}: pip install 'passc[tune]'")


def _heaviest(kernels: list[KernelResult], coverage: float) -> list[int]:
    """Indices of the slowest kernels, slowest first, that take `coverage` of the summed time.
    Kernels without a default schedule (unmeasured, so likely slow loops) come first."""
    order = sorted(
        range(len(kernels)), key=lambda i: -kernels[i].weight * (kernels[i].default_us or math.inf)
    )
    total = sum(k.weight * k.default_us for k in kernels if k.default_us is not None)
    chosen, covered = [], 0.0
    for i in order:
        chosen.append(i)
        if kernels[i].default_us is not None:
            covered += kernels[i].weight * kernels[i].default_us
            if covered >= coverage * total:
                break
    return chosen


def _import_cpu_tensor_intrinsics() -> None:
    """Registers the CPU tensor intrinsics (x86, Arm) that tuning and record replay may use.

    MetaSchedule's TuneContext imports `tvm.s_tir.tensor_intrin`, whose `__init__` registers every
    intrinsic TVM has, CUDA's and ROCm's too: 27 s or more per process. Putting the package in
    `sys.modules` unexecuted, then importing only the CPU submodules, takes about 1.5 s.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            return
        sys.modules[name] = importlib.util.module_from_spec(spec)
    importlib.import_module(f"{name}.x86")
    importlib.import_module(f"{name}.arm_cpu")


def _mean_us(run_secs: Any) -> float:
    values = [float(s) for s in run_secs]
    return sum(values) / len(values) * 1e6


class _Progress:
    """Reports tuning progress: when a batch is built, and after each batch is collected, the
    trials so far and the model's summed kernel latency, default and best so far.

    `callback` is the measure callback MetaSchedule calls with each collected batch; `builder`
    wraps the real builder to say when a batch starts (MetaSchedule collects batches only when it
    returns to their task, which on a large model is minutes later).
    """

    def __init__(
        self, kernels: list[KernelResult], tuned: list[int], budget: int, progress: Callable[[str], None]
    ) -> None:
        self.kernels, self.tuned, self.budget, self.progress = kernels, tuned, budget, progress
        self.trials, self.sent, self.succeeded = 0, 0, 0
        self.best = {i: k.default_us for i, k in enumerate(kernels)}
        self.started = time.perf_counter()

    def callback(self) -> Any:
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        watcher = self

        @derived_object
        class Callback(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results) -> None:
                watcher.measured(int(task_id), runner_results)

        return Callback()

    def builder(self, inner: Any) -> Any:
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.builder import PyBuilder

        watcher = self

        @derived_object
        class Builder(PyBuilder):
            def build(self, build_inputs: list[Any]) -> list[Any]:
                watcher.sent += len(build_inputs)
                watcher.progress(
                    f"tuning: building {len(build_inputs)} candidates ({watcher.sent}/{watcher.budget} "
                    f"sent, {watcher.trials} measured, {watcher.elapsed():.0f} s)"
                )
                return inner.build(build_inputs)

        return Builder()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def measured(self, task_id: int, runner_results: list[Any]) -> None:
        """Called with each collected batch of the `task_id`-th tuned kernel."""
        task_id = self.tuned[task_id]
        self.trials += len(runner_results)
        self.kernels[task_id].trials += len(runner_results)
        for result in runner_results:
            if result.error_msg is None and result.run_secs:
                self.succeeded += 1
                us = _mean_us(result.run_secs)
                current = self.best[task_id]
                self.best[task_id] = us if current is None else min(current, us)
        known = [i for i, k in enumerate(self.kernels) if k.default_us is not None]
        default = sum(self.kernels[i].weight * self.kernels[i].default_us for i in known)
        best = sum(self.kernels[i].weight * self.best[i] for i in known)
        self.progress(
            f"tuning: {self.trials}/{self.budget} trials, {self.elapsed():.0f} s; summed kernel latency "
            f"{default / 1e3:.3f} ms with default schedules, {best / 1e3:.3f} ms best so far"
        )


def _default_callbacks() -> list[Any]:
    """MetaSchedule's default measure callbacks: add to the database, remove the built
    candidate, update the cost model."""
    from tvm.s_tir import meta_schedule as ms

    return list(ms.measure_callback.MeasureCallback.create("default"))


def _with_cores(target: Any, threads: int) -> Any:
    """The target with the core count MetaSchedule's search needs ("num-cores")."""
    import tvm

    return tvm.target.Target({**dict(target.export()), "num-cores": threads})


def _runner(rpc: str | None, tracker: str | None, key: str | None, timeout_s: float) -> Any:
    """Where candidates run: this machine, an RPC server, or a device from an RPC tracker.

    Each timed run starts with the kernel's weights and output flushed from the CPU caches (its
    first argument, the input a previous layer just wrote, stays), as in the model: a kernel timed
    hot can win with a schedule that is slower there.
    """
    from tvm.s_tir import meta_schedule as ms

    timing = ms.runner.EvaluatorConfig(
        number=1, repeat=FLUSHED_RUNS, min_repeat_ms=0, enable_cpu_cache_flush=True
    )
    if rpc is None and tracker is None:
        return ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=timing)
    if rpc is not None:
        host, port = parse_address(rpc, "--rpc")
        config = ms.runner.RPCConfig(host, port, "direct", session_timeout_sec=int(timeout_s))
        return ms.runner.RPCRunner(config, timing, f_create_session=functools.partial(_connect, host, port))
    host, port = parse_address(tracker, "--tracker")
    if not key:
        raise UsageError("--tracker needs --key, the device key the boards registered with")
    config = ms.runner.RPCConfig(host, port, key, session_timeout_sec=int(timeout_s))
    return ms.runner.RPCRunner(config, timing)


def _connect(host: str, port: int, _config: Any) -> Any:
    """An RPC session with the server at host:port (runs in the runner's worker process)."""
    from tvm import rpc

    return rpc.connect(host, port)


def _build(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build, without importing every tensor intrinsic TVM has (its default
    imports CUDA's and ROCm's too, 27 s in each fresh worker process)."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _export(cxx: str, module: Any) -> str:
    """A candidate as a shared library linked by the target's C++ compiler, so a board can load it."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="passc-candidate-"), "candidate.so")
    module.export_library(path, fcompile=cc.cross_compiler(cxx))
    return path


@contextlib.contextmanager
def _runner_environment(threads: int) -> Iterator[None]:
    """TVM_NUM_THREADS for the worker processes that run candidates on this machine."""
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TVM_NUM_THREADS"]
        else:
            os.environ["TVM_NUM_THREADS"] = saved


@contextlib.contextmanager
def _quiet_metaschedule() -> Iterator[None]:
    """MetaSchedule's logging, contained to one tuning run.

    It logs a table per batch at INFO to stdout (passc reports progress itself), adds file
    handlers for a work directory that is deleted after the run, and fails on a second run in the
    same process unless its logger starts without handlers. All of that is undone afterwards.
    """
    name = "tvm.s_tir.meta_schedule"
    logger = logging.getLogger(name)
    level, handlers = logger.level, logger.handlers[:]
    logger.setLevel(logging.WARNING)
    logger.handlers = []
    try:
        yield
    finally:
        for each in [
            logger,
            *(logging.getLogger(n) for n in logging.root.manager.loggerDict if n.startswith(name)),
        ]:
            for handler in each.handlers[:]:
                if handler not in handlers:
                    handler.close()
                    each.removeHandler(handler)
        logger.setLevel(level)
        logger.handlers = handlers
