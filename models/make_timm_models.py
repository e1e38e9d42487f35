"""Export timm architectures with seeded random weights to ONNX, with both torch exporters.

Usage (from any working directory; ``--out`` defaults to ``<repo root>/.cache/timm``)::

    python models/make_timm_models.py [--out DIR] [--force] [--seed 0] [names...]

Default names: resnet18 mobilenetv3_small_100 efficientnet_b0 convnext_atto regnetx_002
mobilevit_xxs densenet121. For each name it writes into ``--out``:

* ``<name>_legacy.onnx``: ``torch.onnx.export(dynamo=False, opset_version=17)`` (TorchScript
  exporter, default settings, so Conv+BN pairs are folded).
* ``<name>_dynamo.onnx``: ``torch.onnx.export(dynamo=True, opset_version=18)``, saved as ONE
  self-contained file (weights inline, no ``.onnx.data``: every model is far below 2 GB), with
  the machine-specific ``pkg.torch.onnx.stack_trace`` node metadata removed.

What it guarantees:

* Random weights only: ``pretrained=False`` and ``HF_HUB_OFFLINE=1``; nothing is downloaded.
  torchvision is not needed: stub modules stand in for it (timm only uses it for data
  transforms and an isinstance check).
* Deterministic: ``torch.manual_seed(seed)`` before each model is built, then every norm
  layer's affine parameters and BatchNorm running statistics, and ConvNeXt's layer-scale
  ``gamma``, are redrawn from a seeded generator (fresh ones are identities that hide bugs).
  Models are in ``eval()`` mode.
* Input ``input`` float32 [batch, 3, 224, 224] with a symbolic ``batch`` dim (the example
  input has batch 2 because torch.export specializes size-1 dims); output ``logits``
  [batch, 1000].
* Every file (also an already-built one that is skipped without ``--force``) is checked with
  onnxruntime against torch on seeded inputs of batch 1 and 3: max |diff| must be
  <= 1e-4 * max(1, max |logit|). A failure is reported, the other models go on, and the exit
  status is 1 if anything failed. ``spread`` (std of the logits across inputs) is printed too:
  with these uncalibrated BatchNorm statistics efficientnet_b0's output barely depends on the
  input (spread ~2e-4 of the logit scale), so ORT-vs-torch agreement on it proves little.

Needs (only to build these files): ``pip install --no-deps timm`` (its torchvision pin is not
wanted), ``pip install pillow pyyaml safetensors huggingface_hub``, and onnxscript.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import importlib.abc
import importlib.machinery
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MODELS = [
    "resnet18",
    "mobilenetv3_small_100",
    "efficientnet_b0",
    "convnext_atto",
    "regnetx_002",
    "mobilevit_xxs",
    "densenet121",
]
EXPORTERS = ("legacy", "dynamo")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
TOLERANCE = 1e-4  # max |ort - torch| allowed, relative to max(1, max |torch logits|)


class _StubMeta(type):
    """Any attribute of a stub class is another stub class (e.g. ``InterpolationMode.NEAREST``)."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        stub = _StubMeta(name, (), {"__module__": self.__name__})
        setattr(self, name, stub)
        return stub


class _TorchvisionStubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Hands out empty stub modules for ``torchvision`` and ``torchvision.*``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def import_timm():
    """Import timm with torchvision stubbed out (PyPI's torchvision does not load here)."""
    if "torchvision" not in sys.modules:
        sys.meta_path.insert(0, _TorchvisionStubFinder())
    import timm

    return timm


def randomize_norms(model: nn.Module, seed: int) -> None:
    """Redraw norm affine params, BN running stats and layer-scale gammas (seeded)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen) * (high - low) + low)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                if getattr(module, "weight", None) is not None:
                    uniform(module.weight, 0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    normal(module.bias, 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                normal(module.running_mean, 0.1)
                uniform(module.running_var, 0.5, 1.5)
            gamma = getattr(module, "gamma", None)
            if isinstance(gamma, nn.Parameter):
                uniform(gamma, 0.5, 1.5)


def build(name: str, seed: int) -> nn.Module:
    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    randomize_norms(model, seed)
    return model.eval()


def example_input(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def export_legacy(model: nn.Module, path: Path) -> None:
    torch.onnx.export(
        model,
        (example_input(2, 0),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )


def export_dynamo(model: nn.Module, path: Path) -> None:
    program = torch.onnx.export(
        model,
        (example_input(2, 0),),
        dynamo=True,
        opset_version=18,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    proto = program.model_proto
    for node in proto.graph.node:  # stack traces embed absolute paths of this machine
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save_model(proto, str(path))  # one self-contained file


def compare(model: nn.Module, path: Path, seed: int) -> tuple[float, float, float]:
    """Run onnxruntime and torch on seeded inputs of batch 1 and 3.

    Returns max |ort - torch|, max |torch logit|, and the input spread: the mean over classes
    of the torch logits' std across the 3 samples (near 0 means the output ignores the input).
    """
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, scale = 0.0, 0.0
    for batch in (1, 3):
        x = example_input(batch, seed + batch)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise AssertionError(f"shape {got.shape} != torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return worst, scale, float(ref.std(axis=0).mean())


def make_one(model: nn.Module, name: str, exporter: str, out: Path, seed: int, force: bool) -> bool:
    """Export (unless cached) and verify one file; print one line; return success."""
    path = out / f"{name}_{exporter}.onnx"
    tag = f"{name:<22} {exporter:<6}"
    try:
        start = time.perf_counter()
        if force or not path.exists():
            try:
                (export_legacy if exporter == "legacy" else export_dynamo)(model, path)
            except BaseException:
                path.unlink(missing_ok=True)  # never leave a half-written file as "cached"
                raise
            status = f"{time.perf_counter() - start:6.1f}s"
        else:
            status = "cached "
        nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
        diff, scale, spread = compare(model, path, seed)
        ok = diff <= TOLERANCE * max(1.0, scale)
        print(
            f"{tag} {status} {nodes:4d} nodes {path.stat().st_size / 1e6:6.2f} MB  "
            f"max|diff| {diff:.1e}  max|logit| {scale:.1e}  spread {spread:.1e}  "
            f"{'ok' if ok else 'FAIL'}",
            flush=True,
        )
        return ok
    except Exception as exc:  # report and go on with the other models
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"{tag} FAILED: {type(exc).__name__}: {first_line}", flush=True)
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=MODELS)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "timm")
    parser.add_argument("--force", action="store_true", help="rebuild existing files")
    parser.add_argument("--seed", type=int, default=0, help="weights and check inputs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    start = time.perf_counter()
    for name in args.names:
        try:
            model = build(name, args.seed)
        except Exception as exc:
            print(f"{name:<22} build FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
            continue
        for exporter in EXPORTERS:
            if not make_one(model, name, exporter, args.out, args.seed, args.force):
                failed.append(f"{name}/{exporter}")
    print(
        f"done in {time.perf_counter() - start:.0f}s, out={args.out}; "
        f"failed: {', '.join(failed) or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
