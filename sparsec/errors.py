"""The failure kinds sparsec reports, and the exit code each maps to.

Invariant: every failure a user can cause (a bad file, a bad flag, a bad plan) is raised as
``InputError`` with one line that says what is wrong and what to change; a compressed model
that does not match its reference is ``ValidationError``. Anything else is a bug: a pass that
raises unexpectedly becomes ``InternalError`` naming the pass.
"""

from __future__ import annotations


class SparsecError(Exception):
    """Base class of the errors sparsec reports to users."""

    exit_code = 2


class InputError(SparsecError):
    """Bad input or usage: a missing or broken file, an unknown pass, a bad option (exit 2)."""

    exit_code = 2


class ValidationError(SparsecError):
    """A candidate model failed validation or a gate (exit 1)."""

    exit_code = 1


class InternalError(SparsecError):
    """A bug in sparsec or in a pass (an unexpected exception), named in one line (exit 3)."""

    exit_code = 3
