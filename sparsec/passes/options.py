"""A pass's options as data, read from the pass class itself, and given values converted to
each option's type.

Invariants:
- The class is the one source of truth: an option's name, default and type come from
  ``__init__``'s signature and annotations, its meaning from the Google-style ``Args:`` section
  of ``__init__``'s docstring (else of the class docstring); nothing is written twice.
- A value converts to the option's annotated type only where that is unambiguous: an int for a
  float, an integral float for an int, a list for a tuple; a bare word (``syntax.Value.bare``)
  stays the text written for a ``str`` option (``exclude=0`` means the name '0'), splits
  at ``|`` for a list option (the older list form), and ``True`` is true for a bool option. Anything else that does
  not fit is one ``InputError`` line naming the pass, the option and the type expected.
- Importing this module imports no pass module (nor onnx-ir, numpy).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal, Union

from sparsec.errors import InputError
from sparsec.passes.syntax import Value, format_value, parse_value


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of an option that has none


@dataclass(frozen=True)
class OptionInfo:
    """One option: its name, type (as annotated), default (``REQUIRED`` if none) and meaning."""

    name: str
    type: str
    default: Any
    help: str
    hint: Any = field(default=None, repr=False, compare=False)  # the resolved annotation

    @property
    def required(self) -> bool:
        """Whether the option has no default (it must be given)."""
        return self.default is REQUIRED

    @property
    def default_text(self) -> str:
        """The default as pipeline text ('' for a required option)."""
        return "" if self.required else format_value(self.default)

    def to_json(self) -> dict[str, Any]:
        """The option as JSON data (``default`` a JSON value, ``default_text`` as written)."""
        default = None if self.default is REQUIRED else self.default
        if not isinstance(default, (bool, int, float, str, list, dict, type(None))):
            default = self.default_text
        return {
            "name": self.name,
            "type": self.type,
            "default": list(default) if isinstance(default, tuple) else default,
            "default_text": self.default_text,
            "required": self.required,
            "help": self.help,
        }


@dataclass(frozen=True)
class PassInfo:
    """A pass described: name, one-line summary, class (``module.Qualname``) and options."""

    name: str
    summary: str
    origin: str
    options: tuple[OptionInfo, ...]

    def option(self, name: str) -> OptionInfo | None:
        """The option called ``name``, or None."""
        return next((option for option in self.options if option.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The pass as JSON data (what ``sparsec passes --describe --json`` prints)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "class": self.origin,
            "options": [option.to_json() for option in self.options],
        }


def pass_info(cls: type) -> PassInfo:
    """``cls`` described from its own signature, annotations and docstrings."""
    origin = f"{cls.__module__}.{cls.__qualname__}"
    own_doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")  # not a base class's
    summary = getattr(cls, "summary", "") or own_doc.partition("\n")[0]
    return PassInfo(getattr(cls, "name", ""), summary, origin, options_of(cls))


def options_of(cls: type) -> tuple[OptionInfo, ...]:
    """The keyword options of ``cls.__init__`` in signature order (none without an ``__init__``)."""
    init = cls.__init__  # type: ignore[misc]
    if init is object.__init__:
        return ()
    meanings = {**docstring_args(cls.__doc__), **docstring_args(init.__doc__)}
    hints = _hints(init)
    return tuple(
        OptionInfo(
            p.name,
            _type_name(p.annotation, p.default),
            REQUIRED if p.default is p.empty else p.default,
            meanings.get(p.name, ""),
            hints.get(p.name),
        )
        for p in inspect.signature(init).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )


def _hints(function: Any) -> dict[str, Any]:
    """The resolved annotations, or none when one cannot be resolved (the defaults' types
    are used then)."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # a name only imported under TYPE_CHECKING, a local class, ...
        return {}


def _type_name(annotation: Any, default: Any) -> str:
    if annotation is inspect.Parameter.empty:
        if default is inspect.Parameter.empty or default is None:
            return "any"
        return type(default).__name__
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_SECTION = re.compile(r"^(\s*)(?:Args|Arguments|Parameters|Keyword Args):\s*$")
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def docstring_args(doc: str | None) -> dict[str, str]:
    """Name → meaning from a Google-style ``Args:`` section (continuation lines joined)."""
    found: dict[str, str] = {}
    base = entry_indent = None
    current = ""
    for line in inspect.cleandoc(doc or "").splitlines():
        if base is None:
            if match := _SECTION.match(line):
                base = len(match[1])
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= base:
            break
        entry_indent = indent if entry_indent is None else entry_indent
        match = _ENTRY.match(line.strip()) if indent == entry_indent else None
        if match:
            current = match[1]
            found[current] = match[2]
        elif current:
            found[current] += " " + line.strip()
    return {name: " ".join(text.split()) for name, text in found.items()}


class _MismatchError(Exception):
    """A value that does not fit a type."""


def from_text(pass_name: str, option: OptionInfo, given: Value) -> Any:
    """A value written in a pipeline text, converted to ``option``'s type (module invariant)."""
    if given.bare:
        for candidate in _bare_readings(option, given):
            try:
                return _convert(candidate, option)
            except _MismatchError:
                pass
    return convert(pass_name, option, given.value)


def _bare_readings(option: OptionInfo, given: Value) -> list[Any]:
    """What a bare word may mean, in order: its TOML value, its text, its ``|``-items, and
    the older parser's spellings: ``True`` / ``FALSE``, Python numbers (``.5``, ``010``)."""
    readings = [given.value, given.text]
    if given.text.lower() in ("true", "false"):
        readings.append(given.text.lower() == "true")
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            readings.append(kind(given.text))
    hints = typing.get_args(option.hint) if _is_union(option.hint) else (option.hint,)
    if any(map(_is_sequence, hints)) or isinstance(option.default, (list, tuple)):
        items = given.text.split("|") if given.text else []
        readings.append([parse_value(item).value for item in items])
        readings.append(items)
    return readings


def convert(pass_name: str, option: OptionInfo, value: Any) -> Any:
    """``value`` converted to ``option``'s type, or one ``InputError`` line."""
    try:
        return _convert(value, option)
    except _MismatchError:
        shown = not option.required and option.default is not None
        like = f" (like {option.default_text})" if shown else ""
        raise InputError(
            f"pass '{pass_name}' option {option.name}={format_value(value)}: "
            f"expected {option.type}{like}"
        ) from None


def _convert(value: Any, option: OptionInfo) -> Any:
    if option.hint is not None:
        return _to_hint(value, option.hint)
    default = option.default
    if default is REQUIRED or default is None:
        return value  # nothing to say what the option takes
    return _to_hint(value, type(default))


def _to_hint(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` (a class or a typing construct), or ``_MismatchError``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if hint is None or hint is type(None):
        return _exactly(value, None)
    if _is_union(hint):
        return _first_fit(value, args)
    if origin is Literal:
        return _exactly(value, *args)
    if _is_sequence(hint):
        return _to_sequence(value, origin or hint, args)
    if not isinstance(hint, type):
        return value  # a typing construct not handled here: accepted as given
    return _to_class(value, hint)


def _to_class(value: Any, hint: type) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 2**53:
            return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e3 for an int option
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    if issubclass(hint, PurePath) and isinstance(value, str):
        return hint(value)
    raise _MismatchError


def _exactly(value: Any, *choices: Any) -> Any:
    if any(value == choice and type(value) is type(choice) for choice in choices):
        return value
    raise _MismatchError


def _first_fit(value: Any, hints: tuple[Any, ...]) -> Any:
    exact = [hint for hint in hints if isinstance(hint, type) and type(value) is hint]
    for hint in exact + [hint for hint in hints if hint not in exact]:
        try:
            return _to_hint(value, hint)
        except _MismatchError:
            pass
    raise _MismatchError


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _is_sequence(hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    return origin in (list, tuple) or (
        isinstance(origin, type)
        and origin.__module__ == "collections.abc"
        and "Sequence" in origin.__name__
    )


def _to_sequence(value: Any, origin: Any, args: tuple[Any, ...]) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _MismatchError
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise _MismatchError
        return tuple(_to_hint(item, hint) for item, hint in zip(value, args))
    item_hint = args[0] if args else Any
    items = [_to_hint(item, item_hint) for item in value]
    return tuple(items) if origin is tuple else items
