"""The runtime bundle: `passc-run` plus the TVM runtime libraries, built for the target.

The libraries come from the target platform's `apache-tvm` and `apache-tvm-ffi` wheels, at exactly
the versions of the compiler that built model.so, fetched once with `pip download` and cached
under the user's cache dir. `passc-run` is compiled from `runtime/passc_run.cc` against the
tvm_ffi headers in that wheel, with the target's C++ toolchain, and cached by a hash of its inputs.
Each cache entry records its files' sha256 when it is made and is checked before every use: a
damaged entry (a truncated or edited file, one missing) is rebuilt, never copied into a bundle.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from passc.atomic import build_directory, remove_directory
from passc.errors import PasscError
from passc.loading import sha256_file
from passc.lowering import tvm_versions
from passc.paths import cache_dir
from passc.targets import Target

__all__ = ["RUNTIME_FILES", "bundle_files"]

# What a bundle adds to an artifact (beside model.so and manifest.json).
RUNTIME_FILES = ("passc-run", "libtvm_runtime.so", "libtvm_ffi.so")

_WHEEL_MEMBERS = {
    "apache-tvm": {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so"},
    "apache-tvm-ffi": {"libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"},
}


# Each cache entry's record of its files: {relative path: sha256}.
_CHECKSUMS = ".sha256.json"


def _intact(entry: Path) -> bool:
    """True when every file the entry recorded is there with its recorded sha256."""
    try:
        sums = json.loads((entry / _CHECKSUMS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(sums, dict) and all(
        (entry / name).is_file() and sha256_file(entry / name) == digest for name, digest in sums.items()
    )


def cached_entry(final: Path, fill: Callable[[Path], None]) -> Path:
    """The cache directory `final`, made by `fill(tmp)` when it is missing or damaged.

    The files `fill` writes are recorded with their sha256; an existing entry is used only if
    they all still match. A damaged entry is moved aside (one rename, so a concurrent user sees
    either it or nothing) and removed, then built again."""

    def fill_and_record(tmp: Path) -> None:
        fill(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        sums = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files}
        (tmp / _CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=final.parent, prefix=".probe-")
        probe.close()
    except OSError as err:
        raise PasscError(
            f"cannot write passc's cache at {cache_dir()}: {err.strerror or err}; "
            "set PASSC_CACHE_DIR to a writable directory"
        ) from None
    if final.exists() and not _intact(final):
        remove_directory(final)
    return build_directory(final, fill_and_record, replace=False)


def _download_wheels(target: Target, dest: Path) -> None:
    versions = tvm_versions()
    python_version = f"{sys.version_info.major}{sys.version_info.minor}"
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--platform", target.wheel_platform, "--python-version", python_version,
        "--dest", str(dest),
        *(f"{name}=={version}" for name, version in versions.items()),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        raise PasscError(
            f"cannot download the TVM runtime for {target.wheel_platform} "
            f"({', '.join(f'{k}=={v}' for k, v in versions.items())}): {detail}"
        )


def _runtime_dir(target: Target) -> Path:
    """The target's runtime libraries and the tvm_ffi headers, extracted from its wheels."""
    versions = tvm_versions()
    key = f"{target.wheel_platform}-tvm{versions['apache-tvm']}-ffi{versions['apache-tvm-ffi']}"

    def fill(tmp: Path) -> None:
        wheels = tmp / "wheels"
        _download_wheels(target, wheels)
        for package, members in _WHEEL_MEMBERS.items():
            prefix = package.replace("-", "_") + "-"
            (wheel,) = [w for w in wheels.iterdir() if w.name.startswith(prefix)]
            with zipfile.ZipFile(wheel) as archive:
                for out_name, member in members.items():
                    (tmp / out_name).write_bytes(archive.read(member))
                if package == "apache-tvm-ffi":
                    for info in archive.infolist():
                        if info.filename.startswith("tvm_ffi/include/") and not info.is_dir():
                            out = tmp / "include" / info.filename.removeprefix("tvm_ffi/include/")
                            out.parent.mkdir(parents=True, exist_ok=True)
                            out.write_bytes(archive.read(info))
        shutil.rmtree(wheels)

    return cached_entry(cache_dir() / "runtime" / key, fill)


def _build_runner(target: Target, runtime: Path) -> Path:
    """Compiles passc-run for the target against its runtime libraries; cached by input hash."""
    cxx = target.require_cxx()
    source = resources.files("passc.runtime").joinpath("passc_run.cc").read_bytes()
    # The cache's path is mapped away, so that the runner is the same bytes wherever it is built.
    flags = [
        "-std=c++17", "-O2", f"-ffile-prefix-map={runtime}=runtime", "-Wl,--no-as-needed",
        "-ltvm_ffi", "-ltvm_runtime", "-Wl,-rpath,$ORIGIN", "-Wl,--build-id=none",
    ]  # fmt: skip
    placed = " ".join(f for f in flags if not f.startswith("-ffile-prefix-map"))  # the key: not the path
    inputs = [source, target.cxx.encode(), runtime.name.encode(), placed.encode()]
    key = hashlib.sha256(b"\0".join(inputs)).hexdigest()[:16]

    def fill(tmp: Path) -> None:
        (tmp / "passc_run.cc").write_bytes(source)
        command = [
            cxx, *flags[:3], "-I", str(runtime / "include"), "passc_run.cc", "-o", "passc-run",
            "-L", str(runtime), *flags[3:],
        ]  # fmt: skip
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise PasscError(f"building passc-run with {cxx} failed:\n{done.stderr.strip()}")

    runner_dir = cache_dir() / "runners" / f"{target.name}-{key}"
    return cached_entry(runner_dir, fill) / "passc-run"


def bundle_files(target: Target) -> dict[str, Path]:
    """The files a bundle adds to an artifact, by name: the runner and the runtime libraries."""
    runtime = _runtime_dir(target)
    return {
        "passc-run": _build_runner(target, runtime),
        "libtvm_runtime.so": runtime / "libtvm_runtime.so",
        "libtvm_ffi.so": runtime / "libtvm_ffi.so",
    }
