"""What any layer's work reports: ``Diagnostic`` findings, the ``PassResult`` of a pass or a
cut, ``PassError``, the ``progress`` logger line and the ``stage`` progress bar.

Invariant: plain data, one logger and one verbosity level; imports nothing of sparsec but
``errors``, so the pruning layer, the passes and the API all speak it (``passes.base`` re-exports
it with the pass contract). ``stage(items)`` yields exactly ``items``, whatever it draws: a tqdm
bar with an ETA on stderr only when stderr is a terminal and the verbosity is not quiet (tqdm
loads then, not when this module is imported). Per-item detail lines go to ``progress``; whether
they are shown is the caller's logging setup (the CLI's ``-v``), not this module's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from sparsec.errors import InputError

Severity = Literal["info", "warning", "error"]
progress = logging.getLogger("sparsec.progress").info  # progress("line") from a long-running pass

QUIET, DEFAULT, VERBOSE = -1, 0, 1
_STATE = {"verbosity": DEFAULT}  # process-wide, as the logging setup is
T = TypeVar("T")


def set_verbosity(level: int) -> None:
    """Set the process-wide verbosity: -1 quiet (no bars), 0 default, 1 verbose; a level beyond
    is clamped (``-vv`` is verbose)."""
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"verbosity must be an int (-1, 0 or 1), got {level!r}")
    _STATE["verbosity"] = max(QUIET, min(VERBOSE, level))


def verbosity() -> int:
    """The verbosity ``set_verbosity`` set (0 until then)."""
    return _STATE["verbosity"]


def stage(
    iterable: Iterable[T], *, total: int | None = None, desc: str, unit: str = "step"
) -> Iterator[T]:
    """The items of ``iterable``, unchanged; meanwhile a bar named ``desc`` with an ETA on
    stderr when it is a terminal and the verbosity is not quiet (gone when the stage ends).
    ``total`` defaults to ``len(iterable)`` when it has one."""
    if not _draws():
        return iter(iterable)
    from tqdm import tqdm  # type: ignore[import-untyped]  # only a run on a terminal pays for it

    bar = tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    return iter(bar)


def _draws() -> bool:
    """Whether ``stage`` draws: not quiet, and stderr is a terminal."""
    if verbosity() <= QUIET or sys.stderr is None:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@dataclass(frozen=True)
class Diagnostic:
    """A finding of a pass: ``code`` is stable (tests and tools match on it), ``message`` is for people."""

    severity: Severity
    code: str
    message: str
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object."""
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
    output must equal (its input with the removed parts zeroed: the exactness oracle); a
    pruning pass's also takes ``plain=True`` (the masked original without the lossy couplings'
    wrapper, ``pruning.oracle``). ``replay`` (optional) applies the same cut, by name, to
    another model, returning it (``replay(model, plain=False)``): a pipeline composes it with an
    earlier lossy pass's reference. ``artifacts`` carries named outputs for the caller (e.g. a pruning plan)."""

    model: Any
    modified: bool
    stats: dict[str, float] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    reference: Callable[..., Any] | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    replay: Callable[..., Any] | None = None


class PassError(InputError):
    """A pass could not run on this model; the message names the pass and what to change."""
