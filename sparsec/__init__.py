"""sparsec: a framework-agnostic ONNX graph compression compiler.

Public API: ``Model`` (load, edit, save), the pass contract (``InPlacePass``,
``FunctionalPass``, ``PassResult``, ``Diagnostic``), ``Pipeline`` and the registry, the
analyses (``analyze_cost``, ``value_shapes``, ``find_channel_groups``, ``group_scores``), the one
channel surgery routine (``prune_channels``) and the commands' functions in ``sparsec.api``.
"""

__version__ = "0.1.0"

from sparsec.analysis.cost import analyze_cost  # noqa: E402
from sparsec.analysis.groups import ChannelGroup, find_channel_groups  # noqa: E402
from sparsec.analysis.importance import ImportanceContext, group_scores, register_importance  # noqa: E402
from sparsec.analysis.shapes import value_shapes  # noqa: E402
from sparsec.errors import InputError, SparsecError, ValidationError  # noqa: E402
from sparsec.ir import Model  # noqa: E402
from sparsec.passes import (  # noqa: E402
    Diagnostic, FunctionalPass, InPlacePass, PassBase, PassError, PassResult, Pipeline, available, create,
    parse_pipeline, register,
)
from sparsec.passes.surgery import prune_channels  # noqa: E402

__all__ = [
    "ChannelGroup", "Diagnostic", "FunctionalPass", "ImportanceContext", "InPlacePass", "InputError", "Model", "PassBase", "PassError", "PassResult",
    "Pipeline", "SparsecError", "ValidationError", "analyze_cost", "available", "create", "find_channel_groups",
    "group_scores", "parse_pipeline", "prune_channels", "register", "register_importance", "value_shapes", "__version__",
]
