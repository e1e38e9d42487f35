"""Channel plans: the cut a ``channel-prune`` run made, written by ``--plan-out``, read back by
``--plan-in`` (``plan=``) to repeat exactly the same cut, and applied to the source framework's
model by a user (docs/pytorch-plans.md).

Format (JSON, version 2; version 1 is the same without ``sources``, ``groups``, ``refit`` and
``torch_axis``)::

    {"format": "sparsec-channel-plan", "version": 2,
     "initializers": {NAME: [{"axis": A, "size": S, "kept": [i, ...], "torch_axis": T}, ...]},
     "sources": {NAME: {"node": N, "op_type": OP, "input": K, "scope": SCOPE, "module": M,
                        "param": P, "layout": "same" | "transposed" | null,
                        "is_parameter": BOOL,
                        "also": [{"node": ..., "is_parameter": BOOL, "torch_axes": [T, ...]}]}},
     "groups": [{"id": G, "kind": KIND, "units": U, "removed": R, "ratio": R / U,
                 "members": ["NAME[axis A]", ...],
                 "pattern": GLOB, "pattern_ratio": R}],  # pattern*: with per-layer ratios
     "refit": {"file": "plan.refit.npz", "layout": "onnx", "names": [NAME, ...]},  # with recovery
     "grouped": {NAME: {"axis": 1, "size": S, "kept": [[i, ...], ...], "torch_axis": T}}}

Invariants:
- ``initializers`` maps each constant the cut shrank (an initializer, or a ``Constant`` /
  ``ConstantOfShape`` output) to one entry per shrunk axis, axes ascending, in ONNX layout;
  ``size`` is the axis' length before the cut, ``kept`` the positions it keeps: ascending,
  unique, in ``0..size-1``, never empty. Only this table decides the cut: ``--plan-in`` of a
  version 2 plan repeats the cut of a version 1 plan with the same table;
- ``sources`` says where a constant comes from: ``node`` (its first consumer, past
  ``DequantizeLinear``/``Identity``/``Cast``; else its producer), that node's ``op_type`` and
  the ``input`` index the constant feeds, the exporter's
  ``scope`` (``lookup.scope_of``: the node name less its last ``/`` part, else dynamo's
  ``name_scopes`` metadata; null without one), the source ``module``
  path and its ``param`` (from the name when the constant is the parameter itself,
  ``is_parameter``: a state-dict key ``a.b.param``, or ``param`` of the root module, path
  ``""``; else from the scope and ``TORCH_PARAMS``), and how its axes map to the source
  framework's (``layout``); ``torch_axis`` is that axis, null where unknown;
- ``also`` lists the other module parameters the same constant is (a weight the exporter
  deduplicated: one initializer read by several modules, directly or through ``Identity``),
  one record per distinct (module, param), each with the keys above and ``torch_axes``, the
  torch axis of each ONNX axis there (by ONNX axis, null where unknown): a user slices every
  one of them;
- ``groups`` lists each group the cut reached, with the fraction of its units removed;
- ``grouped`` (only when the cut reached a grouped conv's per-group axis) maps each grouped
  conv's weight to how its axis 1 was cut *group by group* (``rules.core.GroupedWeight``):
  ``kept[j]`` are the local positions (ascending, in ``0..size-1``, as many in every group) the
  rows of group ``j`` keep, after ``initializers`` cut its rows. It follows from the table
  (``--plan-in`` recomputes it); a user gathers each group's rows with its own list;
- ``refit`` (only when recovery changed weights) names an ``.npz`` beside the plan holding the
  refit values of those constants after the cut, in ONNX layout (transpose a ``transposed``
  one for torch);
- reading a plan checks it against the model: every entry belongs to a prunable channel group,
  sizes match, and the kept positions of one group's members agree, else one ``InputError``.
"""

from __future__ import annotations

import io
import json
import re
from itertools import pairwise
from pathlib import Path

import numpy as np

from sparsec.analysis.groups import ChannelGroup, GroupAnalysis
from sparsec.analysis.lookup import module_of, scope_of
from sparsec.errors import InputError
from sparsec.ir.saving import is_stream
from sparsec.pruning.oracle import OracleMasks
from sparsec.pruning.selection import balance

PLAN_FORMAT = "sparsec-channel-plan"
PLAN_VERSION = 2
READS = (1, 2)

SAME, TRANSPOSED, TRANS_B = "same", "transposed", "transB"
# (op_type, input index) -> (torch parameter, layout) for the layers PyTorch exports. "same":
# ONNX axes are torch's (Conv [out, in/groups, kH, kW], norms' per-channel vectors); "transposed":
# a Linear weight stored as torch's transpose (MatMul B [in, out]); "transB": Gemm's B, torch's
# [out, in] when transB=1, else transposed. An Add's constant is a Linear's bias (1-D only).
TORCH_PARAMS: dict[tuple[str, int], tuple[str, str]] = {
    ("Conv", 1): ("weight", SAME),
    ("Conv", 2): ("bias", SAME),
    ("ConvTranspose", 1): ("weight", SAME),
    ("ConvTranspose", 2): ("bias", SAME),
    ("Gemm", 1): ("weight", TRANS_B),
    ("Gemm", 2): ("bias", SAME),
    ("MatMul", 1): ("weight", TRANSPOSED),
    ("Add", 0): ("bias", SAME),
    ("Add", 1): ("bias", SAME),
    ("BatchNormalization", 1): ("weight", SAME),
    ("BatchNormalization", 2): ("bias", SAME),
    ("BatchNormalization", 3): ("running_mean", SAME),
    ("BatchNormalization", 4): ("running_var", SAME),
    ("LayerNormalization", 1): ("weight", SAME),
    ("LayerNormalization", 2): ("bias", SAME),
    ("InstanceNormalization", 1): ("weight", SAME),
    ("InstanceNormalization", 2): ("bias", SAME),
    ("GroupNormalization", 1): ("weight", SAME),
    ("GroupNormalization", 2): ("bias", SAME),
}
PASS_THROUGH = {"DequantizeLinear", "Identity", "Cast"}
QUANTIZED = "_quantized"  # onnxruntime's quantizer: a weight W is stored as W_quantized
# A state-dict key: ``param`` (the root module's) or ``a.b.param`` (children may be numbered).
_STATE_KEY = re.compile(r"^(?:(\w+(?:\.\w+)*)\.)?([A-Za-z_]\w*)$")


def plan_json(model, analysis: GroupAnalysis, masks: OracleMasks, removed: dict) -> dict:
    """The plan of a cut, for ``--plan-out``: kept indices per constant and axis (``masks``),
    where each constant comes from (read in ``model`` before the cut), the groups cut
    (``removed``: group id -> units)."""
    sources = {name: source(model, name) for name in sorted({*masks.constants, *masks.grouped})}
    ranks = {name: len(model.constant_shape(model.value(name)) or ()) for name in sources}
    constants = {
        name: [
            {
                "axis": axis,
                "size": size,
                "kept": kept.tolist(),
                "torch_axis": torch_axis(sources[name], axis, ranks[name]),
            }
            for axis, kept, size in sorted(axes, key=lambda a: a[0])
        ]
        for name, axes in sorted(masks.constants.items())
    }
    plan = {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "initializers": constants,
        "sources": sources,
        "groups": group_records(analysis, removed),
    }
    if masks.grouped:
        plan["grouped"] = {
            name: {
                "axis": 1,
                "size": int(model.constant_shape(model.value(name))[1]),
                "kept": [local.tolist() for local in kept],
                "torch_axis": torch_axis(sources[name], 1, ranks[name]),
            }
            for name, kept in sorted(masks.grouped.items())
        }
    return plan


def group_records(analysis: GroupAnalysis, removed: dict) -> list[dict]:
    """One record per group that loses units: its size, the units removed and their ratio."""
    records = []
    for group in analysis.groups:
        count = len(removed.get(group.id, ()))
        if count:
            records.append(
                {
                    "id": group.id,
                    "kind": group.kind,
                    "units": group.units,
                    "removed": count,
                    "ratio": round(count / group.units, 6),
                    "members": [f"{name}[axis {axis}]" for name, axis in group.constants],
                }
            )
    return records


def compose_provenance(composed: dict, plans: list[dict]) -> dict:
    """``composed`` (the kept indices of consecutive cuts ``plans``, in the first model's
    positions) with every round's sources and its groups' removals summed: a group of a later
    round is the earlier one sharing a member, its ``units`` counted in the first model."""
    sources: dict = {}
    groups: list[dict] = []
    for plan in plans:
        sources = {**plan.get("sources", {}), **sources}  # the first round's node names win
        for group in plan.get("groups", []):
            earlier = next((g for g in groups if set(g["members"]) & set(group["members"])), None)
            if earlier is None:
                groups.append(dict(group))
            else:
                earlier["removed"] += group["removed"]
                earlier["ratio"] = round(earlier["removed"] / earlier["units"], 6)
    if any("sources" in plan for plan in plans):
        composed.update(sources=sources, groups=groups)
    return composed


def final_refit(model, refits: list[dict | None]) -> dict | None:
    """The refit artifact of consecutive rounds: every constant any round refit, with its value
    in ``model`` (after the last cut), and its source from the round that refit it."""
    sources = {k: v for refit in refits if refit for k, v in refit["sources"].items()}
    if not sources:
        return None
    values = model.values_by_name()
    arrays = {name: model.constant(values[name]) for name in sorted(sources) if name in values}
    return {"arrays": arrays, "sources": {name: sources[name] for name in arrays}}


def source(model, name: str) -> dict:
    """Where constant ``name`` comes from: its node, the exporter's scope, the source module
    path and parameter, and its layout against torch's (``TORCH_PARAMS``); ``also``: the other
    module parameters it is (``_also``)."""
    value = model.value(name)
    shape = model.constant_shape(value) or ()
    readers = _readers(model, value, name) or [(model.producer(value), None, name)]
    records = [_placement(model, node, index, alias, shape) for node, index, alias in readers]
    first = min(range(len(readers)), key=lambda k: (readers[k][2] != name, not _agrees(records[k])))
    others = [r for k, r in enumerate(readers) if k != first]
    return records[first] | {"also": _also(model, records[first], others, name, shape)}


def _agrees(record: dict) -> bool:
    """Whether a record's module is the one its node's scope names (its name's own reader)."""
    return module_of(record["scope"] or "") == (record["module"] or "")


def _also(model, first: dict, readers: list, name: str, shape) -> list:
    """The records of the other ``readers`` of constant ``name`` that place it on another
    (module, param): by the name of the ``Identity`` they read it through, else by their scope
    and op (the legacy exporter's ``res_bn.bias = Identity(cat_bn.bias)`` after identity
    elimination); a reader placing it nowhere computes with ``first``'s parameter itself.
    ``torch_axes[a]`` is the torch axis of ONNX axis ``a`` there (every axis: a later round of
    ``--steps`` may cut another)."""
    seen, also = {(first["module"], first["param"])}, []
    for node, index, alias in readers:
        record = _placement(model, node, index, alias, shape, by_name=alias != name)
        where = (record["module"], record["param"])
        if None not in where and where not in seen:
            seen.add(where)
            axes = [torch_axis(record, axis, len(shape)) for axis in range(len(shape))]
            also.append(record | {"torch_axes": axes})
    return also


def _placement(model, node, index, alias: str, shape, by_name: bool = True) -> dict:
    """The source record of one reader ``node`` (its input ``index``) of a constant called
    ``alias`` there: a state-dict key names the parameter (``by_name``); else the scope and the
    op do. A root-level name (``val_12``) read as a layer's input inside a submodule is the
    exporter's constant, not a root parameter."""
    param, layout = TORCH_PARAMS.get((node.op_type, index), (None, None)) if node else (None, None)
    if node is not None and node.op_type == "Add" and len(shape) != 1:
        param, layout = None, None
    if layout == TRANS_B:
        layout = SAME if model.attr(node, "transB", 0) else TRANSPOSED
    scope = (scope_of(node) or None) if node is not None else None
    scoped = module_of(scope or "") or None
    key = state_key(alias) if by_name else None
    if key is not None and key[0] == "" and scoped and param:
        key = None
    module = key[0] if key else scoped
    return {
        "node": node.name if node is not None else None,
        "op_type": node.op_type if node is not None else None,
        "input": index,
        "scope": scope,
        "module": module,
        "param": key[1] if key else (param if module else None),
        "layout": SAME if key else layout,  # a parameter is stored as it is
        "is_parameter": key is not None,
    }


def state_key(name: str) -> tuple[str, str] | None:
    """(module path, parameter) of a name that is a PyTorch state-dict key (onnxruntime's
    ``_quantized`` suffix dropped): ``a.b.param``, or ``param`` of the root module (path
    ``""``); None for the exporter's names (``onnx::MatMul_7``, ``/Constant_output_0``)."""
    match = _STATE_KEY.match(name.removesuffix(QUANTIZED))
    return (match.group(1) or "", match.group(2)) if match else None


def _readers(model, value, alias: str) -> list[tuple]:
    """(node, input index, name) of every node computing with ``value``, in order of use, past
    ``DequantizeLinear``/``Identity``/``Cast`` (a quantized weight is its layer's weight); the
    name is the constant's, or that of the ``Identity`` on the way (the legacy exporter's
    deduplicated ``res_bn.bias = Identity(cat_bn.bias)``) when it is a state-dict key."""
    found = []
    for node in model.consumers(value):
        for index in (i for i, v in enumerate(node.inputs) if v is value):
            out = node.outputs[0] if node.op_type in PASS_THROUGH and index == 0 else None
            if out is None or not model.consumers(out):
                found.append((node, index, alias))
                continue
            named = node.op_type == "Identity" and state_key(out.name or "") is not None
            found += _readers(model, out, out.name if named else alias)
    return found


def torch_axis(record: dict, axis: int, rank: int) -> int | None:
    """``axis`` of an ONNX constant in the source framework's convention, None where unknown."""
    if record["layout"] == SAME:
        return axis
    if record["layout"] == TRANSPOSED and rank == 2:
        return 1 - axis
    return None


def refit_path(plan_path: str | Path) -> Path | None:
    """Where the refit weights of the plan written to ``plan_path`` go: ``plan.refit.npz``
    beside ``plan.json`` (a name no data file of the user's is likely to have); None for a plan
    written to a stream (``/dev/stdout``, a FIFO, ``-``), which has nothing beside it."""
    path = Path(plan_path)
    if str(plan_path) == "-" or is_stream(path):
        return None
    return path.with_name(f"{path.stem}.refit.npz")


def plan_files(artifacts: dict, plan_path: str | Path) -> list[tuple[Path, str | bytes]]:
    """The files ``--plan-out plan_path`` writes from a run's ``artifacts``: the plan (JSON), and
    with refit weights (``artifacts["refit"]``, recovery's) their ``.npz`` beside it, which
    the plan names, with the sources of refit constants the cut did not reach."""
    plan, refit = dict(artifacts["plan"]), artifacts.get("refit")
    arrays = (refit or {}).get("arrays") or {}
    written: list[tuple[Path, str | bytes]] = []
    if arrays:
        npz = refit_path(plan_path)
        if npz is None:
            raise InputError(
                f"--plan-out {plan_path}: the refit weights go in a file beside the plan, and a "
                "stream has none; give a file path (or --no-recover)"
            )
        plan["sources"] = dict(plan.get("sources", {}))
        for name, record in refit["sources"].items():  # refit constants the cut did not reach
            plan["sources"].setdefault(name, record)
        plan["refit"] = {
            "file": npz.name,
            "layout": "onnx",
            "names": sorted(arrays),
            "note": "values after the cut, in ONNX layout: transpose a 'transposed' source's for "
            "torch",
        }
        written.append((npz, _npz_bytes(arrays)))
    return [(Path(plan_path), json.dumps(plan, indent=2) + "\n"), *written]


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_refit(plan: dict, plan_path: str | Path) -> dict[str, np.ndarray]:
    """The refit weights a plan names (``refit.file`` beside ``plan_path``), {} without."""
    name = (plan.get("refit") or {}).get("file")
    if not name:
        return {}
    path = Path(plan_path).parent / name
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the refit weights {path}: {error}") from None


def read_plan(path: str) -> dict:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read plan {path}: {error}") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise InputError(f"{path} is not a sparsec channel plan (written by --plan-out)")
    if plan.get("version") not in READS:
        raise InputError(
            f"plan {path} has version {plan.get('version')!r}; this sparsec reads versions "
            f"{', '.join(map(str, READS))}"
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
        if len(balance(group, removed[group.id], np.zeros(group.units))) < len(drop):
            raise InputError(
                f"plan removes unequal numbers of channels from the groups of a grouped conv "
                f"in {group.describe()}"
            )
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
