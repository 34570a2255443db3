"""passc: a model compiler for edge devices.

art = passc.compile("model.onnx", target="rpi5", output="build/model.rpi5",
                    input_shapes={"input": (1, 3, 224, 224)})
outputs = passc.load("build/model.host")(input=x)
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path
from typing import Any

from passc.artifact import Artifact
from passc.errors import PasscError, UsageError
from passc.pass_base import PasscPass, RelaxPass, RelaxPassResult
from passc.paths import cache_dir
from passc.registry import register_pass

__all__ = [
    "Artifact",
    "PasscError",
    "PasscPass",
    "RelaxPass",
    "RelaxPassResult",
    "UsageError",
    "__version__",
    "cache_dir",
    "compile",
    "load",
    "register_pass",
    "tune",
]


def compile(  # noqa: A001 - the name users expect, like tvm.compile
    model: Any,
    target: str = "host",
    output: str | Path | None = None,
    **options: Any,
) -> Artifact:
    """Compiles a model for a target and returns the artifact.

    `model` is an .onnx path, an onnx/onnx_ir model or a torch module (then pass
    `example_inputs=(x, ...)`). `output` defaults to `build/<model name>.<target>`. Keyword options
    are those of `passc compile`: input_shapes, passes, pass_options, pipeline_file, plugins,
    verify_each, bundle, depfile, threads, records, progress.
    """
    from passc.compiler import compile_model

    if output is None:
        stem = Path(model).stem if isinstance(model, str | Path) else type(model).__name__.lower()
        output = Path("build") / f"{stem}.{target}"
    return compile_model(model, target, output, **options).artifact


def tune(model: Any, target: str = "host", *, trials: int = 500, **options: Any) -> Any:
    """Tunes a model's kernels for a target with MetaSchedule; `passc.compile` then applies the
    records. Keyword options are those of `passc tune`: records, fresh, rpc, tracker, key, threads,
    timeout_s, input_shapes, passes, pass_options, pipeline_file, plugins, progress. Returns a
    `passc.metaschedule.TuneReport`.
    """
    from passc.tuner import tune_model

    return tune_model(model, target, trials=trials, **options)


def load(path: str | Path) -> Artifact:
    """Opens an artifact directory written by `passc compile`."""
    return Artifact(path)
