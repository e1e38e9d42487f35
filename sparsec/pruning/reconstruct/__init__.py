"""Block-wise reconstruction (optional extra ``sparsec[reconstruct]``, torch): after a cut,
fit the kept weights of each region between the residual joins (``regions``) by gradient
descent to the dense model's region outputs (``reconstruct``), translated from ONNX to torch
(``torch_ops``, ``translate``); ``result`` folds it into a pass's result. torch is imported
only when a reconstruction runs. docs/reconstruction.md.
"""
