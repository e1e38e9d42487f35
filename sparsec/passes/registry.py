"""Pass registry: kebab-case name → pass class, plus user passes from files and entry points.

A pipeline text (``describe()``'s own format) parses back into passes:
``identity-elimination,bn-fold,dead-code(keep_functions=true)``; a pass may also be named by
``path/to/file.py:ClassName``. Unknown names and unknown option keys are ``InputError``s that
list what exists.

Invariant: importing this module imports no pass module (nor onnx-ir, numpy): the built-ins load
on the first ``available()`` / ``create``; ``summaries()`` lists every pass's one-line summary
from the static ``catalog`` without loading them (``sparsec passes``, ``sparsec --help``).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Container
from functools import cache
from pathlib import Path
from typing import Any

from sparsec.errors import InputError
from sparsec.passes.base import PassBase
from sparsec.passes.catalog import BUILTIN

_REGISTRY: dict[str, type[PassBase]] = {}
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
ENTRY_POINT_GROUP = "sparsec.passes"


def register(cls: type[PassBase]) -> type[PassBase]:
    """Class decorator: make a pass addressable by its ``name``."""
    if not _KEBAB.match(cls.name or ""):
        raise ValueError(f"pass {cls.__name__} needs a kebab-case name, got {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> dict[str, type[PassBase]]:
    """Every known pass: built-ins and ``sparsec.passes`` entry points."""
    _load_builtins()
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def summaries() -> dict[str, str]:
    """Name → one-line summary of every pass ``available()`` lists, sorted by name, without
    importing a built-in pass module: the built-ins' summaries are read from ``catalog.BUILTIN``,
    entry points are loaded (as ``available`` loads them) and ``register``ed passes are read
    from their classes."""
    _load_entry_points(skip=BUILTIN)
    found = {name: summary for name, (_, _, summary) in BUILTIN.items()}
    for name, cls in _REGISTRY.items():
        if name not in BUILTIN or _builtins_loaded():  # else the built-in will replace it
            found[name] = cls.summary
    return dict(sorted(found.items()))


def _load_entry_points(skip: Container[str] = ()) -> None:
    """Register the ``sparsec.passes`` entry points not registered yet and not in ``skip``."""
    from importlib.metadata import entry_points  # here: importlib.metadata takes ~40 ms

    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _REGISTRY or point.name in skip:
            continue
        try:
            loaded = point.load()
        except Exception as error:  # a broken plugin must not take the CLI down
            raise InputError(
                f"entry point '{point.name}' ({point.value}) failed to load: {error}"
            ) from None
        if not (inspect.isclass(loaded) and issubclass(loaded, PassBase)):
            raise InputError(
                f"entry point '{point.name}' ({point.value}) is not a sparsec pass class"
            )
        _REGISTRY[point.name] = loaded


def _builtins_loaded() -> bool:
    """Whether ``_load_builtins`` has run (from then on a registered name is final)."""
    return _load_builtins.cache_info().currsize > 0


@cache
def _load_builtins() -> None:
    """Register the built-in passes, once (a user pass registered later under the same name
    replaces one)."""
    from sparsec.passes.builtin import BUILTIN_PASSES  # here: builtin imports every pass module

    for cls in BUILTIN_PASSES:
        register(cls)


def create(name: str, options: dict[str, Any] | None = None) -> PassBase:
    """Instantiate a pass by name or ``file.py:Class``, rejecting unknown option keys."""
    cls = load_class(name) if ".py:" in name else available().get(name)
    if cls is None:
        raise InputError(f"unknown pass '{name}'; known passes: {', '.join(available())}")
    options = options or {}
    accepted = _option_defaults(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"pass '{name}' has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}"
        )
    for key, given in options.items():
        default = accepted[key]
        value = given
        if type(default) is float and type(given) is int and abs(given) < 2**53:
            options[key] = value = float(given)  # threshold=12 for a float option
        expected = type(default)
        if (
            default is not None
            and default is not inspect.Parameter.empty
            and not isinstance(value, expected)
        ):
            raise InputError(
                f"pass '{name}' option {key}={value!r}: expected {expected.__name__} (like {default!r})"
            )
    created = cls(**options)
    created.check_options()
    return created


def _option_defaults(cls: type[PassBase]) -> dict[str, Any]:
    """Keyword options of a pass and their defaults (none when it defines no ``__init__``)."""
    if cls.__init__ is object.__init__:
        return {}
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def load_class(spec: str) -> type[PassBase]:
    """Load ``path/to/file.py:ClassName`` as a pass class."""
    file_part, _, class_name = spec.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise InputError(f"pass file '{path}' not found")
    module_spec = importlib.util.spec_from_file_location(f"sparsec_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"pass file '{path}' cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        raise InputError(
            f"pass file '{path}' failed to import: {type(error).__name__}: {error}"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isclass(value)
            and issubclass(value, PassBase)
            and value.__module__ == module.__name__
        )
        raise InputError(
            f"{path} has no class '{class_name}'; its pass classes: {', '.join(found) or 'none'}"
        )
    if not (inspect.isclass(cls) and issubclass(cls, PassBase)):
        raise InputError(f"'{class_name}' in {path} is not a sparsec pass class")
    return cls


def parse_pipeline(text: str) -> list[PassBase]:
    """``a,b(opt=1,x=y),file.py:Cls`` → pass instances (at least one)."""
    specs = _split_specs(text)
    if not specs:
        raise InputError(f"pipeline '{text}' names no pass; see 'sparsec passes'")
    return [create(name, options) for name, options in specs]


def _split_specs(text: str) -> list[tuple[str, dict[str, Any]]]:
    specs, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            if text[start:i].strip():
                specs.append(_parse_spec(text[start:i].strip()))
            start = i + 1
    if depth != 0:
        raise InputError(f"pipeline '{text}': unbalanced parentheses")
    return specs


def _parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    match = re.match(r"^([^()]+?)(?:\((.*)\))?$", spec)
    if match is None:
        raise InputError(f"cannot parse pass '{spec}'; expected name or name(key=value,...)")
    options = {}
    for item in filter(None, (part.strip() for part in (match[2] or "").split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise InputError(f"pass option '{item}' in '{spec}' needs key=value")
        options[key.strip()] = _parse_value(raw.strip())
    return match[1].strip(), options


def _parse_value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
