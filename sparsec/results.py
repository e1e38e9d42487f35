"""What any layer's work reports: ``Diagnostic`` findings, the ``PassResult`` of a pass or a
cut, ``PassError`` and the ``progress`` logger line.

Invariant: plain data and one logger; imports nothing of sparsec but ``errors``, so the pruning
layer, the passes and the API all speak it (``passes.base`` re-exports it with the pass contract).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "node": self.node,
        }

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
