"""The README's ``from sparsec.passes.recovery import recover``; recovery is ``sparsec.pruning.recovery``."""

from sparsec.pruning.recovery import recover  # noqa: F401
