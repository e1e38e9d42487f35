"""A compression job's specification (``JobSpec``): the options of ``sparsec compress``,
converted and checked once, the same for flags, recipe keys and the Python API.

An option left out is absent from ``values`` (``get`` gives its default), so the combination
rules can tell a given option from a defaulted one. ``check()`` applies every combination rule;
``pipeline()`` builds the passes.

Invariant: every usage error is one ``UsageError`` line naming the options to change. The
combination rules live here; the values a pass checks itself (an N:M pattern, a target's need
for calibration data) are checked when the pipeline is built, which ``jobs.check_spec`` does
with ``check()`` before anything runs or is written.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsec.errors import UsageError
from sparsec.spec.options import (
    BLOCK_ONLY,
    BLOCK_SCORES,
    CHANNEL_SCORES,
    GATE_NAMES,
    OPTION_BY_NAME,
    OPTIONS,
    RANDOM,
    RATIO_NAMES,
    TARGET_NAMES,
    WEIGHT_SCORES,
    default_importance,
    is_given,
)
from sparsec.spec.rules import RULES


@dataclass
class JobSpec:
    """A job's options, converted; ``base`` is the folder relative paths are read from."""

    values: dict[str, Any] = field(default_factory=dict)
    base: Path | None = None

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], base: Path | None = None, *, where: str = ""
    ) -> JobSpec:
        """A spec from recipe keys or keyword arguments (None: left out); unknown keys and bad
        values are ``UsageError`` lines, prefixed with ``where`` (e.g. "job 'x': ")."""
        converted: dict[str, Any] = {}
        for key, value in values.items():
            option = OPTION_BY_NAME.get(key)
            if option is None or not option.recipe:
                raise UsageError(f"{where}unknown key {key!r}{_did_you_mean(key)}")
            if value is not None:
                try:
                    converted[key] = option.convert(value)
                except UsageError as error:
                    raise UsageError(f"{where}{key}: {str(error).split(': ', 1)[1]}") from None
        return cls(converted, base)

    def given(self, name: str) -> bool:
        return is_given(self.values.get(name), OPTION_BY_NAME.get(name))

    def get(self, name: str) -> Any:
        """The value, or the option's default when left out."""
        value = self.values.get(name)
        return OPTION_BY_NAME[name].default if value is None else value

    def path(self, name: str) -> Path | None:
        """A path option resolved against ``base`` ('-' and 'random' stay as they are)."""
        value = self.values.get(name)
        if value is None:
            return None
        if value in ("-", RANDOM) or self.base is None or Path(value).is_absolute():
            return Path(value)
        return self.base / value

    def with_values(self, **values: Any) -> JobSpec:
        """A copy with these options replaced (None: left out)."""
        merged = {**self.values, **values}
        return JobSpec({k: v for k, v in merged.items() if v is not None}, self.base)

    def recipe_keys(self) -> dict[str, Any]:
        """The given options as recipe keys, in the table's order (lists for repeatables)."""
        return {
            option.name: list(value) if isinstance(value, tuple) else value
            for option in OPTIONS
            if option.recipe
            and self.given(option.name)
            and (value := self.values[option.name]) is not None
        }

    def gates(self) -> dict[str, float]:
        """The gates given, by option name (e.g. ``max_top1_drop``)."""
        return {name: self.values[name] for name in GATE_NAMES if self.given(name)}

    @property
    def structured(self) -> bool:
        """Channel pruning or depth pruning (--drop-blocks)."""
        return self.channel_cut or self.given("drop_blocks")

    @property
    def channel_cut(self) -> bool:
        """Channel pruning: a ratio or a target."""
        return any(self.given(n) for n in (*RATIO_NAMES, *TARGET_NAMES))

    @property
    def weights(self) -> bool:
        return self.given("nm") or self.given("sparsity")

    @property
    def lossy(self) -> bool:
        """Whether the run removes or zeroes something (its outputs may differ)."""
        return self.structured or self.weights or self.given("plan_in")

    def importance(self) -> str:
        """The score of this run: the one given, else activation/wanda with real calibration
        data, else l1/magnitude."""
        if self.given("importance") and self.values["importance"] not in BLOCK_ONLY:
            return self.values["importance"]
        return default_importance(self.values.get("calibration"), weights=self.weights)

    def block_importance(self) -> str:
        """The score of --drop-blocks: the block score given, else influence."""
        given = self.values.get("importance")
        return given if given in BLOCK_SCORES else BLOCK_SCORES[0]

    def check(self) -> None:
        """Every combination rule; one ``UsageError`` line for the first broken one."""
        for rule in RULES:
            rule(self)


def _did_you_mean(key: str) -> str:
    keys = [name for name, option in OPTION_BY_NAME.items() if option.recipe]
    close = difflib.get_close_matches(key.replace("-", "_"), keys, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return " (a job's keys are compress's long option names with underscores)"


__all__ = ["CHANNEL_SCORES", "OPTION_BY_NAME", "WEIGHT_SCORES", "JobSpec"]
