"""Concrete value shapes for a model whose inputs are bound to numbers.

ONNX shape inference runs first (with the bound input dims and data propagation). When symbolic
dims defeat it (a Reshape target computed at run time, a custom op, ...) the values still
unknown are measured by running onnxruntime once on representative inputs, on their cone alone
(``ir.cone``: the nodes they depend on, stopping at a ``Shape`` of a value whose shape inference
knows, so a class token's run-time ``Expand`` costs a few nodes, not the whole model). The
result is cached per model version and binding.
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


def value_shapes(
    model, overrides: Mapping[str, Shape] | None = None, *, fallback: bool = True
) -> dict[str, Shape]:
    """{value name: concrete shape} for main-graph values, inputs bound as ``bind_shapes`` says."""
    bindings = bind_shapes(model, overrides)
    key = "value_shapes:" + repr(sorted(bindings.items())) + f":{fallback}"
    return model.cached(key, lambda: _compute(model, bindings, fallback))


def _compute(model, bindings: Mapping[str, Shape], fallback: bool) -> dict[str, Shape]:
    inferred = ir_shapes.infer_cached(model, bindings)
    known = {
        name: tuple(dims)
        for name, dims in inferred.items()
        if all(isinstance(d, int) for d in dims)
    }
    tensors = {
        v.name for v in model.inputs if model.is_tensor(v)
    }  # a sequence's binding is its elements' shape
    known.update({name: shape for name, shape in bindings.items() if name in tensors})
    for name, value in model.initializers().items():
        shape = model.constant_shape(value)
        if shape is not None:
            known[name] = shape
    missing = [
        v.name
        for node in model.nodes()
        for v in node.outputs  # unused and non-tensor outputs don't matter
        if v.name
        and v.name not in known
        and (v.uses() or v.is_graph_output())
        and model.is_tensor(v)
    ]
    if missing and fallback:
        known.update(measure_shapes(model, bindings, missing, known))
    return known


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
