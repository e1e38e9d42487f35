"""Fill the onnx wheel's ``light_*`` model-zoo graphs with seeded random weights.

The onnx package ships classic CNNs (resnet50, densenet121, inception v1/v2, shufflenet,
squeezenet, vgg19, zfnet512, alexnet; opset 9) whose weights are ``ConstantOfShape`` nodes
filled with one constant. This script replaces each such node with an initializer of the same
shape holding seeded random values (He-scaled weights; BatchNorm scale and variance in
[0.5, 1.5]; small biases and means), so that outputs are non-degenerate and pruning is really
exercised. Outputs go to a cache folder (large files stay out of git).

Usage: ``python models/fill_light_models.py [--out .cache/light] [names...]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NAMES = [
    "resnet50",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
    "bvlc_alexnet",
]


def light_path(name: str) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def _random_values(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    lowered = name.lower()
    if len(shape) >= 2:  # a weight: He initialisation keeps activations in range
        return rng.normal(0, np.sqrt(2.0 / max(1, int(np.prod(shape[1:])))), shape)
    if any(key in lowered for key in ("_s_", "scale", "gamma", "riv", "var")):
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0, 0.1, shape)


def fill(source: Path, target: Path, seed: int = 0) -> Path:
    """Write ``source`` with every constant-shape ``ConstantOfShape`` replaced by random weights."""
    model = onnx.load(str(source))
    rng = np.random.default_rng(seed)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept, new_inits = [], []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in constants:
            shape = tuple(int(d) for d in constants[node.input[0]])
            values = _random_values(node.output[0], shape, rng).astype(np.float32)
            new_inits.append(numpy_helper.from_array(values, node.output[0]))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new_inits)
    model.ir_version = max(model.ir_version, 4)  # IR 4+: initializers need not be graph inputs
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=NAMES)
    parser.add_argument("--out", type=Path, default=Path(".cache/light"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.names:
        target = fill(light_path(name), args.out / f"{name}.onnx", args.seed)
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
