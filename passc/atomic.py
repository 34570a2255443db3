"""Files and directories that appear whole or not at all: written as a temporary sibling, then renamed."""

from __future__ import annotations

import contextlib
import ctypes
import errno as os_errno
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_file", "atomic_files", "build_directory", "remove_directory"]


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


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps the paths `a` and `b` (Linux's renameat2 with RENAME_EXCHANGE); False
    where the OS or the filesystem cannot."""
    libc = _libc()
    if libc is None:
        return False
    at_cwd, rename_exchange = -100, 2
    if libc.renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (os_errno.EINVAL, os_errno.ENOSYS, os_errno.EOPNOTSUPP):
        return False
    raise OSError(errno, os.strerror(errno), str(b))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "renameat2") else None  # glibc 2.28+


def _sweep(final: Path) -> None:
    """Removes the temporary siblings of `final` (`.NAME.tmp-PID-…`, `.NAME.old-PID-…`) left by
    builds on this machine whose process is gone (killed mid-build)."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(\d+)-")
    for sibling in final.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and not _alive(int(match[2])):
            shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_directory(final: Path) -> None:
    """Removes the directory `final`: renamed first to a temporary sibling (one step, so a reader
    sees it whole or not at all), then deleted; what a killed process leaves there the next
    `build_directory` of `final` sweeps. Nothing happens if another process removed it first."""
    aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-{os.getpid()}-"))
    try:
        os.rename(final, aside / final.name)
    except FileNotFoundError:
        pass
    shutil.rmtree(aside, ignore_errors=True)


def build_directory(final: Path, fill: Callable[[Path], None], *, replace: bool) -> Path:
    """Runs `fill(tmp)` on an empty temporary directory beside `final`, then renames it to `final`.

    If `fill` fails, nothing is left behind. With `replace`, an existing `final` is swapped out
    only once the new one is complete, in one atomic exchange where the OS has one (Linux's
    renameat2), so that `final` always holds a whole old or a whole new directory; without it, an
    existing `final` is kept as it is (a cache entry that another process finished first).
    Temporary siblings left by killed builds are removed first.
    """
    if final.exists() and not replace:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-{os.getpid()}-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        fill(tmp)
        while True:
            try:
                os.rename(tmp, final)  # no `final` yet (fails if another process made one)
                break
            except OSError as err:
                if err.errno not in (os_errno.ENOTEMPTY, os_errno.EEXIST) or not final.exists():
                    raise
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            if _exchange(tmp, final):  # tmp now holds the old directory
                shutil.rmtree(tmp, ignore_errors=True)
                break
            remove_directory(final)  # then try the rename again
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not replace and final.is_dir():
            return final
        raise
    return final
