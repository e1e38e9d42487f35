"""Pass registry: kebab-case name → pass class, plus user passes from files and entry points.

A pipeline text (``describe()``'s own format, the syntax in ``syntax``) parses back into
passes: ``identity-elimination,channel-prune(ratio=0.3,exclude="/head/*"),dead-code``; a pass
may also be named by ``path/to/file.py:ClassName``. Unknown names and unknown option keys are
``InputError``s that suggest the closest name and list what exists; values are converted to the
options' annotated types (``options``). ``describe(name)`` gives a pass's summary and options
(type, default, meaning) read from its class.

Invariant: importing this module imports no pass module (nor onnx-ir, numpy): the built-ins load
on the first ``available()`` / ``create``; ``summaries()`` lists every pass's one-line summary
from the static ``catalog`` without loading them (``sparsec passes``, ``sparsec --help``).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import re
from collections.abc import Container, Iterable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsec.errors import InputError
from sparsec.passes.catalog import BUILTIN

if TYPE_CHECKING:  # the pass contract loads onnx-ir, and options/syntax are not needed to list
    from sparsec.passes.base import PassBase
    from sparsec.passes.options import OptionInfo, PassInfo
    from sparsec.passes.syntax import PassText

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
        if not _is_pass_class(loaded):
            raise InputError(
                f"entry point '{point.name}' ({point.value}) is not a pass class (sparsec or onnx-ir)"
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
    """Instantiate a pass by name or ``file.py:Class``: unknown option keys are refused and
    values are converted to the options' annotated types (``options.convert``)."""
    from sparsec.passes.options import convert

    cls = find_class(name)
    table = _option_table(name, cls, options or {})
    converted = {key: convert(name, table[key], value) for key, value in (options or {}).items()}
    return _instantiate(cls, converted)


def _instantiate(cls: type[PassBase], options: dict[str, Any]) -> PassBase:
    from sparsec.passes.base import IRPass, PassBase

    try:
        created = cls(**options)
    except (TypeError, ValueError) as error:  # the class refused its options
        raise InputError(f"pass {cls.__name__} refused its options: {error}") from None
    if not isinstance(created, PassBase):  # an onnx-ir pass: it joins a pipeline as IRPass
        created = IRPass(created)
    created.check_options()
    return created


def find_class(name: str) -> type[PassBase]:
    """The pass class of a name or ``file.py:Class``; an unknown name is one ``InputError``
    line with the closest names."""
    if ".py:" in name:
        return load_class(name)
    if name.endswith(".py"):
        raise InputError(f"pass '{name}' is a file: name the class in it, '{name}:ClassName'")
    known = available()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, known, n=2)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise InputError(f"unknown pass '{name}'; {hint}known passes: {', '.join(known)}")


def _option_table(name: str, cls: type[PassBase], given: Iterable[str]) -> dict[str, OptionInfo]:
    """The options of ``cls`` by name, after refusing keys in ``given`` it does not have and
    a required option (one without a default) ``given`` lacks."""
    from sparsec.passes.options import options_of

    table = {option.name: option for option in options_of(cls)}
    given = set(given)
    missing = [key for key, option in table.items() if option.required and key not in given]
    if missing:
        raise InputError(
            f"pass '{name}' needs option {', '.join(missing)} (it has no default): "
            f"give it as {name}({missing[0]}=...)"
        )
    unknown = sorted(key for key in given if key not in table)
    if unknown:
        close = difflib.get_close_matches(unknown[0], table, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InputError(
            f"pass '{name}' has no option {', '.join(unknown)}{hint}; "
            f"its options: {', '.join(table) or 'none'} (see 'sparsec passes --describe {name}')"
        )
    return table


def describe(name: str) -> PassInfo:
    """A pass (by name or ``file.py:Class``) as data: summary, and per option its name, type,
    default and meaning, all read from the pass class (``options.pass_info``)."""
    from sparsec.passes.options import pass_info

    info = pass_info(find_class(name))
    return replace(info, name=info.name or name if ".py:" in name else name)


def describe_all() -> list[PassInfo]:
    """Every pass ``available()`` lists, described, sorted by name."""
    from sparsec.passes.options import pass_info

    return [replace(pass_info(cls), name=name) for name, cls in available().items()]


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
            if _is_pass_class(value) and value.__module__ == module.__name__
        )
        raise InputError(
            f"{path} has no class '{class_name}'; its pass classes: {', '.join(found) or 'none'}"
        )
    if not _is_pass_class(cls):
        raise InputError(f"'{class_name}' in {path} is not a pass class (sparsec or onnx-ir)")
    return cls


def _is_pass_class(obj: object) -> bool:
    """A sparsec pass class, or an onnx-ir one (``create`` wraps it in ``IRPass``)."""
    from sparsec.ir.passes import IRPassBase  # loads onnx-ir: only when a pass is loaded

    return inspect.isclass(obj) and issubclass(obj, IRPassBase) and not inspect.isabstract(obj)


def parse_pipeline(text: str) -> list[PassBase]:
    """``a,b(opt=1,x="y,z"),file.py:Cls`` → pass instances (at least one); the text syntax is
    ``syntax``'s (option values are TOML inline values or bare words)."""
    from sparsec.passes.syntax import parse_pipeline_text

    specs = parse_pipeline_text(text)
    if not specs:
        raise InputError(f"pipeline '{text}' names no pass; see 'sparsec passes'")
    return [_from_text(spec) for spec in specs]


def _from_text(spec: PassText) -> PassBase:
    from sparsec.passes.options import from_text

    cls = find_class(spec.name)
    table = _option_table(spec.name, cls, spec.options)
    options = {key: from_text(spec.name, table[key], value) for key, value in spec.options.items()}
    return _instantiate(cls, options)
