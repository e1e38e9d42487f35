"""The failure kinds sparsec reports, and the exit code each maps to.

Invariant: every failure a user can cause (a bad file, a bad flag, a bad plan) is raised as
``InputError`` with one line that says what is wrong and what to change; a compressed model
that does not match its reference is ``ValidationError``. Anything else is a bug: a pass that
raises unexpectedly becomes ``InternalError`` naming the pass.
"""

from __future__ import annotations

import re


class SparsecError(Exception):
    """Base class of the errors sparsec reports to users."""

    exit_code = 2


class InputError(SparsecError):
    """Bad input or usage: a missing or broken file, an unknown pass, a bad option (exit 2)."""

    exit_code = 2


class UsageError(InputError):
    """A bad option or combination of options (exit 2); the CLI points to the command's --help."""


class ValidationError(SparsecError):
    """A candidate model failed validation or a gate (exit 1)."""

    exit_code = 1


class InternalError(SparsecError):
    """A bug in sparsec or in a pass (an unexpected exception), named in one line (exit 3)."""

    exit_code = 3


MESSAGE_LIMIT = 400  # characters of a library's message quoted in one error line
_CPP_LOCATION = re.compile(
    r"/onnxruntime_src/\S+:\d+ [^()]*\([^()]*\)(?: const)? "
)  # file:line, C++ signature
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")


def one_line(error: BaseException | str) -> str:
    """A library's error message as one readable line: whitespace collapsed, onnxruntime's
    status prefix and C++ source location dropped, cut at ``MESSAGE_LIMIT`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = _CPP_LOCATION.sub("", _ORT_STATUS.sub("", text))
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, carriage
    returns, NUL) written as ``\\xNN``; newlines kept when ``newlines`` else written as ``\\n``,
    so a name or path taken from a file can neither recolour the terminal nor forge a line."""
    if not newlines:
        text = text.replace("\n", "\\n").replace("\t", " ")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
