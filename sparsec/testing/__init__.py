"""sparsec's testing kit: build small graphs, feed them, and assert that a pass is exact.

    from sparsec.testing import GraphBuilder, assert_equivalent, assert_pass_exact, random_feeds

What it guarantees:

- ``GraphBuilder(shape, seed=0)`` gives the same checked ``onnx.ModelProto`` for the same calls
  and seed: seeded, non-trivial weights (no identity BatchNorm), named nodes.
- ``random_feeds(model, seed=0, batch=None)`` are the inputs ``sparsec compress`` validates on
  (``analysis.inputs``): seeded, valid index ranges, symbolic dims bound the same way.
- ``run(model, feeds)`` is one onnxruntime CPU run (graph optimizations off unless asked).
- ``assert_equivalent(a, b, feeds=None, rtol=1e-4, atol=1e-5, peak=None, seed=0)`` fails unless
  every output of ``b`` matches ``a``'s on the same feeds by ``sparsec.validate``'s rules
  (``|b − a| ≤ atol + rtol·|a|`` per element; with ``peak``, ``max |b − a| ≤ peak · max |a|``);
  NaN or Inf never match, a shape or structure difference fails; the message names the output,
  the max abs error, its index and both values.
- ``assert_pass_exact(pass_, model, feeds=None, ...)`` runs the pass on a copy (``model`` is
  untouched) and fails unless the result passes the ONNX checker's full check and matches the
  exactness oracle: a pass that returns a ``reference`` (a pruning pass: the masked original)
  must equal it within ``ORACLE_TOLERANCE`` · max |output| (1e-4), one without (a cleanup
  rewrite) must equal the original model within ``rtol``/``atol``. It returns the
  ``PassResult`` for asserts on stats and diagnostics.

Models may be a ``sparsec.Model``, an ``onnx.ModelProto`` or a path everywhere. The fuzzing
harness (``sparsec.testing.fuzz``) runs on the same feeds and runs. Not imported by sparsec itself.
"""

from sparsec.testing.graph_builder import GraphBuilder
from sparsec.testing.kit import (
    ModelLike,
    as_model,
    assert_equivalent,
    assert_pass_exact,
    make_model,
    oracle_error,
    random_feeds,
    run,
)

__all__ = [
    "GraphBuilder",
    "ModelLike",
    "as_model",
    "assert_equivalent",
    "assert_pass_exact",
    "make_model",
    "oracle_error",
    "random_feeds",
    "run",
]
