"""sparsec: a framework-agnostic ONNX graph compression compiler.

Public API: ``Model`` (load, edit, save), the pass contract (``InPlacePass``,
``FunctionalPass``, ``PassResult``, ``Diagnostic``), ``Pipeline`` and the registry, the
analyses (``analyze_cost``, ``value_shapes``) and the commands' functions in ``sparsec.api``.
"""

__version__ = "0.1.0"

from sparsec.analysis.cost import analyze_cost  # noqa: E402
from sparsec.analysis.shapes import value_shapes  # noqa: E402
from sparsec.errors import InputError, SparsecError, ValidationError  # noqa: E402
from sparsec.ir import Model  # noqa: E402
from sparsec.passes import (  # noqa: E402
    Diagnostic, FunctionalPass, InPlacePass, PassBase, PassError, PassResult, Pipeline, available, create,
    parse_pipeline, register,
)

__all__ = [
    "Diagnostic", "FunctionalPass", "InPlacePass", "InputError", "Model", "PassBase", "PassError", "PassResult",
    "Pipeline", "SparsecError", "ValidationError", "analyze_cost", "available", "create", "parse_pipeline",
    "register", "value_shapes", "__version__",
]
