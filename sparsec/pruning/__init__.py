"""The pruning layer: choosing units and cutting them, the oracle reference, schedules,
budgets and recovery.

Invariant: imports only ``sparsec.errors``, ``sparsec.results``, ``sparsec.ir``,
``sparsec.analysis``, ``sparsec.validate`` and itself, never ``passes``, ``api`` or ``cli``
(tests/test_layers.py checks it).
"""
