"""A small ShuffleNet-like model: grouped 1×1 convs around a channel shuffle.

Each unit is grouped 1×1 Conv (group ``G``) → BatchNorm → Relu → channel shuffle (``Reshape
[N, G, C/G, H, W]`` → ``Transpose [0, 2, 1, 3, 4]`` → ``Reshape [N, C, H, W]``) → depthwise
3×3 Conv → BatchNorm → grouped 1×1 Conv → BatchNorm, joined with its shortcut: the first unit
downsamples (stride-2 depthwise, AveragePool shortcut, ``Concat``), the second adds (``Add``).
A Gemm head follows a global pool. The first shuffle spells its targets out
(``[1, 3, 24, 8, 8]``, ``[1, 72, 8, 8]``), the second lets them adjust (``[0, 3, -1, 4, 4]``,
``[0, -1, 4, 4]``), as exporters write both.

The bottleneck width ``C = 72`` is ``G · 24`` and ``24`` is a multiple of ``G``: a pruning unit
is a sub-channel ``j`` of every shuffle group, and the grouped convs on both sides keep the
same local positions in each of their groups only when the removed sub-channels repeat every
``C / G²`` (8 units per bottleneck). Seeded random weights (BatchNorm statistics random too);
``python models/make_shuffle_model.py`` rewrites ``models/couplings/channel_shuffle.onnx``
byte for byte. Only onnx and numpy are needed.
"""

from __future__ import annotations

import numpy as np
from make_coupling_models import OUT, Builder, head, write_models

G = 3  # shuffle groups (and the 1×1 convs' group count)
WIDTH, BOTTLENECK = 48, 72  # the residual stream after the first unit; the shuffled channels


def shuffle(b: Builder, x: str, split_target, merge_target) -> str:
    """The channel shuffle: split C into [G, C/G], swap the two, merge back."""
    parts = b.op("Reshape", [x, b.const(np.array(split_target, np.int64), "shape")])
    swapped = b.op("Transpose", [parts], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [swapped, b.const(np.array(merge_target, np.int64), "shape")])


def unit(b: Builder, x: str, c_in: int, c_out: int, stride: int, targets) -> str:
    """Grouped 1×1 → BN → Relu → shuffle → depthwise 3×3 (``stride``) → BN → grouped 1×1 → BN."""
    squeezed = b.op(
        "Relu", [b.bn(b.conv(x, c_in, BOTTLENECK, k=1, group=G, bias=False), BOTTLENECK)]
    )
    shuffled = shuffle(b, squeezed, *targets)
    weight = b.weight(BOTTLENECK, 1, 3, 3)
    depthwise = b.op(
        "Conv", [shuffled, weight], pads=[1] * 4, strides=[stride] * 2, group=BOTTLENECK
    )
    expanded = b.conv(b.bn(depthwise, BOTTLENECK), BOTTLENECK, c_out, k=1, group=G, bias=False)
    return b.bn(expanded, c_out)


def channel_shuffle():
    b = Builder(18)
    stem = b.op("Relu", [b.bn(b.conv("input", 3, 24, bias=False), 24)])
    branch = unit(b, stem, 24, 24, 2, ([1, G, 24, 8, 8], [1, BOTTLENECK, 8, 8]))
    shortcut = b.op("AveragePool", [stem], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    joined = b.op("Relu", [b.op("Concat", [branch, shortcut], axis=1)])
    added = unit(b, joined, WIDTH, WIDTH, 1, ([0, G, -1, 4, 4], [0, -1, 4, 4]))
    return b.model([1, 3, 8, 8], head(b, b.op("Relu", [b.op("Add", [added, joined])]), WIDTH))


def main() -> None:
    write_models(OUT, {"channel_shuffle": channel_shuffle})


if __name__ == "__main__":
    main()
