"""Dumps each bench model's scheduled TIR, for byte-for-byte checks that a change keeps the schedules.

    python bench/scheduled_tir.py --out DIR [--mcpu CPU] [--cache-dir DIR] [NAME ...]

For each model of the suite (bench/models.py; default: all of NAMES) it runs what `passc compile`
runs for the host target with its default passes, up to passc's default schedules: the pass
pipeline (`prepare_model`), the import into Relax, the legalize phases and the schedule passes.
Tuning records are not applied (schedules only). It writes the module's TVMScript to
`DIR/<model>.py`, the schedules its rules declined (their recomputation guard) to
`DIR/<model>.declined`, or what stopped it to `DIR/<model>.error` (the dump goes on with the next
model, and exits with 1). `--mcpu` fixes the host target's CPU (default: this machine's, resolved), so
that dumps from different machines or days compare; `diff -r` of two dumps is then empty exactly
when every kernel got the same schedule.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import platformdirs
from models import NAMES, suite
from passc.targets import get_target

from passc.compiler import prepare_model
from passc.errors import PasscError
from passc.lowering import resolve_target


def scheduled(model: Any, target: Any) -> tuple[Any, tuple[str, ...]]:
    """The model's Relax module after the CPU backend's legalize phases and default schedules, as
    `passc compile` builds it before the rest of its Relax pipeline (no tuning records), and the
    schedules the rules declined."""
    from passc.backends import backend_for
    from passc.lowering import import_and_transform

    imported = import_and_transform(model, target)
    backend = backend_for(target)
    mod, _, declined = backend.schedule(backend.legalize(imported.mod, imported.target), imported.target, [])
    return mod, declined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models to dump (default: all of {', '.join(NAMES)})")
    parser.add_argument("--out", type=Path, required=True, help="directory for the <model>.py dumps")
    parser.add_argument("--mcpu", help="the host target's CPU (default: this machine's)")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(platformdirs.user_cache_dir("passc")) / "bench"
    )
    args = parser.parse_args(argv)

    os.environ["PASSC_SCHEDULES"] = "1"  # passc's legalizations and schedules, whatever the caller set
    target = get_target("host")
    mcpu = args.mcpu or resolve_target(target.tvm)["mcpu"]
    target = dataclasses.replace(target, tvm={**target.tvm, "mcpu": mcpu})
    models = suite(args.cache_dir, args.names or None)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, model in models.items():
        start = time.perf_counter()
        for stale in (args.out / f"{name}.{ext}" for ext in ("py", "error", "declined")):
            stale.unlink(missing_ok=True)
        prepared = prepare_model(model.path, target, input_shapes=model.input_shapes)
        try:
            mod, declined = scheduled(prepared.loaded.model, target)
            script = mod.script()
        except PasscError as err:
            cause = err.__cause__ or err
            (args.out / f"{name}.error").write_text(f"{err}\n{type(cause).__name__}: {cause}\n")
            print(f"{name}: FAILED: {err}", flush=True)
            failed.append(name)
            continue
        (args.out / f"{name}.py").write_text(script)
        if declined:
            (args.out / f"{name}.declined").write_text("".join(f"{line}\n" for line in declined))
        print(f"{name}: {len(script):,} characters in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"{len(models) - len(failed)} dumps for mcpu {mcpu} in {args.out}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
