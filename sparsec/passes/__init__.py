"""Transform passes: the contract, the pipeline, the registry and the built-in passes."""

from sparsec.passes.base import (
    Diagnostic,
    FunctionalPass,
    InPlacePass,
    PassBase,
    PassError,
    PassResult,
)
from sparsec.passes.pipeline import Pipeline
from sparsec.passes.registry import available, create, load_class, parse_pipeline, register

__all__ = [
    "Diagnostic",
    "FunctionalPass",
    "InPlacePass",
    "PassBase",
    "PassError",
    "PassResult",
    "Pipeline",
    "available",
    "create",
    "load_class",
    "parse_pipeline",
    "register",
]
