"""Exact cleanup passes: dead-code elimination and identity elimination.

Both preserve every graph output bit for bit and never change the model's interface:
a node is removed only when no graph output depends on it (dead code), or when it forwards
its input unchanged (Identity; Dropout in inference, whose mask nobody reads).
"""

from __future__ import annotations

from typing import ClassVar

from sparsec.ir import cleanup
from sparsec.passes.base import InPlacePass, PassResult


class DeadCodePass(InPlacePass):
    """Remove nodes, initializers, functions and opset imports that no output depends on."""

    name: ClassVar[str] = "dead-code"
    keeps_value_shapes: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "Remove unused nodes, optional outputs, initializers, functions and opset imports."
    )

    def call(self, model) -> PassResult:
        removed = cleanup.remove_unused(model)
        return PassResult(
            model,
            modified=any(removed.values()),
            stats={f"{k}_removed": v for k, v in removed.items()},
        )


def _forwarded_input(model, node):
    """The input an identity-like node passes through unchanged, or None."""
    if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return None
    if node.op_type == "Identity":
        return node.inputs[0]
    if node.op_type == "Dropout" and not _mask_used(node) and not _may_train(model, node):
        return node.inputs[0]
    return None


def _mask_used(node) -> bool:
    return len(node.outputs) > 1 and bool(
        node.outputs[1].uses() or node.outputs[1].is_graph_output()
    )


def _may_train(model, node) -> bool:
    """Dropout drops only with a ``training_mode`` input that is true or not constant."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    flag = model.constant(node.inputs[2])
    return flag is None or bool(flag.reshape(-1)[0])


class IdentityEliminationPass(InPlacePass):
    """Bypass Identity nodes and inference-mode Dropout nodes."""

    name: ClassVar[str] = "identity-elimination"
    keeps_value_shapes: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "Bypass Identity and inference-mode Dropout nodes (graph outputs keep their names)."
    )

    def call(self, model) -> PassResult:
        removed = 0
        for node in list(model.all_nodes()):
            source = _forwarded_input(model, node)
            output = node.outputs[0]
            if source is None or not model.can_replace(output, source):
                continue
            model.replace_all_uses(output, source)
            model.remove_node(node)
            removed += 1
        return PassResult(model, modified=removed > 0, stats={"nodes_removed": removed})
