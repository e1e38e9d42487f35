"""An example user pass written only against sparsec's public API: Relu(Relu(x)) == Relu(x).

Load it with ``sparsec compress MODEL -o OUT --passes passes/drop_relu_before_relu.py:DoubleReluPass``.
"""

from __future__ import annotations

from typing import ClassVar

import sparsec


class DoubleReluPass(sparsec.InPlacePass):
    """Bypass a Relu whose input is already the output of a Relu."""

    name: ClassVar[str] = "double-relu"
    summary: ClassVar[str] = "Bypass Relu(Relu(x)) -> Relu(x)."

    def call(self, model: sparsec.Model) -> sparsec.PassResult:
        removed, diagnostics = 0, []
        for node in model.nodes():
            source = node.inputs[0] if node.op_type == "Relu" else None
            inner = model.producer(source) if source is not None else None
            if (
                inner is None
                or inner.op_type != "Relu"
                or not model.can_replace(node.outputs[0], source)
            ):
                continue
            model.replace_all_uses(node.outputs[0], source)
            model.remove_node(node)
            removed += 1
            diagnostics.append(
                sparsec.Diagnostic(
                    "info", "double-relu/removed", "bypassed a repeated Relu", node.name
                )
            )
        return sparsec.PassResult(
            model, modified=removed > 0, stats={"relus_removed": removed}, diagnostics=diagnostics
        )
