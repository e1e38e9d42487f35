"""Op layouts: for each compute op, which inputs are its weight, activation and bias, and along
which axes they contract, as functions of the node's attributes. Per-op knowledge as data: the
axis rules, weight sites, MAC counting, BatchNorm folding and recovery's layer views all read
this one table.

The algebra. Every op here is a sum of products ``Y[.., n] = Σ_k X[.., k] · W[k, n] (+ bias[n])``
read through its layout; an ``Operand`` names an input, its *contraction* axis (``k``) and its
*kept* axis (the other side of the product: rows of an activation, output channels of a weight):

- MatMul ``A [.., M, K] · B [.., K, N]``: A contracts axis -1 (rows -2), B contracts -2 (columns
  -1); either operand may be the constant (``commutes``); no bias.
- Gemm ``alpha · A' · B' + beta · C``: A contracts 1 (rows 0), or 0 (rows 1) when ``transA``; B
  contracts 0 (columns 1), or 1 (columns 0) when ``transB``; C is input 2; either operand may be
  the constant.
- Conv ``W [O, I/g, k..]``: output channels on W axis 0, contraction on axis 1; ConvTranspose
  ``W [I, O/g, k..]``: contraction on axis 0, output channels on axis 1. X's and Y's channels are
  axis 1, their batch axis 0; B is input 2. W axis 0 holds *all* channels of its side (Conv: the
  output, ConvTranspose: the input: ``full_side``); W axis 1 holds one group's channels, so with
  ``group`` g > 1 it is not an axis of the activation on that side.

MACs: a conv's every element of its ``full_side`` activation costs ``prod(W.shape[1:])`` (Conv:
each output sums I/g·k products; ConvTranspose: each input spreads over O/g·k outputs); a
product's every output element costs the length of the activation's contraction axis.

A weight operand may be quantized (a ``DequantizeLinear`` of constants, ``analysis.quantized``):
Q/DQ keep every axis, so the axes here are the stored constant's axes too.

``com.microsoft`` Attention's packed input projection is a product too: ``x [B, S, In]``
contracts axis 2 with ``W [In, Q|K|V]`` axis 0, the bias (input 2) runs along W's kept axis 1
(its role is ``attention``: its columns are heads, not channels, and it is not a weight site).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STANDARD = ("", "ai.onnx")


@dataclass(frozen=True)
class Operand:
    index: int  # the node input it is
    contraction: int  # the axis summed over (negative: counted from the last)
    kept: int  # the other axis: rows of an activation, output channels of a weight


@dataclass(frozen=True)
class OpLayout:
    op_type: str
    activation: Operand
    weight: Operand
    bias: int | None  # the bias input (None: the op has none)
    output_channels: int  # the output's channel axis
    role: str  # "conv", "linear" or "attention": what the weight's kept axis holds
    groups: int = 1  # a conv's ``group`` attribute
    commutes: bool = False  # a product: either operand may be the constant one
    full_side: str = "output"  # a conv: which activation W axis 0 indexes ("output"/"input")
    scale: float = 1.0  # Gemm alpha
    bias_scale: float = 1.0  # Gemm beta
    bias_scale_attr: str | None = None  # the attribute holding ``bias_scale``

    @property
    def grouped(self) -> bool:
        return self.groups != 1

    @property
    def output_per_group(self) -> bool:
        """A conv whose weight holds the output channels on its per-group axis (ConvTranspose)."""
        return self.role == "conv" and self.weight.kept != 0

    def operands(self) -> tuple[Operand, ...]:
        """The operands that may be the constant weight: both of a product, a conv's W."""
        return (self.weight, self.activation) if self.commutes else (self.weight,)

    def other(self, operand: Operand) -> Operand:
        return self.activation if operand == self.weight else self.weight


Attr = Callable[[str, object], object]  # attr(name, default) of one node


def _matmul(attr: Attr) -> OpLayout:
    return OpLayout(
        "MatMul", Operand(0, -1, -2), Operand(1, -2, -1), None, -1, "linear", commutes=True
    )


def _gemm(attr: Attr) -> OpLayout:
    a_k, b_k = (0 if attr("transA", 0) else 1), (1 if attr("transB", 0) else 0)
    return OpLayout(
        "Gemm",
        Operand(0, a_k, 1 - a_k),
        Operand(1, b_k, 1 - b_k),
        2,
        1,
        "linear",
        commutes=True,
        scale=float(attr("alpha", 1.0)),
        bias_scale=float(attr("beta", 1.0)),
        bias_scale_attr="beta",
    )


def _conv(op_type: str, contraction: int) -> Callable[[Attr], OpLayout]:
    def build(attr: Attr) -> OpLayout:
        full_side = "output" if contraction == 1 else "input"
        return OpLayout(
            op_type,
            Operand(0, 1, 0),
            Operand(1, contraction, 1 - contraction),
            2,
            1,
            "conv",
            groups=int(attr("group", 1)),
            full_side=full_side,
        )

    return build


def _ms_attention(attr: Attr) -> OpLayout:
    """The packed input projection of com.microsoft Attention: x [B, S, In] · W [In, Q|K|V] + bias."""
    return OpLayout("Attention", Operand(0, 2, 1), Operand(1, 0, 1), 2, 2, "attention")


LAYOUTS: dict[tuple[str, str], Callable[[Attr], OpLayout]] = {  # (domain, op type) -> layout
    ("", "MatMul"): _matmul,
    ("", "Gemm"): _gemm,
    ("", "Conv"): _conv("Conv", 1),
    ("", "ConvTranspose"): _conv("ConvTranspose", 0),
    ("com.microsoft", "Attention"): _ms_attention,
}
COMPUTE_OPS = tuple(op_type for domain, op_type in LAYOUTS if domain == "")  # the standard ones


def layout(model, node) -> OpLayout | None:
    """The layout of a compute node at its attributes, or None."""
    build = LAYOUTS.get(("" if node.domain in STANDARD else node.domain, node.op_type))
    return None if build is None else build(lambda name, default: model.attr(node, name, default))
