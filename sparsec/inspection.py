"""The read-only half of the Python API: what ``sparsec analyze`` prints (params, MACs, the
channel groups, layers and attention blocks as channel-prune sees them, sensitivity tables).

Invariant: nothing here changes the model it is given; questions about the pruned form are
answered on a canonicalized copy (``as_pruned``), cached on the model per input shapes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from sparsec import executor as executors
from sparsec.analysis.activation_zeros import NEAR_ZERO, ActivationReport, activation_report
from sparsec.analysis.activations import RANDOM, load_calibration
from sparsec.analysis.blocks import find_blocks
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.heads import attention_blocks
from sparsec.analysis.inputs import bind_shapes, feed_shapes, load_npz, parse_input_shapes
from sparsec.analysis.lookup import layer_table
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.builtin import canonical_passes
from sparsec.pruning import sensitivity as sensitivity_analysis
from sparsec.pruning.blocks import influence_scores


def input_overrides(
    model: Model, input_shapes: Sequence[str], inputs
) -> dict[str, tuple[int, ...]]:
    """The shapes --input-shape gives; refused with --inputs, whose arrays set the shapes."""
    if input_shapes and inputs is not None:
        raise InputError(
            "--input-shape and --inputs both set the input shapes: give one (--inputs runs at its "
            "arrays' shapes)"
        )
    return parse_input_shapes(input_shapes, model)


def analyze(
    model: Model, input_shapes: Sequence[str] = (), inputs: str | Path | None = None
) -> dict:
    """Params, MACs, op histogram, opsets, inputs and outputs, as a JSON-ready dict.

    MACs are counted at the shapes of ``inputs`` (an .npz) when given, else at the bound shapes.
    """
    overrides = input_overrides(model, input_shapes, inputs)
    if inputs is not None:
        overrides = feed_shapes(load_npz(inputs, model))
    bound = bind_shapes(model, overrides)
    cost = analyze_cost(model, overrides)
    return {
        "model": str(model.path) if model.path else None,
        "producer": model.producer_name(),
        "opsets": model.opsets(),
        "params": cost.params,
        "macs": cost.macs,
        "other_ops": cost.other_ops,  # non-MAC element operations (analysis.cost)
        "bytes_moved": cost.bytes_moved,  # bytes data-movement ops write
        "nodes": len(model.nodes()),
        "functions": len(model.functions()),
        "op_histogram": dict(Counter(n.op_type for n in model.all_nodes()).most_common()),
        "cost_by_op": cost.by_op(),
        "inputs": [_value_info(model, v, bound.get(v.name)) for v in model.inputs],
        "outputs": [_value_info(model, v, None) for v in model.outputs],
        "macs_unknown_nodes": cost.unknown,
        "bytes": model.source_bytes,
    }


def layers(model: Model, input_shapes: Sequence[str] = ()) -> list[dict]:
    """Every layer of ``model`` (a Conv/Gemm/MatMul node with a constant weight) as JSON-ready
    rows: its names, the groups holding its output and input channels, prunable or why not
    (``analyze --layers``; ``sparsec.layer_table`` gives the row objects)."""
    model, overrides = as_pruned(model, input_shapes)
    return [row.to_json() for row in layer_table(model, overrides)]


def channel_groups(
    model: Model, input_shapes: Sequence[str] = (), lossy_couplings: bool = False
) -> tuple[list[dict], dict[str, str]]:
    """The channel groups of ``model`` as JSON-ready dicts (channels, weights, members, the
    nodes mixing their channels, and whether ``--channels`` would prune them, with
    ``--lossy-couplings`` as ``lossy_couplings`` says, or why not), and the barrier nodes."""
    model, overrides = as_pruned(model, input_shapes)
    analysis = find_channel_groups(model, overrides, lossy=lossy_couplings)
    rows = []
    for group in analysis.groups:
        rows.append(
            {
                "id": group.id,
                "channels": group.units,
                "prunable": group.prunable,
                "reason": group.reason,
                "weights": [f"{name}[{axis}]" for name, axis in group.compute],
                "lossy": [use.describe() for use in group.lossy],
                "members": [
                    {"value": name, "axis": axis, "size": group.sizes[(name, axis)]}
                    for name, axis in group.members
                    if not name.startswith("#")
                ],
            }
        )
    return rows, dict(analysis.barriers)


def attention_heads(model: Model, input_shapes: Sequence[str] = ()) -> list[dict]:
    """The attention blocks of ``model`` as JSON-ready dicts (group, form, heads, kv_heads,
    head_dim, q/k/v/o weights, and why ``--heads`` would leave a block whole, if it would)."""
    model, overrides = as_pruned(model, input_shapes)
    analysis = find_channel_groups(model, overrides)
    return [block.to_json() for block in attention_blocks(model, analysis)]


def blocks(
    model: Model,
    input_shapes: Sequence[str] = (),
    calibration: str | Path | None = None,
    samples: int = 0,
) -> list[dict]:
    """The removable units of ``model`` (residual and projection blocks, plain layers,
    transformer layers) as JSON-ready rows, on the copy channel-prune sees (``as_pruned``):
    the block fields, and ``macs_share``, the fraction of the model's MACs each one holds
    (``analyze --blocks``; ``sparsec.analysis.blocks.find_blocks`` gives the ``Block``s).
    With ``calibration``: each row's ``score``, the block influence ``--drop-blocks`` ranks by
    (``pruning.blocks.influence_scores``: lowest is removed first)."""
    model, overrides = as_pruned(model, input_shapes)
    total = analyze_cost(model, overrides).macs
    found = find_blocks(model, overrides)
    rows = [
        dict(block.to_json(), macs_share=block.macs / total if total else None) for block in found
    ]
    if calibration is not None:
        data = load_calibration(str(calibration), model, samples)
        scores = influence_scores(model, found, data)
        for row in rows:
            row["score"] = scores[row["id"]]
    return rows


def as_pruned(model: Model, input_shapes: Sequence[str] = ()) -> tuple[Model, dict | None]:
    """A copy of ``model`` as channel-prune sees it (``canonical_passes`` at these input shapes:
    Reshape targets folded, packed QKV split), and the shapes: what ``analyze --groups /
    --layers / --heads`` report is then what ``--channels`` / ``--heads`` prune. Cached on
    ``model`` per shapes: ``analyze --groups --layers --heads`` canonicalizes once."""
    overrides = parse_input_shapes(input_shapes, model) or None

    def canonicalize() -> Model:
        canonical = model.copy()
        canonical.input_shapes = dict(overrides or {})
        Pipeline(canonical_passes())(canonical)
        return canonical

    key = "as_pruned:" + repr(sorted((overrides or {}).items()))
    return model.cached(key, canonicalize), overrides


def _value_info(model: Model, value, bound) -> dict:
    dtype = model.elem_type(value)
    info = {
        "name": value.name,
        "type": model.type_name(value),
        "dtype": str(dtype) if dtype is not None else None,
        "shape": model.shape_dims(value),
    }
    if bound is not None:
        info["bound_shape"] = list(bound)
    return info


def sensitivity(
    model: Model,
    calibration: str | Path,
    *,
    samples: int = 0,
    importance: str = "activation",
    ratios: Sequence[float] = sensitivity_analysis.RATIOS,
    progress: Callable[[str], None] | None = None,
    jobs: int = 1,
    executor: str | executors.Executor = executors.LOCAL,
):
    """The sensitivity table of ``model`` (a ``SensitivityTable``): each prunable group pruned
    alone at each ratio, on the model as channel-prune sees it (canonicalized; ``model`` itself
    is left as loaded), output error on the calibration samples; the groups measured in ``jobs``
    worker processes or on ``executor`` (``sparsec.executor``: Ray actors), the same table."""
    data = load_calibration(calibration_spec(calibration), model, samples)
    canonical = model.copy()
    Pipeline(canonical_passes())(
        canonical
    )  # what runs before channel-prune: the same groups, the same ids
    return sensitivity_analysis.measure(
        canonical, data, ratios, importance, progress=progress, jobs=jobs, executor=executor
    )


def activations(
    model: Model, calibration: str | Path, samples: int = 0, threshold: float = NEAR_ZERO
) -> ActivationReport:
    """The activation-sparsity report of ``model`` as loaded (``analyze --activations``): per
    activation and per value a compute layer reads, its exact zeros and near-zeros (|x| <=
    ``threshold``) over the calibration samples, its dead channels, and the MACs a
    zero-skipping runtime would save."""
    data = load_calibration(calibration_spec(calibration), model, samples)
    return activation_report(model, data, threshold)


def calibration_spec(calibration: str | Path | None) -> str:
    """'' (none), 'random', or the absolute path of an existing calibration file or folder."""
    if calibration is None or str(calibration) == "":
        return ""
    if str(calibration) == RANDOM:
        return RANDOM
    if not Path(calibration).exists():
        raise InputError(
            f"calibration data {calibration} not found (a .npz, a folder of .npz/.npy files, or 'random')"
        )
    return str(Path(calibration).resolve())
