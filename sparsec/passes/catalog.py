"""The built-in passes as plain data: name → (module, class name, one-line summary).

Invariant: this module imports nothing (not even of sparsec), so ``registry.summaries`` lists the
built-ins (``sparsec passes``, ``sparsec --help``) without importing a pass module, onnx-ir or
numpy. ``tests/test_catalog.py`` checks that every row equals the real class in
``builtin.BUILTIN_PASSES`` (its ``name``, ``__module__``, ``__qualname__`` and ``summary``), so
a pass added, renamed or re-described without its row here fails the tests.
"""

BUILTIN: dict[str, tuple[str, str, str]] = {
    "bn-fold": (
        "sparsec.passes.bn_fold",
        "BatchNormFoldPass",
        "Fold inference BatchNormalization into the preceding Conv, ConvTranspose or Gemm.",
    ),
    "channel-prune": (
        "sparsec.passes.channel_prune",
        "ChannelPrunePass",
        "Remove a fraction of the channels of every prunable channel group.",
    ),
    "const-fold-shapes": (
        "sparsec.passes.const_fold",
        "ConstantFoldShapesPass",
        "Fold shape-only integer subgraphs (Shape, Gather, Concat, ...) into constants.",
    ),
    "dead-channels": (
        "sparsec.passes.dead_channels",
        "DeadChannelsPass",
        "Remove channels whose weights are all zero (exact), or that are zero on calibration data.",
    ),
    "dead-code": (
        "sparsec.passes.cleanup",
        "DeadCodePass",
        "Remove unused nodes, optional outputs, initializers, functions and opset imports.",
    ),
    "drop-blocks": (
        "sparsec.passes.drop_blocks",
        "DropBlocksPass",
        "Remove the least important residual blocks and layers (depth pruning).",
    ),
    "identity-elimination": (
        "sparsec.passes.cleanup",
        "IdentityEliminationPass",
        "Bypass Identity and inference-mode Dropout nodes (graph outputs keep their names).",
    ),
    "shape-canonicalize": (
        "sparsec.passes.canonicalize",
        "ShapeCanonicalizePass",
        (
            "Drop no-op Reshape([-1]) and expand(-1 → 1) Where idioms on shape vectors "
            "(legacy exports)."
        ),
    ),
    "share-equal-vectors": (
        "sparsec.passes.shared_constants",
        "ShareEqualVectorsPass",
        "Make a copy unshare-vectors made read an equal tensor listed before it again.",
    ),
    "sparse-encode": (
        "sparsec.passes.sparse_format",
        "SparseEncodePass",
        "Store mostly-zero weights as values + bitmask or N:M positions, decoded by folding.",
    ),
    "split-qkv": (
        "sparsec.passes.split_qkv",
        "SplitQkvPass",
        "Split packed QKV projections (timm's qkv Linear) into separate Q, K, V projections.",
    ),
    "transpose-canonicalize": (
        "sparsec.passes.canonicalize",
        "TransposeCanonicalizePass",
        "Rewrite flatten → transpose → unflatten idioms (dynamo's SDPA Kᵀ) as one Transpose.",
    ),
    "unshare-vectors": (
        "sparsec.passes.shared_constants",
        "UnshareVectorsPass",
        "Give each reader of a shared bias or norm vector its own copy (unrelated groups stay apart).",
    ),
    "weight-sparsity": (
        "sparsec.passes.sparsity",
        "WeightSparsityPass",
        "Zero weights in N:M, unstructured or block patterns (zeros kept dense).",
    ),
}
