"""Transform passes: the contract, the pipeline, the registry and the built-in passes.

The names below load on first use (PEP 562): the pass contract subclasses onnx-ir's, so
importing ``sparsec.passes.base`` loads onnx-ir, and ``sparsec passes`` / ``--help`` read the
registry's static catalogue without it.
"""

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "sparsec.passes.base": [
        "Diagnostic",
        "FunctionalPass",
        "InPlacePass",
        "IRPass",
        "PassBase",
        "PassError",
        "PassResult",
    ],
    "sparsec.passes.pipeline": ["Pipeline"],
    "sparsec.passes.registry": [
        "available",
        "create",
        "describe",
        "describe_all",
        "load_class",
        "parse_pipeline",
        "register",
    ],
    "sparsec.passes.options": ["OptionInfo", "PassInfo"],
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*sorted(_HOME, key=str.lower)]

if TYPE_CHECKING:
    from sparsec.passes.base import (
        Diagnostic,
        FunctionalPass,
        InPlacePass,
        IRPass,
        PassBase,
        PassError,
        PassResult,
    )
    from sparsec.passes.options import OptionInfo, PassInfo
    from sparsec.passes.pipeline import Pipeline
    from sparsec.passes.registry import (
        available,
        create,
        describe,
        describe_all,
        load_class,
        parse_pipeline,
        register,
    )


def __getattr__(name: str):
    """A public name, imported from its module when first asked for."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
