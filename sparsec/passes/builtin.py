"""The built-in passes (``BUILTIN_PASSES``, which the registry lists) and the default pipelines."""

from __future__ import annotations

from sparsec.passes.bn_fold import BatchNormFoldPass
from sparsec.passes.canonicalize import ShapeCanonicalizePass, TransposeCanonicalizePass
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.passes.cleanup import DeadCodePass, IdentityEliminationPass
from sparsec.passes.const_fold import ConstantFoldShapesPass
from sparsec.passes.dead_channels import DeadChannelsPass
from sparsec.passes.drop_blocks import DropBlocksPass
from sparsec.passes.pipeline import Pipeline
from sparsec.passes.shared_constants import ShareEqualVectorsPass, UnshareVectorsPass
from sparsec.passes.sparse_format import SparseEncodePass
from sparsec.passes.sparsity import WeightSparsityPass
from sparsec.passes.split_qkv import SplitQkvPass

# What ``registry.available`` lists besides entry points and ``@register``ed user passes (this
# module does not import the registry: the registry reads this tuple when first asked).
BUILTIN_PASSES = (
    BatchNormFoldPass,
    ChannelPrunePass,
    ConstantFoldShapesPass,
    DeadChannelsPass,
    DeadCodePass,
    DropBlocksPass,
    IdentityEliminationPass,
    ShapeCanonicalizePass,
    ShareEqualVectorsPass,
    SparseEncodePass,
    SplitQkvPass,
    TransposeCanonicalizePass,
    UnshareVectorsPass,
    WeightSparsityPass,
)


def canonical_passes() -> list:
    """The exact rewrites before channel-prune: identity elimination and shape folding (so that
    Reshape targets computed from static shapes become constants surgery can rewrite), exporter
    idioms canonicalized, dead code removed, and a copy of a shared vector per reader (so that
    an exporter's deduplicated bias does not merge groups; ``after_cut_passes`` shares what the
    cut left equal)."""
    return [
        IdentityEliminationPass(),
        ConstantFoldShapesPass(),
        ShapeCanonicalizePass(),
        SplitQkvPass(),
        TransposeCanonicalizePass(),
        DeadCodePass(),
        UnshareVectorsPass(),
    ]


def after_cut_passes() -> list:
    """What follows a cut that ``canonical_passes`` prepared: the vectors ``unshare-vectors``
    copied and the cut left equal shared again, then the cleanup."""
    return [ShareEqualVectorsPass(), *cleanup_passes()]


def cleanup_passes(dead_channels: bool | DeadChannelsPass = False) -> list:
    """The exact cleanup passes, in the order the default pipeline runs them; with
    ``dead_channels`` (the default pipeline), statically dead channels (all-zero weights) are
    removed after BatchNorm folding (not after weight sparsity, whose zeros are its pattern);
    a ``DeadChannelsPass`` given is that one (with calibration data: lossy, oracle-gated)."""
    dead = DeadChannelsPass() if dead_channels is True else dead_channels
    return [
        IdentityEliminationPass(),
        BatchNormFoldPass(),
        ConstantFoldShapesPass(),
        *([dead] if dead else []),
        DeadCodePass(),
    ]


def default_pipeline(**pipeline_options) -> Pipeline:
    """What ``sparsec compress`` runs when no transform is asked for: cleanup to a fixed point."""
    return Pipeline(cleanup_passes(dead_channels=True), fixed_point=True, **pipeline_options)
