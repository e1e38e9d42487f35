"""``Pipeline``: a pass made of passes, run in order, optionally to a fixed point.

Invariants: stats of every member are kept under ``"<pass name>.<stat>"`` (summed over
fixed-point rounds); diagnostics are kept in order; ``describe()`` is the same text
``registry.parse_pipeline`` reads back. ``check`` (when given) is called with the model and the
name of the pass just run, after each pass (``validate="each"``) or once at the end
(``validate="end"``); it raises to stop the pipeline, so a broken pass is named. A lossy pass
(and a ``once`` one: a rewrite another member undoes) runs in the first fixed-point round only,
and no member runs again on a model it left unchanged (nothing changed it since); the last
lossy pass's ``reference`` (the oracle) and every pass's ``artifacts`` are passed up (but
``lossy_couplings``, which describes its own pass's reference, goes with that reference). A
lossy pass that can ``replay`` its cut on another model (channel-prune) after an earlier lossy
pass (drop-blocks) has as reference its cut replayed on the earlier reference, so the run is
checked against the original with both cuts. A pipeline is in place when all its members are;
with a functional member it returns a new model. A member may be an onnx-ir pass (it runs
through ``IRPass``). A fixed-point pipeline still changing the model in its last round stops
there with a ``pipeline.not-settled`` warning naming the passes that kept changing it (also
logged to the ``sparsec.passes`` logger, which a command line shows on stderr). The value
shapes known before a member whose ``keeps_value_shapes`` holds are vouched for after it
(``analysis.shapes.ShapeCarrier``), so the fixed-point cleanup does not infer or measure them
again. Both rest on the pass contract: a member that reports no change made none, and
``on_pass`` and ``check`` only read the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from sparsec.analysis import shapes
from sparsec.errors import InternalError, SparsecError
from sparsec.ir.passes import IRPassBase, IRPreconditionError
from sparsec.passes.base import Diagnostic, InPlacePass, IRPass, PassBase, PassError, PassResult

ValidateMode = Literal["none", "end", "each"]
_LOG = logging.getLogger("sparsec.passes")  # no handler: Python's last resort prints warnings


class Pipeline(InPlacePass):
    """Passes run in order, optionally to a fixed point (``fixed_point``, at most
    ``max_rounds`` rounds), checked after each pass or at the end (``validate``/``check``);
    ``on_pass`` hears of every member's result. A member may be an onnx-ir pass."""

    name: ClassVar[str] = "pipeline"
    summary: ClassVar[str] = "Run passes in sequence."

    def __init__(
        self,
        passes: Sequence[PassBase],
        *,
        fixed_point: bool = False,
        max_rounds: int = 8,
        validate: ValidateMode = "none",
        check: Callable[[object, str], None] | None = None,
        on_pass: Callable[[PassBase, PassResult], None] | None = None,
    ) -> None:
        if validate != "none" and check is None:
            raise ValueError("validate='end' or 'each' needs a check callable")
        self.passes = [_adopt(member) for member in passes]
        self.in_place = all(
            member.in_place for member in self.passes
        )  # else it returns a new model
        self.fixed_point = fixed_point
        self.max_rounds = max_rounds
        self.validate = validate
        self.check = check
        self.on_pass = on_pass

    @property
    def lossy(self) -> bool:  # type: ignore[override]  # a nested pipeline with a lossy member
        return any(member.lossy for member in self.passes)

    @property
    def once(self) -> bool:  # type: ignore[override]  # a nested pipeline with a once member
        return any(member.once for member in self.passes)

    def describe(self, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
        """The members' descriptions joined by commas (``always``/``skip`` apply to members)."""
        return ",".join(p.describe(always, skip) for p in self.passes)

    def prepare(self, model) -> None:
        for member in self.passes:
            member.prepare(model)

    def call(self, model) -> PassResult:
        self.prepare(model)  # every member's outside data is read and checked before the first pass
        total = PassResult(model, modified=False)
        changing: list[str] = []
        state = _RunState(shapes.ShapeCarrier(model))
        for round_index in range(self.max_rounds if self.fixed_point else 1):
            changing = self._round(total, round_index, state)
            total.modified |= bool(changing)
            if not changing:
                break
        else:
            if self.fixed_point:
                warning = _not_settled(self.max_rounds, changing)
                total.diagnostics.append(warning)
                _LOG.warning("warning: %s", warning.message)  # seen even if validation fails next
        if self.validate == "end" and self.check is not None:
            self.check(total.model, self.describe())
        return total

    def _round(self, total: PassResult, round_index: int, state: _RunState) -> list[str]:
        """Run every member once (a lossy or ``once`` one in the first round only, none that ran
        on the model as it is now) on ``total.model``; the names of the members that changed
        it."""
        changing = []
        for index, member in enumerate(self.passes):
            if ((member.lossy or member.once) and round_index > 0) or index in state.unchanging:
                continue
            result = _run(member, total.model)
            state.carrier.passed(member, result)
            total.model = result.model
            unchanged = not result.modified and member.reports_changes
            state.unchanging = {*state.unchanging, index} if unchanged else set()
            if result.modified:
                changing.append(member.describe())
            _merge(total, member.name, result)
            if self.on_pass is not None:
                self.on_pass(member, result)
            if self.validate == "each" and self.check is not None:
                self.check(total.model, member.describe())
        return changing


def _adopt(member) -> PassBase:
    """A pipeline member: a sparsec pass as it is, an onnx-ir pass wrapped in ``IRPass``."""
    if isinstance(member, PassBase):
        return member
    if isinstance(member, IRPassBase):
        return IRPass(member)
    if isinstance(member, type) and issubclass(member, IRPassBase):
        raise TypeError(f"a Pipeline takes pass instances: {member.__name__}(), not the class")
    raise TypeError(
        f"a Pipeline member must be a sparsec or onnx-ir pass, not {type(member).__name__}"
    )


def _not_settled(rounds: int, changing: list[str]) -> Diagnostic:
    names = ", ".join(dict.fromkeys(changing))
    return Diagnostic(
        "warning",
        "pipeline.not-settled",
        f"the passes did not settle in {rounds} rounds: {names} still changed the model in "
        "the last round (a pass that changes something every time it runs); stopped there",
    )


@dataclass
class _RunState:
    """What a pipeline run keeps between its passes: the value shapes it carries, and the
    members that ran on the model as it is now without changing it (a pass is a function of
    the model: run again on the same model, it changes nothing again, so it is skipped; an
    onnx-ir pass's word on that is not taken, it runs again)."""

    carrier: shapes.ShapeCarrier
    unchanging: set[int] = field(default_factory=set)


def _run(member: PassBase, model) -> PassResult:
    """Run one pass; an unexpected exception becomes an ``InternalError`` naming the pass."""
    try:
        return member(model)
    except SparsecError:
        raise
    except IRPreconditionError as error:  # the pass's requires() refused this model
        cause = error.__cause__ or error
        raise PassError(f"pass '{member.describe()}' cannot run on this model: {cause}") from None
    except SystemExit as exit_:  # sys.exit() inside a pass must not end the run as if it succeeded
        raise InternalError(
            f"pass '{member.describe()}' called sys.exit({exit_.code!r}); a pass returns a "
            "PassResult or raises an exception"
        ) from None
    except Exception as error:
        raise InternalError(
            f"pass '{member.describe()}' failed: {type(error).__name__}: {error}"
        ) from error


def _merge(total: PassResult, name: str, result: PassResult) -> None:
    for key, value in result.stats.items():
        full = f"{name}.{key}"
        total.stats[full] = total.stats.get(full, 0) + value
    seen = set(total.diagnostics)
    total.diagnostics.extend(
        d for d in result.diagnostics if d not in seen
    )  # a fixed-point round says it once
    total.artifacts.update(
        {key: value for key, value in result.artifacts.items() if value}
    )  # a no-op round keeps them
    if result.reference is not None:
        total.reference = _composed(total.reference, result)
        if not result.artifacts.get("lossy_couplings"):
            total.artifacts.pop("lossy_couplings", None)


def _composed(earlier: Callable[..., object] | None, result: PassResult) -> Callable[..., object]:
    """The reference after ``result``: its cut replayed on the earlier lossy pass's reference
    (so the whole run is checked against the original), else its own (its input, masked)."""
    replay = result.replay
    if earlier is None or replay is None:
        return result.reference  # type: ignore[return-value]
    return lambda plain=False: replay(earlier(plain=plain), plain=plain)
