"""Files and directories that appear whole or not at all: written as a temporary sibling, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_file", "atomic_files", "build_directory"]


@contextlib.contextmanager
def atomic_files(*finals: Path) -> Iterator[Path]:
    """A temporary directory beside `finals` (files of one directory) in which the block writes each
    of them under its own name; when the block succeeds they are renamed onto `finals` in the order
    given, when it fails nothing changes. Name a file that refers to another (a model to its external
    data) last, so that it never points at a missing file. A file keeps the permissions of the one it
    replaces; a new one has those it was written with (an ordinary file's, as the umask gives)."""
    parent = finals[0].parent
    if any(final.parent != parent for final in finals):
        raise ValueError(f"atomic_files takes files of one directory, not {[str(f) for f in finals]}")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{finals[-1].name}.tmp-"))
    try:
        yield tmp
        for final in finals:
            written = tmp / final.name
            if final.exists():
                shutil.copymode(final, written)
            os.replace(written, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """A temporary path to write `final` at (its own name, in a temporary directory beside it),
    renamed onto `final` when the block succeeds: `atomic_files` for one file."""
    with atomic_files(final) as tmp:
        yield tmp / final.name


def build_directory(final: Path, fill: Callable[[Path], None], *, replace: bool) -> Path:
    """Runs `fill(tmp)` on an empty temporary directory beside `final`, then renames it to `final`.

    If `fill` fails, nothing is left behind. With `replace`, an existing `final` is swapped out
    only once the new one is complete; without it, an existing `final` is kept as it is (a cache
    entry that another process finished first).
    """
    if final.exists() and not replace:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        fill(tmp)
        if replace and final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.rename(final, old / final.name)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not replace and final.is_dir():
            return final
        raise
    return final
