"""A region (``regions.Region``) as a differentiable torch function of its external inputs.

``TorchRegion(model, region)`` holds the region's constants as tensors: its trainable ones as
``torch.nn.Parameter`` (float32), the rest fixed. ``forward(externals)`` runs the nodes in
graph order (``torch_ops``) and returns the exit. A weight listed in ``region.masked`` is used
as ``parameter * mask`` with ``mask = (weight != 0)``: its zeros (N:M, unstructured) stay
zero whatever the optimiser does, and ``arrays()`` returns it masked. Shapes never change.
"""

from __future__ import annotations

import numpy as np

from sparsec.pruning.reconstruct import torch_ops
from sparsec.pruning.reconstruct.regions import Region


class TorchRegion:
    def __init__(self, model, region: Region, torch) -> None:
        self.torch, self.region = torch, region
        values = {v.name: v for n in region.nodes for v in n.inputs if v is not None}
        self.fixed = {
            name: torch.from_numpy(np.array(model.constant(values[name])))
            for name in region.constants
            if name not in region.trainable
        }
        self.dtypes = {name: model.constant(values[name]).dtype for name in region.trainable}
        self.parameters = {
            name: torch.nn.Parameter(
                torch.from_numpy(np.array(model.constant(values[name]), dtype=np.float32))
            )
            for name in region.trainable
        }
        self.masks = {name: (self.parameters[name].detach() != 0).float() for name in region.masked}

    def tensors(self) -> dict:
        """Every constant as the forward pass reads it (masked weights masked)."""
        found = dict(self.fixed)
        for name, parameter in self.parameters.items():
            found[name] = parameter * self.masks[name] if name in self.masks else parameter
        return found

    def forward(self, externals: dict):
        """The exit's value from the external inputs (tensors by name)."""
        env = {**self.tensors(), **externals}
        for node in self.region.nodes:
            inputs = [env[v.name] if v is not None else None for v in node.inputs]
            for value, output in zip(node.outputs, torch_ops.run_node(node, inputs)):
                if value is not None:
                    env[value.name] = output
        return env[self.region.exit]

    def state(self) -> dict:
        """A copy of the trainable values (for early stopping's best)."""
        return {name: p.detach().clone() for name, p in self.parameters.items()}

    def load(self, state: dict) -> None:
        with self.torch.no_grad():
            for name, tensor in state.items():
                self.parameters[name].copy_(tensor)

    def arrays(self) -> dict[str, np.ndarray]:
        """The trainable values as the ONNX graph stores them (masked, original dtype)."""
        with self.torch.no_grad():
            return {
                name: tensor.detach().numpy().astype(self.dtypes[name])
                for name, tensor in self.tensors().items()
                if name in self.parameters
            }
