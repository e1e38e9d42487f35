"""``GraphBuilder``: small seeded test graphs in a few chained calls, for users' pass tests.

It writes with the fuzzing generator's ``Builder`` and blocks (``sparsec.testing.blocks``), so
a graph built here has the same properties as a fuzzed one: weights drawn from
``default_rng(seed)`` (He-normal weights, uniform biases, BatchNorm statistics never an
identity), every node named (``name=`` sets the main node's name, as an exporter's scope would;
the other nodes of that layer become ``name/OpType``), the result checked by the ONNX checker
with shapes inferred. The same calls with the same seed give the same model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from sparsec.testing import blocks
from sparsec.testing.builder import Builder, State
from sparsec.testing.graphs import _finish

_KINDS = {4: "image", 3: "seq", 2: "flat"}


class GraphBuilder:
    """A graph grown one layer at a time on a running tensor; each method returns the builder.

    >>> g = GraphBuilder((1, 3, 8, 8))
    >>> skip = g.conv(8, name="stem").relu().current
    >>> model = g.conv(8, name="block.conv").add(skip).flatten().linear(10).build()
    """

    def __init__(
        self,
        shape: tuple[int, ...] = (1, 3, 8, 8),
        *,
        opset: int = 17,
        seed: int = 0,
        dynamic_batch: bool = False,
    ) -> None:
        """``shape``: the input's, NCHW (image), [N, S, D] (sequence) or [N, F] (features);
        ``dynamic_batch``: the batch dimension is symbolic (named ``batch``)."""
        if len(shape) not in _KINDS:
            raise ValueError(f"input shape {shape}: rank 2, 3 or 4 expected")
        self._graph = {
            "opset": opset,
            "batch": "symbolic" if dynamic_batch else shape[0],
            "weights": "initializer",
            "input": {"shape": list(shape), "kind": _KINDS[len(shape)]},
        }
        self._b = Builder(self._graph)
        self._b.rng = np.random.default_rng(seed)
        self._state = State("input", list(shape), _KINDS[len(shape)])

    @property
    def current(self) -> str:
        """The name of the running tensor (to ``add`` back later: a skip connection)."""
        return self._state.name

    @property
    def shape(self) -> list[int]:
        """The running tensor's shape."""
        return list(self._state.shape)

    def _layer(self, fn: Callable[..., State], spec: dict, name: str | None, **kw) -> GraphBuilder:
        first = len(self._b.nodes)
        self._state = fn(self._b, self._state, spec, **kw)
        if name is not None:
            new = [n for n in self._b.nodes[first:] if n.op_type != "Constant"]
            for index, node in enumerate(new):
                node.name = name if index == 0 else f"{name}/{node.op_type}"
        return self

    def _need(self, *kinds: str) -> None:
        if self._state.kind not in kinds:
            raise ValueError(f"this layer needs a {' or '.join(kinds)} tensor, not {self.shape}")

    # ------------------------------------------------------------ layers
    def conv(
        self,
        out: int,
        kernel: int = 3,
        *,
        stride: int = 1,
        group: int = 1,
        bias: bool = True,
        name: str | None = None,
    ) -> GraphBuilder:
        """Conv to ``out`` channels, ``kernel``×``kernel``, 'same' padding, ``group`` groups."""
        self._need("image")
        spec = {"k": kernel, "stride": stride, "group": group, "bias": bias}
        return self._layer(blocks.conv, spec, name, c_out=out)

    def act(self, kind: str = "Relu", *, name: str | None = None) -> GraphBuilder:
        """An activation (Relu, Sigmoid, Tanh, HardSwish, LeakyRelu, Clip, Gelu, ...)."""
        return self._layer(blocks.act, {"act": kind}, name)

    def relu(self, *, name: str | None = None) -> GraphBuilder:
        """A Relu."""
        return self.act("Relu", name=name)

    def batchnorm(self, *, name: str | None = None) -> GraphBuilder:
        """BatchNormalization with random (non-identity) scale, bias, mean and variance."""
        self._need("image", "flat")
        return self._layer(blocks.bn, {}, name)

    def maxpool(self, kernel: int = 2, *, name: str | None = None) -> GraphBuilder:
        """MaxPool ``kernel``×``kernel``, stride ``kernel`` (skipped on a too small image)."""
        self._need("image")
        return self._layer(blocks.pool, {"pool": "MaxPool", "k": kernel, "stride": kernel}, name)

    def flatten(self, *, name: str | None = None) -> GraphBuilder:
        """GlobalAveragePool then Flatten: [N, C, H, W] → [N, C]."""
        self._need("image")
        return self._layer(blocks.to_flat, {"pool": True}, name)

    def linear(self, out: int, *, bias: bool = True, name: str | None = None) -> GraphBuilder:
        """Gemm (transB=1) on features; MatMul (+ Add bias) on the last axis of a sequence."""
        self._need("flat", "seq")
        return self._layer(blocks.linear, {"gemm": True, "bias": bias}, name, out=out)

    def add(self, other: str, *, name: str | None = None) -> GraphBuilder:
        """The running tensor plus an earlier one (``current`` then), of the same shape."""
        return self.op("Add", other, name=name)

    def op(
        self,
        op_type: str,
        *inputs: np.ndarray | str,
        shape: list[int] | None = None,
        name: str | None = None,
        **attributes,
    ) -> GraphBuilder:
        """Any standard op on the running tensor: its inputs are the running tensor, then
        ``inputs`` (an array becomes an initializer, a string names an earlier tensor); its
        output has ``shape`` (default: the running tensor's)."""
        names = [x if isinstance(x, str) else self._b.const(np.asarray(x)) for x in inputs]
        out = self._b.op(op_type, [self._state.name, *names], **attributes)
        if name is not None:
            self._b.nodes[-1].name = name
        self._state = State(out, list(shape or self._state.shape), self._state.kind)
        return self

    def output(self) -> GraphBuilder:
        """Make the running tensor a graph output too (the last one always is)."""
        self._b.outputs.append((self._state.name, list(self._state.shape)))
        return self

    # ------------------------------------------------------------ results
    def build(self) -> onnx.ModelProto:
        """The model: input ``input``, the running tensor as the last output; checked."""
        model = _finish(self._b, self._graph, self._state)
        onnx.checker.check_model(model, full_check=True)
        return model

    def model(self):
        """The model as a ``sparsec.Model``."""
        from sparsec.ir import Model

        return Model.from_proto(self.build())
