"""Channel plans: the cut a ``channel-prune`` run made, written by ``--plan-out`` and read back
by ``--plan-in`` (``plan=``) to repeat exactly the same cut.

Format (JSON)::

    {"format": "sparsec-channel-plan", "version": 1,
     "initializers": {NAME: [{"axis": A, "size": S, "kept": [i, ...]}, ...], ...}}

Invariants:
- ``initializers`` maps each constant the cut shrank (an initializer, or a ``Constant`` /
  ``ConstantOfShape`` output) to one entry per shrunk axis, axes ascending, in ONNX layout;
- ``size`` is the axis' length before the cut and ``kept`` the positions it keeps: ascending,
  unique, in ``0..size-1``, never empty;
- reading a plan checks it against the model: every entry belongs to a prunable channel group,
  sizes match, and the kept positions of one group's members agree, else one ``InputError``.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np

from sparsec.analysis.groups import ChannelGroup
from sparsec.errors import InputError
from sparsec.pruning.oracle import OracleMasks

PLAN_FORMAT = "sparsec-channel-plan"


def plan_json(masks: OracleMasks) -> dict:
    """Kept indices per constant and axis, for ``--plan-out`` (and to prune the source model)."""
    constants = {
        name: [
            {"axis": axis, "size": size, "kept": kept.tolist()}
            for axis, kept, size in sorted(axes, key=lambda a: a[0])
        ]
        for name, axes in sorted(masks.constants.items())
    }
    return {"format": PLAN_FORMAT, "version": 1, "initializers": constants}


def read_plan(path: str) -> dict:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read plan {path}: {error}") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise InputError(f"{path} is not a sparsec channel plan (written by --plan-out)")
    if plan.get("version") != 1:
        raise InputError(
            f"plan {path} has version {plan.get('version')!r}; this sparsec reads version 1"
        )
    initializers = plan.get("initializers")
    if not isinstance(initializers, dict):
        raise InputError(
            f"plan {path}: 'initializers' must map names to lists of {{axis, size, kept}}"
        )
    for name, entries in initializers.items():
        _check_entries(path, name, entries)
    return plan


def _check_entries(path: str, name: str, entries) -> None:
    if not isinstance(entries, list):
        raise InputError(f"plan {path}: entry '{name}' must be a list of {{axis, size, kept}}")
    for entry in entries:
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), int) for k in ("axis", "size")
        )
        kept = entry.get("kept") if ok else None
        integers = isinstance(kept, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in kept
        )
        if not ok or not integers:
            raise InputError(
                f"plan {path}: entry '{name}' must be a list of "
                "{axis: int, size: int, kept: [int, ...]}"
            )
        if any(i < 0 or i >= entry["size"] for i in kept):
            raise InputError(
                f"plan {path}: {name} axis {entry['axis']}: kept indices must lie in "
                f"0..{entry['size'] - 1}"
            )
        if any(b <= a for a, b in pairwise(kept)):
            raise InputError(
                f"plan {path}: {name} axis {entry['axis']}: kept indices must be ascending, "
                "without repeats"
            )


def removed_from_plan(
    plan: dict, groups: list[ChannelGroup], reasons: dict
) -> dict[int, np.ndarray]:
    """The units each group loses under ``plan``; refuses a plan that does not fit the model."""
    entries = {(name, e["axis"]): e for name, axes in plan["initializers"].items() for e in axes}
    removed = {}
    for group in groups:
        mine = {m: entries.pop(m) for m in group.constants if m in entries}
        if not mine:
            continue
        if reasons[group.id] is not None:
            raise InputError(
                f"plan prunes {_names(mine)}, but {group.describe()} cannot be pruned: "
                f"{reasons[group.id]}"
            )
        drop = set()
        for member, entry in mine.items():
            if entry["size"] != group.sizes[member]:
                raise InputError(
                    f"plan: {member[0]} axis {member[1]} has size {group.sizes[member]}, "
                    f"plan says {entry['size']}"
                )
            lost = np.setdiff1d(
                np.arange(group.sizes[member]), np.asarray(entry["kept"], dtype=np.int64)
            )
            drop.update(group.atoms[member][lost].tolist())
        if any(set(np.unique(group.atoms[m]).tolist()) <= drop for m in group.members):
            raise InputError(f"plan would empty a tensor of {group.describe()}")
        removed[group.id] = np.array(sorted(drop), dtype=np.int64)
        for member, entry in mine.items():
            if not np.array_equal(
                group.kept_positions(member, removed[group.id]), np.asarray(entry["kept"])
            ):
                raise InputError(
                    f"plan: the kept indices of {member[0]} axis {member[1]} disagree with the "
                    "rest of its group"
                )
    if entries:
        raise InputError(
            f"plan names {_names(entries)}, which no prunable channel group of this model holds"
        )
    return removed


def _names(members) -> str:
    listed = sorted(f"{name}[axis {axis}]" for name, axis in members)
    return ", ".join(listed[:3]) + (f" and {len(listed) - 3} more" if len(listed) > 3 else "")
