"""Axis rules, one module per family of ops; importing this package registers every rule.

``core`` holds the machinery (``Coupling``, ``Member``, ``RuleContext``, the ``axis_rule``
registry ``AXIS_RULES``, strict mode); the rule modules are ``elementwise``, ``dims`` (Shape,
Size), ``quantize`` (QDQ), ``compute`` (Conv, ConvTranspose, Gemm, MatMul), ``normalization``
(norms, pooling, LRN), ``layout`` (data movement: Concat, Split, Slice, Reshape, Transpose,
Gather, Pad, Resize, reductions, Softmax), ``shuffle`` (which part a split reshape follows: a
channel shuffle's inner one) and ``attention`` (fused attention ops). A new op rule goes into
the module of its family (or a new module imported here) and brings an example graph in
``tests/test_rules.py``.
"""

from __future__ import annotations

# importing the rule modules registers their rules (F401 is off for this file in pyproject.toml)
from sparsec.analysis.rules import (
    attention,
    compute,
    dims,
    elementwise,
    layout,
    normalization,
    quantize,
    recurrent,
    shuffle,
)
from sparsec.analysis.rules.core import (
    AXIS_RULES,
    Coupling,
    Edge,
    Fixup,
    GroupedWeight,
    Member,
    RuleContext,
    RuleError,
    apply_rule,
    axis_rule,
    is_strict,
    rule_for,
    strict,
)

__all__ = [
    "AXIS_RULES",
    "Coupling",
    "Edge",
    "Fixup",
    "GroupedWeight",
    "Member",
    "RuleContext",
    "RuleError",
    "apply_rule",
    "axis_rule",
    "is_strict",
    "rule_for",
    "strict",
]
