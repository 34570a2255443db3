"""The two kinds of error a user sees: bad usage (exit 2) and a failed job (exit 1)."""

from __future__ import annotations

__all__ = ["PasscError", "UsageError"]


class PasscError(Exception):
    """A failure the user can act on; the CLI prints its message as one line and exits 1."""

    exit_code = 1


class UsageError(PasscError):
    """Bad input from the user: unknown target, pass or option, unbound dim, bad flag. Exit 2."""

    exit_code = 2
