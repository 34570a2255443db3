"""`passc tune`: MetaSchedule tuning locally or over TVM RPC, and compile applying its records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import commit_naive_records, conv_with_naive_records, weighted_model

from passc.metaschedule import (
    FAILED_RUN_SECS,
    RECORDS,
    WORKLOADS,
    KernelResult,
    _heaviest,
    forget_failed_records,
    open_records,
)
from passc.tuner import KEEP_BELOW


def _tiny_conv(tmp_path: Path) -> Path:
    """Conv 3→8 (3×3) + bias + ReLU, then a 1×1 conv: two fused kernels to tune."""
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    model = weighted_model(
        "(float[1, 3, 16, 16] x) => (float y)",
        "h = Conv<pads = [1, 1, 1, 1]>(x, w, b) r = Relu(h) y = Conv(r, w2)",
        w=rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        b=rng.standard_normal(8).astype(np.float32),
        w2=rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
    )
    path = tmp_path / "tiny.onnx"
    ir.save(model, path)
    return path


def _records(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / RECORDS).read_text().splitlines() if line.strip()]


def test_tuning_with_nothing_to_measure_on_fails_and_keeps_no_record(tmp_path: Path, run_cli) -> None:
    """An RPC address where no server listens: every measurement fails, so tune says so and exits
    1, and the database holds no record (MetaSchedule stores failures as 1e10 s)."""
    model, records = _tiny_conv(tmp_path), tmp_path / "records"
    code, _, err = run_cli(
        "tune", model, "--target", "host", "--rpc", "127.0.0.1:1", "--trials", "8",
        "--records", records, "--timeout", "10",
    )  # fmt: skip
    assert code == 1, err
    assert "tuning failed: no kernel could be measured" in err
    assert not (records / RECORDS).is_file() or not _records(records)


def test_failed_measurements_are_never_kept_as_records(tmp_path: Path) -> None:
    good = json.dumps([0, [[["trace"], []], [1.5e-05, 1.6e-05], {"kind": "llvm"}, []]])
    failed = json.dumps([0, [[["trace"], []], [1e10], {"kind": "llvm"}, []]])
    (tmp_path / RECORDS).write_text(f"{good}\n{failed}\n{good}\n")
    assert forget_failed_records(tmp_path) == 1
    assert (tmp_path / RECORDS).read_text() == f"{good}\n{good}\n"
    assert forget_failed_records(tmp_path) == 0


@pytest.mark.slow
def test_tuning_over_rpc_writes_records_that_compile_applies(
    tmp_path: Path, monkeypatch, run_cli, rpc_server: str
) -> None:
    """The issue's check: tune through an RPC server on 127.0.0.1 (as on a board), then the next
    `passc compile` schedules every kernel from the records and still matches onnxruntime."""
    model, records = _tiny_conv(tmp_path), tmp_path / "records"
    scratch = tmp_path / "tmp"  # where the builder's worker processes put candidate libraries
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    code, out, err = run_cli(
        "tune", model, "--target", "host", "--rpc", rpc_server, "--trials", "16", "--records", records
    )
    assert code == 0, err
    assert not list(scratch.glob("passc-candidate-*"))  # every built candidate was cleaned up
    assert f"tuning on the RPC server at {rpc_server}" in err
    assert re.search(r"tuning: \d+/16 trials", err)  # progress with the best latency so far
    lines = out.splitlines()
    assert lines[0].startswith("kernel") and len(lines) == 1 + 2 + 2  # header, two kernels, summary
    searched = [r for r in _records(records) if r]
    assert len(searched) > 2  # the two default schedules, plus candidates measured over RPC
    assert all(0 < float(r[1][1][0]) < FAILED_RUN_SECS for r in searched)  # timed on the server

    code, out, err = run_cli(
        "verify", model, "--target", "host", "--records", records, "-o", tmp_path / "art"
    )
    assert code == 0, err
    assert "verified" in out
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["tuned_kernels"] == manifest["kernels"] == 2
    assert "2 of 2 kernels scheduled from tuning records" in err


@pytest.mark.slow
def test_tuning_through_a_tracker_with_a_device_key(tmp_path: Path) -> None:
    """A device farm: boards register with TVM's RPC tracker under a key; tuning asks it for one."""
    import tvm.rpc
    from tvm.rpc.tracker import Tracker

    import passc

    tracker = Tracker(host="127.0.0.1", port=9300, port_end=9400, silent=True)
    server = tvm.rpc.Server(
        host="127.0.0.1",
        port=9500,
        port_end=9600,
        key="board",
        tracker_addr=(tracker.host, tracker.port),
        silent=True,
    )
    try:
        report = passc.tune(
            _tiny_conv(tmp_path),
            "host",
            trials=8,
            records=tmp_path / "records",
            tracker=f"127.0.0.1:{tracker.port}",
            key="board",
        )
    finally:
        server.terminate()
        tracker.terminate()
    assert report.trials > 0
    assert all(k.best_us is not None and k.best_us <= k.default_us for k in report.kernels)


def test_compile_without_records_uses_the_default_schedules(tmp_path: Path, monkeypatch) -> None:
    import passc

    monkeypatch.setenv("PASSC_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache: no records
    artifact = passc.compile(_tiny_conv(tmp_path), "host", tmp_path / "art")
    assert artifact.manifest["tuned_kernels"] == 0
    assert artifact.manifest["kernels"] == 2


def test_records_that_match_no_kernel_change_nothing(tmp_path: Path, monkeypatch) -> None:
    """A database from another model applies to no kernel of this one."""
    import passc

    other = tmp_path / "other"
    other.mkdir()
    (other / WORKLOADS).write_text("")
    (other / RECORDS).write_text("")
    artifact = passc.compile(_tiny_conv(tmp_path), "host", tmp_path / "art", records=[other])
    assert artifact.manifest["tuned_kernels"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rpc", "127.0.0.1:9190", "--tracker", "127.0.0.1:9190", "--key", "k"], "not both"),
        (["--rpc", "board"], "--rpc must be HOST:PORT"),
        (["--tracker", "127.0.0.1:9190"], "--tracker needs --key"),
        (["--trials", "-1"], "--trials must be 0 or more"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_tune_options_fail_before_any_work(
    tmp_path: Path, run_cli, args: list[str], message: str
) -> None:
    code, _, err = run_cli("tune", _tiny_conv(tmp_path), "--target", "host", *args)
    assert code == 2
    assert message in err
    assert "loading" not in err


def test_tuning_a_device_target_needs_the_device(tmp_path: Path, run_cli) -> None:
    code, _, err = run_cli("tune", _tiny_conv(tmp_path), "--target", "rpi5")
    assert code == 2
    assert "give --rpc HOST:PORT" in err


def test_compile_rejects_a_missing_records_directory(tmp_path: Path, run_cli) -> None:
    code, _, err = run_cli(
        "compile", _tiny_conv(tmp_path), "--target", "host", "--records", tmp_path / "nope"
    )
    assert code == 2
    assert "tuning records directory not found" in err


def test_each_target_and_cpu_has_its_own_records_directory(monkeypatch, tmp_path: Path) -> None:
    import dataclasses

    from passc.targets import get_target

    from passc.compiler import records_dir

    monkeypatch.setenv("PASSC_CACHE_DIR", str(tmp_path))
    host, rpi5 = get_target("host"), get_target("rpi5")
    haswell = dataclasses.replace(host, tvm={**host.tvm, "mcpu": "haswell"})
    dirs = {records_dir(host), records_dir(rpi5), records_dir(haswell)}
    assert len(dirs) == 3
    assert all(d.parent == tmp_path / "tuning" for d in dirs)
    assert records_dir(rpi5).name.startswith("rpi5-cortex-a76-")
    assert records_dir(host) == records_dir(get_target("host"))  # stable across calls


def test_open_records_ignores_directories_without_a_database(tmp_path: Path) -> None:
    assert open_records([tmp_path, tmp_path / "missing"]) is None


def test_forget_records_removes_only_the_given_kernels_records(tmp_path: Path) -> None:
    """`tune --fresh`'s first step: the records of the model's kernels go, every other record (of
    another kernel in the same database) stays and still applies."""
    import onnx_ir as ir
    from passc.targets import get_target
    from tvm.s_tir import meta_schedule as ms

    import passc
    from passc.lowering import legalized_kernels
    from passc.metaschedule import forget_records
    from passc.schedules import default_schedule

    mod, target = legalized_kernels(ir.load(_tiny_conv(tmp_path)), get_target("host").tvm)
    kernels = [t.dispatched[0] for t in ms.relax_integration.extract_tasks(mod, target)]
    assert len(kernels) == 2
    records = tmp_path / "records"
    records.mkdir()
    database = ms.database.JSONDatabase(work_dir=str(records))
    for kernel in kernels:
        with target:
            trace = default_schedule(kernel["main"], target).trace
        for seconds in (1e-3, 2e-3):
            record = ms.database.TuningRecord(trace, database.commit_workload(kernel), [seconds], target)
            database.commit_tuning_record(record)
    assert forget_records(records, [kernels[0]]) == 2
    assert forget_records(records, [kernels[0]]) == 0  # nothing left to remove
    reopened = ms.database.JSONDatabase(work_dir=str(records), allow_missing=False)
    assert not reopened.get_top_k(reopened.commit_workload(kernels[0]), 5)
    assert len(reopened.get_top_k(reopened.commit_workload(kernels[1]), 5)) == 2
    artifact = passc.compile(_tiny_conv(tmp_path), "host", tmp_path / "art", records=[records])
    assert artifact.manifest["tuned_kernels"] == 1


@pytest.mark.parametrize("name", [RECORDS, WORKLOADS])
def test_a_damaged_records_database_is_named(tmp_path: Path, run_cli, name: str) -> None:
    model, records = _tiny_conv(tmp_path), tmp_path / "records"
    commit_naive_records(records, model, 1e-3)
    data = (records / name).read_bytes()
    (records / name).write_bytes(data[: len(data) // 2])
    status, _, err = run_cli("compile", model, "--target", "host", "--records", records, "-o", tmp_path / "a")
    assert status == 1 and f"the tuning records file {records / name} is damaged" in err, err
    assert "Traceback" not in err and not (tmp_path / "a").exists()


def test_a_record_that_loses_in_the_model_gives_way_to_the_default(tmp_path: Path) -> None:
    """`tune --trials 0` checks the records a database holds: each kernel's fastest record claims
    1 ns but is TVM's naive loops; timed in the model against the default schedule it loses, so
    its record goes and the default's stays, which the next compile applies."""
    import passc

    model, records = conv_with_naive_records(tmp_path)
    lines: list[str] = []
    report = passc.tune(model, "host", trials=0, records=records, threads=2, progress=lines.append)
    assert report.trials == 0
    [kernel] = report.kernels
    assert kernel.symbols  # found in the model
    assert set(kernel.in_model) == {1, 2}
    assert min(kernel.in_model.values()) > KEEP_BELOW  # naive loops: slower in the model
    assert kernel.reverted and not kernel.tuned
    assert kernel.best_us == kernel.default_us
    assert any("checking 1 searched kernels in the model" in line for line in lines)
    assert all(r[1][1][0] > 1e-8 for r in _records(records))  # the 1 ns record is gone
    artifact = passc.compile(model, "host", tmp_path / "art", records=[records])
    assert artifact.manifest["tuned_kernels"] == 1  # from the default's record
    inputs = artifact.random_inputs()
    default = passc.compile(model, "host", tmp_path / "default", records=[])
    np.testing.assert_array_equal(artifact(**inputs)["y"], default(**inputs)["y"])


def test_the_in_model_check_keeps_only_kernels_faster_in_the_model(tmp_path: Path, monkeypatch) -> None:
    """The decision alone, on timings given to it: per round, a kernel's searched time over its
    default time; a kernel stays searched only if the median is at most KEEP_BELOW at each thread
    count checked."""
    import passc.tuner as tuner

    model, records = _tiny_conv(tmp_path), tmp_path / "records"
    commit_naive_records(records, model, 1e-9)

    import onnx_ir as ir
    import tvm
    from passc.targets import get_target

    from passc.lowering import legalized_kernels

    mod, _ = legalized_kernels(ir.load(model), get_target("host").tvm)
    first, second = sorted(v.name_hint for v, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))

    def fake_times(executables, arrays, *, threads, rounds):
        default = [{first: 1.0, second: 1.0} for _ in range(rounds)]
        # first: faster at both thread counts but for one outlier round; second: slower at 1 thread
        tuned = [{first: 0.9, second: 0.95 if threads > 1 else 1.05} for _ in range(rounds)]
        tuned[0][first] = 5.0
        return [default, tuned]

    monkeypatch.setattr(tuner, "kernel_times", fake_times)
    report = tuner.tune_model(model, "host", trials=0, records=records, threads=2)
    kept = {k.symbols[0]: not k.reverted for k in report.kernels}
    assert kept == {first: True, second: False}
    by_name = {k.symbols[0]: k for k in report.kernels}
    assert by_name[first].in_model == {2: 0.9, 1: 0.9}
    assert by_name[second].in_model == {2: 0.95, 1: 1.05}


_KERNEL_TIMES_AT_2_THREADS = """
import sys
import numpy as np
import onnx_ir as ir
import tvm
from passc.errors import PasscError
from passc.lowering import lower
from passc.runtime import kernel_times
from passc.targets import get_target

lowered = lower(ir.load(sys.argv[1]), get_target("host").tvm, [])
arrays = [np.zeros(s.shape, s.dtype) for s in lowered.inputs] + [a for _, a in lowered.params]
try:
    kernel_times([lowered.executable], arrays, threads=2, rounds=1)
except PasscError as err:
    print("error:", err)
tvm.get_global_func("runtime.config_threadpool")(1, 2)
print("pool threads:", tvm.get_global_func("runtime.NumThreads")())
"""


def test_kernel_times_runs_the_thread_count_it_is_given(tmp_path: Path) -> None:
    """TVM sizes its thread pool once per process (without TVM_NUM_THREADS: half the logical CPUs
    on x86, one thread on 2 vCPUs) and cannot grow it later, so the in-model check at 2 threads
    once timed 1 thread. `kernel_times` sizes the pool itself when it may, and refuses otherwise."""
    import os
    import subprocess
    import sys

    model = _tiny_conv(tmp_path)
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    runs = {}
    for name, env in (("unset", clean), ("one", {**clean, "TVM_NUM_THREADS": "1"})):
        done = subprocess.run(
            [sys.executable, "-c", _KERNEL_TIMES_AT_2_THREADS, str(model)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        runs[name] = done.stdout
    assert "error" not in runs["unset"] and "pool threads: 2" in runs["unset"]
    assert "pool threads: 1" in runs["one"]
    assert "runs at most 1 threads, not 2: set TVM_NUM_THREADS=2" in runs["one"]


def test_tuning_spends_trials_on_the_kernels_that_take_the_time() -> None:
    kernels = [
        KernelResult("small", 1, 1.0),
        KernelResult("big", 1, 80.0),
        KernelResult("called_often", 10, 1.5),
        KernelResult("no_rule", 1, None),
        KernelResult("tiny", 1, 0.5),
    ]
    # total 97.5: big (80) + called_often (15) = 95 reaches 95% after the unmeasured kernel
    assert _heaviest(kernels, 0.95) == [3, 1, 2]
    assert _heaviest(kernels, 1.0) == [3, 1, 2, 0, 4]


def test_only_the_tvm_layer_imports_tvm() -> None:
    """TVM is touched in one layer: lowering, the Relax stage, the backends, the runtime, the
    schedules and MetaSchedule."""
    root = Path(__file__).parent.parent
    allowed = {"passc/lowering.py", "passc/relax_stage.py", "passc/metaschedule.py"}
    importers = set()
    for path in [
        *(root / "passc").rglob("*.py"),
        *(root / "passes").rglob("*.py"),
        *(root / "targets").rglob("*.py"),
    ]:
        text = path.read_text()
        if re.search(r"^\s*(import tvm|from tvm[ .])", text, re.MULTILINE):
            importers.add(path.relative_to(root).as_posix())
    packages = ("passc/schedules/", "passc/backends/", "passc/runtime/")
    outside = {p for p in importers if p not in allowed and not p.startswith(packages)}
    assert not outside, f"TVM imported outside the lowering layer: {sorted(outside)}"
