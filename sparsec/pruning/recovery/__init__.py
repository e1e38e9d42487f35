"""Recovery: a ridge least-squares refit, on calibration data, of the layers a pruning cut into
(``layers`` finds them, ``views`` reads their weights as matrices, ``ridge`` solves, ``sparsegpt``
chooses N:M masks again, ``refit`` drives). The algebra: docs/recovery.md.

Invariant: a refit changes weight and bias values only, never shapes, dtypes or structure.
"""

from sparsec.pruning.recovery.layers import find_layers
from sparsec.pruning.recovery.refit import output_error, recover, recover_result, refit_reference
from sparsec.pruning.recovery.sparsegpt import obs_nm_sweep

__all__ = [
    "find_layers",
    "obs_nm_sweep",
    "output_error",
    "recover",
    "recover_result",
    "refit_reference",
]
