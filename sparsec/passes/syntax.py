"""The pipeline text syntax: ``name``, ``name(key=value,...)`` and ``file.py:Class(...)`` joined
by commas, with option values written as TOML inline values.

Grammar (whitespace around names, keys and values is ignored)::

    pipeline := pass ("," pass)*
    pass     := NAME | NAME "(" [key "=" value ("," key "=" value)*] ")"
    NAME     := a pass name, ``path/to/file.py:Class``, or either quoted as a TOML string
    value    := a TOML inline value: "basic string", 'literal string', 123, 1.5e-3, inf, true,
                [1, 2], ["a", "b"], {k = 1}
              | a bare word: any other text without a top-level , ( ) [ ] { } or quote,
                read as a string (``importance=l2``, ``nm=2:4``, ``exclude=conv1*|fc``)

Invariants:
- A value means what the same text means in a TOML recipe (``tomllib`` reads it): quoted
  strings may hold commas, parentheses and brackets; only a bare word is sparsec's own.
- ``format_value`` writes the text ``parse_value`` reads back to an equal value of the same
  type (bool, int, float, str, list, dict), so ``format_pass`` of a pass's options parses back
  into the same pass (``PassBase.describe`` is meant to use it).
- Bad text is one ``InputError`` line naming the character (1-based) where the problem starts.
- Nothing of sparsec beyond ``errors`` is imported (``base`` and ``registry`` may import this).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sparsec.errors import InputError

_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_BARE_WORD = re.compile(r"[^\s,()\[\]{}\"'\\#]+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Value:
    """One option value as written: ``value`` parsed, ``text`` as given, ``bare`` when it was
    not quoted nor bracketed (a bare ``12`` is the int 12, or the text '12' for a str option)."""

    value: Any
    text: str
    bare: bool


@dataclass(frozen=True)
class PassText:
    """One pass of a pipeline text: its name (or ``file.py:Class``) and its options."""

    name: str
    options: dict[str, Value]
    position: int  # 1-based character of the pass's first character in the pipeline text


class _TextError(Exception):
    """A syntax problem at ``index`` (0-based, in the text being scanned)."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def _walk(text: str) -> Iterator[tuple[int, str, int]]:
    """(index, char, depth) of every character outside quotes; an opening bracket is yielded
    at its outer depth, a closing one after it closes. Raises ``_TextError`` for a bracket that
    does not match and, once the text is read, for an unterminated quote or bracket."""
    stack: list[tuple[str, int]] = []
    quote, opened, i = "", 0, 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\" and quote == '"':
                i += 1  # skip the escaped character
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote, opened = char, i
        elif char in _CLOSERS:
            yield i, char, len(stack)
            stack.append((char, i))
        elif char in ")]}":
            if not stack or _CLOSERS[stack[-1][0]] != char:
                expected = f"; expected '{_CLOSERS[stack[-1][0]]}'" if stack else ""
                raise _TextError(f"unexpected '{char}'{expected}", i)
            stack.pop()
            yield i, char, len(stack)
        else:
            yield i, char, len(stack)
        i += 1
    if quote:
        raise _TextError(f"unterminated quote ({quote}) opened", opened)
    if stack:
        raise _TextError(f"unclosed '{stack[-1][0]}' opened", stack[-1][1])


def _split(text: str) -> list[tuple[int, str]]:
    """``text`` cut at its top-level commas: (start index, piece) per piece."""
    pieces, start = [], 0
    for i, char, depth in _walk(text):
        if char == "," and depth == 0:
            pieces.append((start, text[start:i]))
            start = i + 1
    pieces.append((start, text[start:]))
    return pieces


def _where(text: str, problem: _TextError, offset: int = 0) -> InputError:
    return InputError(f"pipeline '{text}': {problem} at character {offset + problem.index + 1}")


def parse_pipeline_text(text: str) -> list[PassText]:
    """The passes of a pipeline text, in order (empty pieces between commas are skipped)."""
    try:
        pieces = _split(text)
    except _TextError as problem:
        raise _where(text, problem) from None
    found = []
    for start, piece in pieces:
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            try:
                found.append(_parse_pass(piece.strip(), start + lead))
            except _TextError as problem:
                raise _where(text, problem, start + lead) from None
    return found


def _parse_pass(spec: str, position: int) -> PassText:
    """``name`` or ``name(options)``; ``position`` is where ``spec`` starts in the pipeline."""
    opening = next((i for i, char, depth in _walk(spec) if char == "(" and depth == 0), None)
    if opening is None:
        return PassText(_name(spec), {}, position + 1)
    closing = next(i for i, char, depth in _walk(spec) if char == ")" and depth == 0)
    if spec[closing + 1 :].strip():
        raise _TextError(
            f"unexpected text after ')' of pass '{spec[:opening].strip()}'", closing + 1
        )
    name = _name(spec[:opening].strip())
    if not name:
        raise _TextError("options without a pass name", opening)
    options: dict[str, Value] = {}
    for start, item in _split(spec[opening + 1 : closing]):
        if item.strip():
            key, value = _parse_option(item, opening + 1 + start)
            if key in options:
                raise _TextError(f"option {key} given twice", opening + 1 + start)
            options[key] = value
    return PassText(name, options, position + 1)


def _name(text: str) -> str:
    """A pass name; a quoted one (a file path with spaces or commas) is a TOML string."""
    if text[:1] not in ("'", '"'):
        return text
    try:
        return parse_value(text).value
    except InputError as error:
        raise _TextError(f"pass name {error}", 0) from None


def _parse_option(item: str, index: int) -> tuple[str, Value]:
    key, sep, raw = item.partition("=")
    where = index + len(item) - len(item.lstrip())
    if not sep:
        raise _TextError(f"option '{item.strip()}' needs key=value", where)
    if not _KEY.fullmatch(key.strip()):
        raise _TextError(f"'{key.strip()}' is not an option name", where)
    try:
        return key.strip(), parse_value(raw)
    except InputError as error:
        raise _TextError(f"option {key.strip()}: {error}", where) from None


def parse_value(raw: str) -> Value:
    """One option value: a TOML inline value, else a bare word (a string); see the module."""
    text = raw.strip()
    if not text:
        return Value("", text, True)
    if text[0] in "\"'[{":
        try:
            _whole(text)
            return Value(_toml(text), text, False)
        except (ValueError, _TextError) as error:
            hint = "; strings inside [ ] and { } need quotes" if text[0] in "[{" else ""
            raise InputError(f"{text} is not a TOML value ({error}{hint})") from None
    try:
        _whole(text)
        value = _toml(text)
    except (ValueError, _TextError):
        return Value(text, text, True)
    if isinstance(value, (bool, int, float)):
        return Value(value, text, True)
    return Value(text, text, True)  # a date or time in TOML: kept as the text


def _whole(text: str) -> None:
    """Refuse what TOML would read as a value followed by more: a comment or another line."""
    for _, char, depth in _walk(text):
        if char == "#" or (char in "\r\n" and depth == 0):
            raise ValueError(f"{char!r} outside quotes")


def _toml(text: str) -> Any:
    try:  # here: the registry's import stays light
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError as error:
        raise ValueError(str(error).split(" (at line")[0]) from None


def format_value(value: Any, *, bare: bool = True) -> str:
    """``value`` as pipeline text that ``parse_value`` reads back equal: TOML, except that a
    string that reads back as itself is written as a bare word when ``bare``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # inf, -inf, nan
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item, bare=False) for item in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_key(k)} = {format_value(v, bare=False)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    text = value if isinstance(value, str) else str(value)  # a Path, an enum, ...
    if bare and _BARE_WORD.fullmatch(text) and parse_value(text).value == text:
        return text
    return _quoted(text)


def _key(key: Any) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else _quoted(text)


def _quoted(text: str) -> str:
    """A TOML basic string."""
    return '"' + "".join(_escape(char) for char in text) + '"'


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char


def format_pass(name: str, options: Mapping[str, Any]) -> str:
    """``name(key=value,...)`` (just ``name`` without options), values by ``format_value``."""
    if not options:
        return name
    return f"{name}({','.join(f'{k}={format_value(v)}' for k, v in options.items())})"
