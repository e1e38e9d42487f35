"""The pass contract: onnx-ir's (``call`` / ``requires`` / ``ensures``, in-place or functional),
extended with the numbers and findings a compiler report needs.

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
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sparsec.errors import InputError

Severity = Literal["info", "warning", "error"]
progress = logging.getLogger("sparsec.progress").info  # progress("line") from a long-running pass


@dataclass(frozen=True)
class Diagnostic:
    """A finding of a pass: ``code`` is stable (tests and tools match on it), ``message`` is for people."""

    severity: Severity
    code: str
    message: str
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "node": self.node}

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.severity}: {self.code}{where}: {self.message}"


@dataclass
class PassResult:
    """What a pass did. A lossy pass also sets ``reference``: a callable building the model its
    output must equal (its input with the removed parts zeroed: the exactness oracle).
    ``artifacts`` carries named outputs for the caller (e.g. a pruning plan)."""

    model: Any
    modified: bool
    stats: dict[str, float] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    reference: Callable[[], Any] | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)


class PassError(InputError):
    """A pass could not run on this model; the message names the pass and what to change."""


class PassBase:
    """Base of every pass. Subclasses set ``name`` and ``summary`` and implement ``call``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    in_place: ClassVar[bool] = True
    lossy: ClassVar[bool] = False  # changes outputs on purpose; runs once even in a fixed-point pipeline

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

    def __call__(self, model) -> PassResult:
        self.check_options()
        self.requires(model)
        result = self.call(model)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass '{self.name}' must return a PassResult, got {type(result).__name__}")
        if self.in_place and result.model is not model:
            raise TypeError(f"pass '{self.name}' is in-place but returned a different model")
        if not self.in_place and result.model is model:
            raise TypeError(f"pass '{self.name}' is functional but returned its input model")
        self.ensures(result.model)
        return result

    def options(self) -> dict[str, Any]:
        """The pass's options and their current values, read from ``__init__``'s signature."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names if hasattr(self, name)}

    def describe(self, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
        """``name(opt=value,...)`` with the options that differ from their defaults, plus those
        in ``always``, minus those in ``skip``."""
        defaults = {
            p.name: p.default
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        shown = [f"{k}={v}" for k, v in self.options().items()
                 if k not in skip and (k in always or defaults.get(k, object()) != v)]
        return f"{self.name}({','.join(shown)})" if shown else self.name


class InPlacePass(PassBase):
    """A pass that edits the model it is given and returns it."""

    in_place: ClassVar[bool] = True


class FunctionalPass(PassBase):
    """A pass that leaves its input alone and returns a new model."""

    in_place: ClassVar[bool] = False
