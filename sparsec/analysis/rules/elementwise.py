"""Axis rules of elementwise ops and activations: every input broadcasts (numpy, right-aligned)
to the output, so each axis of an input is the same axis of the output, and a size-1 axis is
free (it never shrinks and must not tie the groups it meets).
"""

from __future__ import annotations

from sparsec.analysis.rules.core import (
    Coupling,
    RuleContext,
    axis_rule,
    identity_all,
    link_broadcast,
)

ELEMENTWISE = (
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "PRelu",
    "Mod",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Softsign",
    "Mish",
    "ThresholdedRelu",
    "Shrink",
    "Erf",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Sqrt",
    "Reciprocal",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "Sin",
    "Cos",
    "IsNaN",
    "IsInf",
    "Clip",
    "Cast",
    "Identity",
    "Dropout",
)


@axis_rule(*ELEMENTWISE)
def elementwise(node, ctx: RuleContext) -> Coupling:
    """Every input broadcasts to the output; extra outputs (Dropout's mask) match output 0."""
    c = Coupling()
    out = node.outputs[0]
    for value in node.inputs:
        if value is not None:
            link_broadcast(c, ctx, value, out)
    for extra in node.outputs[1:]:
        if extra is not None and extra.name and ctx.rank(extra) == ctx.rank(out):
            identity_all(c, extra, out, ctx.rank(out) or 0)
    return c


@axis_rule("CastLike")
def cast_like(node, ctx: RuleContext) -> Coupling:
    c = Coupling()
    identity_all(c, node.inputs[0], node.outputs[0], ctx.rank(node.outputs[0]) or 0)
    c.free.update((node.inputs[1].name, axis) for axis in range(ctx.rank(node.inputs[1]) or 0))
    return c
