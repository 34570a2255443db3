"""Files and directories that appear whole or not at all: written as a temporary sibling, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_file", "build_directory"]


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """A temporary path beside `final` (same suffix) to write; renamed onto `final` when the block
    succeeds, removed when it fails. The result has `final`'s permissions if it existed, else
    those of an ordinary new file (mkstemp's are private)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=final.suffix, prefix=f".{final.stem}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if final.exists():
            shutil.copymode(final, tmp)
        else:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


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
