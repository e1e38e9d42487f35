"""The built-in passes (importing this module registers them) and the default pipelines."""

from __future__ import annotations

from sparsec.passes.bn_fold import BatchNormFoldPass
from sparsec.passes.canonicalize import TransposeCanonicalizePass  # noqa: F401  (registers transpose- and shape-canonicalize)
from sparsec.passes.channel_prune import ChannelPrunePass  # noqa: F401  (registers channel-prune)
from sparsec.passes.cleanup import DeadCodePass, IdentityEliminationPass
from sparsec.passes.const_fold import ConstantFoldShapesPass
from sparsec.passes.pipeline import Pipeline
from sparsec.passes.sparse_format import SparseEncodePass  # noqa: F401  (registers sparse-encode)
from sparsec.passes.sparsity import WeightSparsityPass  # noqa: F401  (registers weight-sparsity)
from sparsec.passes.split_qkv import SplitQkvPass  # noqa: F401  (registers split-qkv)


def cleanup_passes() -> list:
    """The exact cleanup passes, in the order the default pipeline runs them."""
    return [IdentityEliminationPass(), BatchNormFoldPass(), ConstantFoldShapesPass(), DeadCodePass()]


def default_pipeline(**pipeline_options) -> Pipeline:
    """What ``sparsec compress`` runs when no transform is asked for: cleanup to a fixed point."""
    return Pipeline(cleanup_passes(), fixed_point=True, **pipeline_options)
