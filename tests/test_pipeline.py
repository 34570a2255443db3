"""Pipelines from defaults, --passes, --pass-option and TOML files; the pass log; --verify-each."""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path

import onnx_ir as ir
import pytest

from passc import PasscError, PasscPass, UsageError, register_pass
from passc.loading import bind_input_shapes, load_model
from passc.pipeline import DEFAULT_PASSES, PassSpec, build_pipeline, run_pipeline
from tests.conftest import EXAMPLE


@register_pass("test-scale-weights")
class _ScaleWeights(PasscPass):
    """Multiplies every float initializer by a factor: changes numerics, so --verify-each fails."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options:
        factor: float = 1.01

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype.kind == "f":
                value.const_value = ir.tensor(array * self.options.factor, name=value.name)
        return ir.passes.PassResult(model, modified=self.options.factor != 1.0)


def test_default_pipeline_starts_with_canonicalize() -> None:
    assert build_pipeline(("canonicalize",)) == [PassSpec("canonicalize")]
    specs = build_pipeline(("canonicalize",), passes=["test-scale-weights"])
    assert [s.name for s in specs] == ["canonicalize", "test-scale-weights"]
    specs = build_pipeline((), passes=["test-scale-weights", "canonicalize"])
    assert [s.name for s in specs] == ["canonicalize", "test-scale-weights", "canonicalize"]


def test_a_target_runs_the_default_passes_unless_its_file_names_its_own() -> None:
    from passc.targets import _parse, all_targets

    assert {t.default_passes for t in all_targets().values()} == {DEFAULT_PASSES}
    host = tomllib.loads((resources.files("passc.targets") / "host.toml").read_text())
    assert _parse("custom", {**host, "default_passes": ["fuse"]}).default_passes == ("fuse",)


def test_pass_options_from_the_command_line() -> None:
    specs = build_pipeline((), passes=["test-scale-weights"], pass_options=["test-scale-weights.factor=2"])
    assert specs[1].instantiate().options.factor == 2.0


def test_pipeline_file(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text('passes = ["test-scale-weights"]\n[options.test-scale-weights]\nfactor = 3.0\n')
    specs = build_pipeline(("canonicalize",), pipeline_file=path, pass_options=[])
    assert [s.name for s in specs] == ["canonicalize", "test-scale-weights"]
    assert specs[1].instantiate().options.factor == 3.0
    # the command line overrides the file
    specs = build_pipeline((), pipeline_file=path, pass_options=["test-scale-weights.factor=4"])
    assert specs[1].instantiate().options.factor == 4.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"passes": ["no-such-pass"]}, "unknown pass 'no-such-pass'"),
        ({"pass_options": ["canonicalize.bogus=1"]}, "has no option 'bogus'"),
        ({"pass_options": ["test-scale-weights.factor=2"]}, "not in the pipeline"),
        ({"pass_options": ["factor=2"]}, "expected PASS.KEY=VALUE"),
    ],
)
def test_bad_pipelines_fail_before_any_work(kwargs: dict, message: str, tmp_path: Path, monkeypatch) -> None:
    import passc
    import passc.compiler

    with pytest.raises(UsageError, match=message):
        build_pipeline(("canonicalize",), **kwargs)

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the pipeline was checked")

    monkeypatch.setattr(passc.compiler, "load_model", no_work)
    with pytest.raises(UsageError, match=message):
        passc.compile(EXAMPLE, target="host", output=tmp_path / "art", **kwargs)
    assert not (tmp_path / "art").exists()


def test_bad_pipeline_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("passes = [\n")
    with pytest.raises(UsageError, match="pipeline file"):
        build_pipeline((), pipeline_file=path)
    path.write_text('pases = ["canonicalize"]\n')
    with pytest.raises(UsageError, match="unknown key 'pases'"):
        build_pipeline((), pipeline_file=path)
    path.write_text('passes = ["canonicalize"]\noptions = { canonicalize = 3 }\n')
    with pytest.raises(UsageError, match="must be a table"):
        build_pipeline((), pipeline_file=path)


def test_pass_log_records_counts(dynamic_mlp) -> None:
    model = load_model(dynamic_mlp).model
    bind_input_shapes(model, {"x": (2, 4, 2)})
    records = run_pipeline(model, build_pipeline(("canonicalize",)))
    (record,) = records
    assert record.name == "canonicalize" and record.modified
    assert record.after.nodes < record.before.nodes
    assert record.after.macs == 2 * 3 * 8  # MatMul [2,8]x[8,3], known once shapes are inferred
    assert record.seconds > 0
    assert "seconds" not in record.as_manifest()


def test_verify_each_passes_exact_passes_and_catches_wrong_ones(dynamic_mlp) -> None:
    model = load_model(dynamic_mlp).model
    bind_input_shapes(model, {"x": (2, 4, 2)})
    records = run_pipeline(model, build_pipeline(("canonicalize",)), verify_each=True)
    assert records[0].max_rel_error is not None and records[0].max_rel_error <= 1e-5

    specs = build_pipeline((), passes=["test-scale-weights"])
    with pytest.raises(PasscError, match="pass 'test-scale-weights' changed output 'y'"):
        run_pipeline(model, specs, verify_each=True)
