"""sparsec: a framework-agnostic ONNX graph compression compiler.

Public API: ``Model`` (load, edit, save), the pass contract (``InPlacePass``,
``FunctionalPass``, ``PassResult``, ``Diagnostic``), ``Pipeline`` and the registry, the
analyses (``analyze_cost``, ``value_shapes``, ``find_channel_groups``, ``group_scores``), the one
channel surgery routine (``prune_channels``) and the commands' functions in ``sparsec.api``.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The names below load on first use (PEP 562), so that ``import sparsec`` is instant: the console
# script (``sparsec.entry``) must set up its signal handling before onnx, onnxruntime and numpy
# load, and Python imports this package before any of its modules.
_EXPORTS = {
    "sparsec.analysis.cost": ["analyze_cost"],
    "sparsec.analysis.groups": ["ChannelGroup", "find_channel_groups"],
    "sparsec.analysis.importance": ["ImportanceContext", "group_scores", "register_importance"],
    "sparsec.analysis.lookup": ["group_of", "layer_table"],
    "sparsec.analysis.shapes": ["value_shapes"],
    "sparsec.errors": ["InputError", "SparsecError", "ValidationError"],
    "sparsec.ir": ["Model"],
    "sparsec.passes": [
        "Diagnostic",
        "FunctionalPass",
        "InPlacePass",
        "PassBase",
        "PassError",
        "PassResult",
        "Pipeline",
        "available",
        "create",
        "parse_pipeline",
        "register",
    ],
    "sparsec.pruning.surgery": ["prune_channels"],
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*sorted(_HOME, key=str.lower), "__version__"]

if TYPE_CHECKING:
    from sparsec.analysis.cost import analyze_cost
    from sparsec.analysis.groups import ChannelGroup, find_channel_groups
    from sparsec.analysis.importance import ImportanceContext, group_scores, register_importance
    from sparsec.analysis.lookup import group_of, layer_table
    from sparsec.analysis.shapes import value_shapes
    from sparsec.errors import InputError, SparsecError, ValidationError
    from sparsec.ir import Model
    from sparsec.passes import (
        Diagnostic,
        FunctionalPass,
        InPlacePass,
        PassBase,
        PassError,
        PassResult,
        Pipeline,
        available,
        create,
        parse_pipeline,
        register,
    )
    from sparsec.pruning.surgery import prune_channels


def __getattr__(name: str):
    """A public name, or a subpackage (``sparsec.passes``), imported when first asked for."""
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
