"""The pass contract: onnx-ir's (``call`` / ``requires`` / ``ensures``, in-place or functional),
extended with the numbers and findings a compiler report needs.

A sparsec pass *is* an onnx-ir pass: ``PassBase`` subclasses ``onnx_ir.passes.PassBase``, so
onnx-ir's ``PassManager`` (or ``Sequential``, ``functionalize``) runs it on an ``onnx_ir.Model``
and gets an onnx-ir ``PassResult`` back (see ``sparsec.ir.passes``); an onnx-ir pass in a
sparsec ``Pipeline`` runs through ``IRPass``. sparsec's extras (``prepare``, stats, diagnostics,
the oracle reference, artifacts) are optional on both sides.

Invariants:
- A pass has a kebab-case ``name`` and keyword-only options; ``describe()`` renders it as
  ``name(opt=value,...)`` listing the options that differ from their defaults.
- ``__call__`` runs ``check_options`` → ``requires`` → ``call`` → ``ensures`` and checks that an in-place pass
  returned the model it was given (a functional pass must return a new one); ``prepare``
  (outside data such as calibration samples) runs earlier, for every member of a ``Pipeline``
  before its first pass.
- ``PassResult`` carries ``modified``, ``stats`` (numbers for the report) and
  ``diagnostics`` (severity, stable code, message, node); a pass never prints: a long pass
  reports progress lines to the ``sparsec.progress`` logger (``progress``), which the CLI
  shows on stderr and a library caller sees only if it configures logging.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, ClassVar

from sparsec.ir.passes import IRPassBase, as_model, ir_result, run_ir_pass
from sparsec.passes.catalog import BUILTIN
from sparsec.passes.syntax import format_pass
from sparsec.results import Diagnostic, PassError, PassResult, Severity, progress

__all__ = [
    "Diagnostic",
    "FunctionalPass",
    "IRPass",
    "InPlacePass",
    "PassBase",
    "PassError",
    "PassResult",
    "Severity",
    "progress",
]


def _kebab(class_name: str) -> str:
    """``RemoveUnusedNodesPass`` -> ``remove-unused-nodes``, ``ONNXCleanupPass`` ->
    ``onnx-cleanup`` (an acronym stays one word)."""
    base = class_name.removesuffix("Pass") or class_name
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z0-9])(?=[A-Z][a-z])", "-", base).lower()


class PassBase(IRPassBase):
    """Base of every pass. Subclasses set ``name`` and ``summary`` and implement ``call``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    in_place: bool = True  # per class; a Pipeline's follows its members
    lossy: ClassVar[bool] = (
        False  # changes outputs on purpose; runs once even in a fixed-point pipeline
    )
    # runs in the first round of a fixed-point pipeline only, as a lossy pass: a rewrite another
    # member of the pipeline undoes (unshare-vectors before a cut, share-equal-vectors after it)
    once: ClassVar[bool] = False
    # a value name present before and after the pass keeps its shape (for every input
    # binding): a Pipeline then carries the shapes known before the pass past it
    # (``analysis.shapes.ShapeCarrier``)
    keeps_value_shapes: ClassVar[bool] = False
    # ``modified`` is true whenever the pass changed the model (the contract): a Pipeline does
    # not rerun it on a model it left unchanged, and keeps what it knew of the model past it
    reports_changes: ClassVar[bool] = True

    @property
    def changes_input(self) -> bool:  # onnx-ir's contract: a functional pass leaves it alone
        return self.in_place

    def call(self, model) -> PassResult:
        raise NotImplementedError

    def check_options(self) -> None:
        """Refuse bad option values with a ``PassError`` (called when the pass is created by
        name and before it runs, so a bad option stops a pipeline before any work)."""

    def prepare(self, model) -> None:
        """Read and check what the pass takes from outside the model (e.g. calibration data);
        a ``Pipeline`` calls it for every member before its first pass runs, so bad data stops
        the run before any work. Nothing by default."""

    def requires(self, model) -> None:
        """Preconditions on the model; raise ``PassError`` naming what is missing."""

    def ensures(self, model) -> None:
        """Postconditions; raise ``PassError`` when the pass broke an invariant."""

    def __call__(self, model_or_result):  # type: ignore[override]
        """Run the pass on a ``sparsec.Model`` (giving a sparsec ``PassResult``) or, as
        onnx-ir's pass manager does, on an ``onnx_ir.Model`` or onnx-ir ``PassResult`` (giving
        an onnx-ir ``PassResult`` whose ``sparsec`` attribute holds the sparsec one)."""
        model, speaks_ir = as_model(model_or_result)
        result = self._run(model)
        return ir_result(result) if speaks_ir else result

    def _run(self, model) -> PassResult:
        self.check_options()
        self.requires(model)
        result = self.call(model)
        if not isinstance(result, PassResult):
            raise TypeError(
                f"pass '{self.name}' must return a PassResult, got {type(result).__name__}"
            )
        if self.in_place and result.model is not model:
            raise TypeError(f"pass '{self.name}' is in-place but returned a different model")
        if not self.in_place and result.model is model:
            raise TypeError(f"pass '{self.name}' is functional but returned its input model")
        self.ensures(result.model)
        return result

    def options(self) -> dict[str, Any]:
        """The pass's options and their current values, read from ``__init__``'s signature."""
        return _init_options(self)

    def describe(self, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
        """``name(opt=value,...)`` with the options that differ from their defaults, plus those
        in ``always``, minus those in ``skip``."""
        return _description(self.name, self, always, skip)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A pass class that sets no ``name`` is named after itself (``MyCleanupPass`` ->
        ``my-cleanup``), so that pipelines, stats and metadata never show an empty name."""
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "name", "") and cls.__module__ != __name__:  # not the base classes
            cls.name = _kebab(cls.__name__)


def _init_options(obj: object) -> dict[str, Any]:
    """``obj``'s ``__init__`` keyword options and their current values (its attributes)."""
    names = [p for p in inspect.signature(type(obj).__init__).parameters if p != "self"]
    return {name: getattr(obj, name) for name in names if hasattr(obj, name)}


def _description(name: str, obj: object, always: tuple[str, ...], skip: tuple[str, ...]) -> str:
    """``name(opt=value,...)`` of ``obj``'s options that differ from its ``__init__`` defaults
    (plus ``always``, minus ``skip``), in the ``--passes`` syntax."""
    defaults = {
        p.name: p.default
        for p in inspect.signature(type(obj).__init__).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    shown = {
        k: v
        for k, v in _init_options(obj).items()
        if k not in skip and (k in always or defaults.get(k, object()) != v)
    }
    return format_pass(name, shown)  # parse_pipeline reads it back


class InPlacePass(PassBase):
    """A pass that edits the model it is given and returns it."""

    in_place = True


class FunctionalPass(PassBase):
    """A pass that leaves its input alone and returns a new model."""

    in_place = False


class IRPass(PassBase):
    """An onnx-ir pass (``onnx_ir.passes.PassBase``, onnxscript's rewriter passes...) as a
    member of a sparsec ``Pipeline``: it runs on ``model.ir``; its name is its class name in
    kebab case; it reports ``modified`` and nothing else."""

    summary: ClassVar[str] = "An onnx-ir pass."
    reports_changes: ClassVar[bool] = False  # another library's word: checked, not taken

    def __init__(self, wrapped: IRPassBase) -> None:
        self.wrapped = wrapped
        self.in_place = wrapped.in_place

    @property
    def name(self) -> str:  # type: ignore[override]
        inner = getattr(self.wrapped, "_inner_pass", None)  # functionalize(pass): named as pass
        inner_name = getattr(inner, "name", None)
        if isinstance(inner_name, str) and inner_name:
            return inner_name
        name = _kebab(type(self.wrapped).__name__.lstrip("_"))
        return f"onnx-ir-{name}" if name in BUILTIN else name  # not a built-in's name

    def options(self) -> dict[str, Any]:
        """The wrapped pass's options (its ``__init__`` keywords and their values)."""
        return _init_options(self.wrapped)

    def describe(self, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
        """The wrapped pass's name and options that differ from their defaults."""
        return _description(self.name, self.wrapped, always, skip)

    def call(self, model) -> PassResult:
        produced, modified, inner = run_ir_pass(self.wrapped, model)
        if inner is None:
            return PassResult(produced, modified)
        inner.model = produced  # a wrapped sparsec pass: its stats, diagnostics and reference
        return inner
