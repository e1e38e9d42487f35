"""Concrete value shapes for a model whose inputs are bound to numbers.

ONNX shape inference runs first (with the bound input dims and data propagation). When symbolic
dims defeat it (a Reshape target computed at run time, a custom op, ...) the values still
unknown are measured by running onnxruntime once on representative inputs with those values
exposed as extra outputs. The result is cached per model version and binding.
"""

from __future__ import annotations

from collections.abc import Mapping

from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.errors import SparsecError
from sparsec.ir import runtime
from sparsec.ir import shapes as ir_shapes

Shape = tuple[int, ...]


def value_shapes(
    model, overrides: Mapping[str, Shape] | None = None, *, fallback: bool = True
) -> dict[str, Shape]:
    """{value name: concrete shape} for main-graph values, inputs bound as ``bind_shapes`` says."""
    bindings = bind_shapes(model, overrides)
    key = "value_shapes:" + repr(sorted(bindings.items())) + f":{fallback}"
    return model.cached(key, lambda: _compute(model, bindings, fallback))


def _compute(model, bindings: Mapping[str, Shape], fallback: bool) -> dict[str, Shape]:
    inferred = ir_shapes.infer(model, bindings)
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
        known.update(measure_shapes(model, bindings, missing))
    return known


def measure_shapes(model, bindings: Mapping[str, Shape], names: list[str]) -> dict[str, Shape]:
    """Shapes of ``names`` as onnxruntime computes them on seeded inputs of the bound shapes."""
    return {name: tuple(array.shape) for name, array in _run(model, bindings, names).items()}


def measure_values(model, names: list[str], overrides: Mapping[str, Shape] | None = None) -> dict:
    """Values of (small) tensors ``names`` on seeded inputs of the bound shapes; {} on failure."""
    if not names:
        return {}
    bindings = bind_shapes(model, overrides)
    key = "values:" + repr(sorted(bindings.items())) + repr(sorted(names))
    return model.cached(key, lambda: _run(model, bindings, list(names)))


def _run(model, bindings: Mapping[str, Shape], names: list[str]) -> dict:
    try:
        session = runtime.session_for(model, extra_outputs=names, optimization="disable", lean=True)
        results = session.run(random_inputs(model, bindings, seed=0), names)
    except SparsecError:
        return {}  # whoever needed these reports them as unknown
    return {name: array for name, array in results.items() if hasattr(array, "shape")}
