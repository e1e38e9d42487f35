"""Concrete value shapes for a model whose inputs are bound to numbers.

ONNX shape inference runs first (with the bound input dims and data propagation). When symbolic
dims defeat it (a Reshape target computed at run time, a custom op, ...) the values still
unknown are measured by running onnxruntime once on representative inputs, on their cone alone
(``ir.cone``: the nodes they depend on, stopping at a ``Shape`` of a value whose shape inference
knows, so a class token's run-time ``Expand`` costs a few nodes, not the whole model). The
result is cached per model version and binding.

Shapes vouched across a pass (``known_shapes`` before it, ``vouch`` after it): a pass whose
``keeps_value_shapes`` holds leaves every value it does not remove with the shape it had, so
what was known before it stays true of the values that survive. ``value_shapes`` then infers
only the nodes whose outputs the vouched shapes lack, one by one (none when the pass only
removed or rewired); when one of those fails, the whole graph, and it measures only the values
neither inference nor the vouched shapes know.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.errors import SparsecError
from sparsec.ir import runtime
from sparsec.ir import shapes as ir_shapes
from sparsec.ir.cone import Cone, cone_proto, find_cone

Shape = tuple[int, ...]
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model: (cone key, shapes)


_SHAPES, _VOUCHED = "value_shapes:", "vouched_shapes:"  # cache keys: + the binding (+ fallback)
NODE_INFERENCE = 0.5  # the share of the graph's nodes inferred one by one, at most (0.05 ms
# per node on mobilevit, as the whole graph's inference per node: past it, that one at once)


def value_shapes(
    model, overrides: Mapping[str, Shape] | None = None, *, fallback: bool = True
) -> dict[str, Shape]:
    """{value name: concrete shape} for main-graph values, inputs bound as ``bind_shapes`` says."""
    bindings = bind_shapes(model, overrides)
    key = _SHAPES + _key(bindings) + f":{fallback}"
    return model.cached(key, lambda: _compute(model, bindings, fallback))


def binding_key(model, overrides: Mapping[str, Shape] | None = None) -> str:
    """The key ``known_shapes`` files the shapes of a binding under (``bind_shapes``'s; the
    default one is the binding the group analysis works at)."""
    return _key(bind_shapes(model, overrides))


def _key(bindings: Mapping[str, Shape]) -> str:
    return repr(sorted(bindings.items()))


def known_shapes(model, *, unedited: bool = False) -> dict[str, dict[str, Shape]]:
    """{binding key: shapes} of what is known of ``model``'s value shapes now, without
    computing anything (its current ``value_shapes`` results and vouched shapes);
    ``unedited``: as ``Model.current_entries`` takes it."""
    known: dict[str, dict[str, Shape]] = {}
    for key, shapes in model.current_entries((_VOUCHED, _SHAPES), unedited=unedited).items():
        binding = key.removeprefix(_VOUCHED)
        if key.startswith(_SHAPES):
            binding = key.removeprefix(_SHAPES).rsplit(":", 1)[0]
        known[binding] = {**known.get(binding, {}), **shapes}
    return known


def vouch(model, known: Mapping[str, Mapping[str, Shape]]) -> None:
    """Declare ``known`` (``known_shapes`` taken before a pass that keeps value shapes) true
    of the values of ``model`` now; stale at its next edit."""
    if known:
        model.remember({_VOUCHED + binding: shapes for binding, shapes in known.items()})


class ShapeCarrier:
    """The value shapes known along a sequence of passes on one model: taken at the start,
    vouched for after each pass that changed the model and keeps value shapes, read again
    after any other change (a cut vouches for its own shapes), and after a pass that changed
    nothing only what it computed is added (no walk of the graph: a pass that reports no
    change made none, the pass contract)."""

    def __init__(self, model) -> None:
        self.known = known_shapes(model)

    def passed(self, member, result) -> None:
        """Update after ``member`` (a pass) gave ``result``."""
        model = result.model
        if not result.modified and getattr(member, "reports_changes", True):
            self.known = {**self.known, **known_shapes(model, unedited=True)}
        elif getattr(member, "keeps_value_shapes", False) and member.in_place:
            present = model.values_by_name()  # a name freed now may be reused for another value
            self.known = {
                binding: {name: shape for name, shape in values.items() if name in present}
                for binding, values in self.known.items()
            }
            vouch(model, self.known)
        else:
            self.known = known_shapes(model)


def _compute(model, bindings: Mapping[str, Shape], fallback: bool) -> dict[str, Shape]:
    vouched = model.current_entries(_VOUCHED + _key(bindings))
    hints: Mapping[str, Shape] = next(iter(vouched.values()), {})
    extended = _extended(model, bindings, hints) if hints else None
    if extended is not None:
        return extended
    inferred = ir_shapes.infer_cached(model, bindings)
    known = {
        name: tuple(dims)
        for name, dims in inferred.items()
        if all(isinstance(d, int) for d in dims)
    }
    known.update(_given_shapes(model, bindings))
    missing = [name for name in _reported(model) if name not in known]
    known.update({name: hints[name] for name in missing if name in hints})
    missing = [name for name in missing if name not in hints]
    if missing and fallback:
        known.update(measure_shapes(model, bindings, missing, known))
    return known


def _reported(model) -> list[str]:
    """The node outputs whose shapes ``value_shapes`` must know (measuring them if need be):
    used or graph outputs, tensors (unused and non-tensor outputs don't matter)."""
    return [
        v.name
        for node in model.nodes()
        for v in node.outputs
        if v.name and (v.uses() or v.is_graph_output()) and model.is_tensor(v)
    ]


def _extended(model, bindings: Mapping[str, Shape], hints: Mapping[str, Shape]) -> dict | None:
    """``_compute``'s result from vouched shapes (those of the values still in the graph, the
    inputs' and constants'), the reported values they lack inferred node by node
    (``ir.shapes.infer_node``, at most a ``NODE_INFERENCE`` share of the nodes); None when one
    of them is not found that way (then the whole graph is inferred)."""
    present = model.values_by_name()
    known = {name: shape for name, shape in hints.items() if name in present}
    known.update(_given_shapes(model, bindings))
    lacking = set(_reported(model)) - set(known)
    nodes = [n for n in model.nodes() if any(v.name in lacking for v in n.outputs)]
    if len(nodes) > NODE_INFERENCE * len(model.nodes()):
        return None
    dtypes: dict = {}
    for node in nodes:  # in graph order: a node's inputs are known before it
        found = ir_shapes.infer_node(model, node, known, dtypes)
        if found is None:
            return None
        known.update(found)
    return known if lacking <= known.keys() else None  # an output inference left out


def _given_shapes(model, bindings: Mapping[str, Shape]) -> dict[str, Shape]:
    """The shapes known without inference: the bound tensor inputs' (a sequence's binding is
    its elements' shape, not its own) and the constants'."""
    tensors = {v.name for v in model.inputs if model.is_tensor(v)}
    given = {name: shape for name, shape in bindings.items() if name in tensors}
    return {**given, **constant_shapes(model)}


def constant_shapes(model) -> dict[str, Shape]:
    """{name: shape} of the initializers whose shape is known."""
    found = {}
    for name, value in model.initializers().items():
        shape = model.constant_shape(value)
        if shape is not None:
            found[name] = shape
    return found


def measure_shapes(
    model, bindings: Mapping[str, Shape], names: list[str], known: Mapping[str, Shape]
) -> dict[str, Shape]:
    """Shapes of ``names`` as onnxruntime computes them on seeded inputs of the bound shapes
    (``known``: the shapes known already, where the run may stop). The last measurement is
    kept per model with its cone's key (``ir.cone.Cone.key``): a pass that changed the model
    elsewhere (dead code, a canonicalization away from these values) costs no new run."""
    found = find_cone(model, names, known)
    key = None if found is None else (found.key(), tuple(sorted(bindings.items())))
    last = _MEASURED.get(model)
    if key is not None and last is not None and last[0] == key:
        return dict(last[1])
    shapes = {
        name: tuple(array.shape) for name, array in _run(model, bindings, names, found).items()
    }
    if key is not None:
        _MEASURED[model] = (key, shapes)
    return dict(shapes)


def measure_values(model, names: list[str], overrides: Mapping[str, Shape] | None = None) -> dict:
    """Values of (small) tensors ``names`` on seeded inputs of the bound shapes; {} on failure."""
    if not names:
        return {}
    bindings = bind_shapes(model, overrides)
    key = "values:" + repr(sorted(bindings.items())) + repr(sorted(names))
    return model.cached(
        key,
        lambda: _run(
            model, bindings, list(names), find_cone(model, names, value_shapes(model, overrides))
        ),
    )


def _run(model, bindings: Mapping[str, Shape], names: list[str], found: Cone | None) -> dict:
    """``names`` computed on seeded inputs: by their cone (``ir.cone``: every node they depend
    on, a ``Shape`` of a value whose shape is known taken as a constant), else (no ``found``)
    by the whole model; {} when onnxruntime refuses."""
    try:
        if found is None:
            session = runtime.session_for(
                model, extra_outputs=names, optimization="disable", lean=True, only=True
            )
        else:
            data = cone_proto(model, found).SerializeToString()
            session = runtime.Session(data, optimization="disable", lean=True)
        results = session.run(random_inputs(model, bindings, seed=0), names)
    except SparsecError:
        return {}  # whoever needed these reports them as unknown
    return {name: array for name, array in results.items() if hasattr(array, "shape")}
