"""Export transformer models with seeded random weights to ONNX, with both torch exporters.

Usage (from any working directory; ``--out`` defaults to ``<repo root>/.cache/transformers``)::

    python models/make_transformer_models.py [--out DIR] [--force] [--seed 0] [names...]

Names (default: all): ``vit_tiny`` (timm ``vit_tiny_patch16_224``), ``gpt2_tiny`` (transformers
``GPT2LMHeadModel``: 2 layers, 4 heads, n_embd 128, MLP 512, vocab 1000, 128 positions) and
``llama_tiny`` (transformers ``LlamaForCausalLM``: 2 layers, hidden 128, 8 query heads and 2 kv
heads of dim 16, MLP 256 (SwiGLU), vocab 1000, 128 positions). For each it writes into
``--out`` ``<name>_legacy.onnx`` (TorchScript exporter, opset 17) and ``<name>_dynamo.onnx``
(dynamo exporter, opset 18, one self-contained file, no ``.onnx.data``, stack-trace metadata
removed). An existing file is kept and only re-verified, unless ``--force``.

What it guarantees:

* Random weights only, nothing downloaded (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``,
  ``pretrained=False``; models are built from configs). ``torch.manual_seed(seed)`` before each
  model is built; then every LayerNorm / RMSNorm weight is redrawn in [0.5, 1.5] and bias from
  N(0, 0.1), and every Linear / GPT-2 Conv1D bias from N(0, 0.02), with a seeded generator
  (fresh norms are identities that hide bugs, and fresh all-zero biases are merged into one
  initializer shared across layers by both exporters). The language
  models use ``initializer_range=0.08`` (about 1/sqrt(hidden)) instead of 0.02 so attention is
  not almost uniform. Eager attention (``attn_implementation="eager"``), ``use_cache=False``:
  the output is the logits only, no past key/values. timm's ViT keeps its default fused
  ``F.scaled_dot_product_attention``, which both exporters decompose at these opsets.
* Inputs: ViT ``input`` float32 [batch, 3, 224, 224] -> ``logits`` [batch, 1000]; language
  models ``input_ids`` and ``attention_mask`` int64 [batch, seq] -> ``logits``
  [batch, seq, 1000]; ``batch`` and ``seq`` are symbolic (the export examples have batch 2 and
  seq 16 because torch.export specializes size-1 dims).
* Every file (also a kept one) passes ``onnx.checker.check_model(path, full_check=True)`` and
  is run in onnxruntime against torch on seeded inputs (ViT: batch 1 and 3; language models:
  [1, 5] and [3, 23] with the last 4 tokens of one row padded): max |diff| <= 1e-3 * max |torch
  logits|. A failure is reported, the other files go on, and the exit status is 1.
* Printed per file: nodes, MB, sha256 prefix (identical on every run) and the counts of
  MatMul, Gemm, Softmax, Reshape and Transpose.

Needs (only to build these files): ``pip install --no-deps timm`` plus pillow pyyaml
safetensors huggingface_hub (see ``make_timm_models.py``; torchvision is stubbed out),
transformers and onnxscript. About 1.5-2 minutes on 2 CPU cores; about 56 MB in all.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import collections
import hashlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_timm_models

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["vit_tiny", "gpt2_tiny", "llama_tiny"]
EXPORTERS = ("legacy", "dynamo")
TOLERANCE = 1e-3  # max |ort - torch| allowed, relative to max |torch logits|
VOCAB, MAX_POS, INIT_RANGE = 1000, 128, 0.08
KEY_OPS = ("MatMul", "Gemm", "Softmax", "Reshape", "Transpose")
warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message="# The axis name")


class LogitsOnly(nn.Module):
    """(input_ids, attention_mask) -> logits of a causal LM, no kv cache."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def randomize_norms_and_biases(model: nn.Module, seed: int) -> None:
    """Redraw norm weights in [0.5, 1.5], norm biases from N(0, 0.1), linear biases N(0, 0.02).

    Seeded. Fresh norms are identities and fresh biases are zeros; equal zero biases are also
    merged into one shared initializer by both exporters, which real checkpoints never give.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
            is_linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
            if is_norm:
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            bias = getattr(module, "bias", None)
            if (is_norm or is_linear) and isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=gen) * (0.1 if is_norm else 0.02))


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "vit_tiny":
        model = make_timm_models.import_timm().create_model(
            "vit_tiny_patch16_224", pretrained=False
        )
    elif name == "gpt2_tiny":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_layer=2,
            n_head=4,
            n_embd=128,
            vocab_size=VOCAB,
            n_positions=MAX_POS,
            bos_token_id=0,
            eos_token_id=0,
            initializer_range=INIT_RANGE,
            attn_implementation="eager",
        )
        model = LogitsOnly(GPT2LMHeadModel(config))
    elif name == "llama_tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=128,
            num_attention_heads=8,
            num_key_value_heads=2,
            num_hidden_layers=2,
            intermediate_size=256,
            vocab_size=VOCAB,
            max_position_embeddings=MAX_POS,
            bos_token_id=0,
            eos_token_id=0,
            initializer_range=INIT_RANGE,
            attn_implementation="eager",
        )
        model = LogitsOnly(LlamaForCausalLM(config))
    else:
        raise ValueError(f"unknown model {name!r}; known: {MODELS}")
    randomize_norms_and_biases(model, seed)
    return model.eval()


def example(name: str, batch: int, seq: int, seed: int, pad: int = 0) -> tuple:
    """Seeded inputs: an image batch, or token ids with the last ``pad`` tokens of row 0 masked."""
    gen = torch.Generator().manual_seed(seed)
    if name == "vit_tiny":
        return (torch.randn(batch, 3, 224, 224, generator=gen),)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if pad:
        mask[0, seq - pad :] = 0
    return ids, mask


def io_names(name: str) -> tuple[list[str], str]:
    return (["input"] if name == "vit_tiny" else ["input_ids", "attention_mask"]), "logits"


def export(name: str, model: nn.Module, exporter: str, path: Path) -> None:
    inputs, output = io_names(name)
    args = example(name, 2, 16, 0)
    if exporter == "legacy":
        axes = {
            n: {0: "batch"} if name == "vit_tiny" else {0: "batch", 1: "seq"}
            for n in inputs + [output]
        }
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=inputs,
            output_names=[output],
            dynamic_axes=axes,
        )
        return
    if name == "vit_tiny":
        dims = ({0: torch.export.Dim("batch")},)
    else:
        tokens = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=MAX_POS)}
        dims = (tokens, tokens)
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        opset_version=18,
        input_names=inputs,
        output_names=[output],
        dynamic_shapes=dims,
        verbose=False,
    )
    proto = program.model_proto
    for node in proto.graph.node:  # stack traces embed absolute paths of this machine
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save_model(proto, str(path))  # one self-contained file


def compare(name: str, model: nn.Module, path: Path, seed: int) -> tuple[float, float]:
    """max |ort - torch| and max |torch logits| over two seeded inputs."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, output = io_names(name)
    worst, scale = 0.0, 0.0
    for batch, seq, pad in ((1, 5, 0), (3, 23, 4)):
        args = example(name, batch, seq, seed + batch, pad)
        with torch.no_grad():
            ref = model(*args).numpy()
        got = sess.run([output], {n: a.numpy() for n, a in zip(inputs, args)})[0]
        if got.shape != ref.shape:
            raise AssertionError(f"shape {got.shape} != torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return worst, scale


def make_one(name: str, model: nn.Module, exporter: str, out: Path, seed: int, force: bool) -> bool:
    """Export (unless kept), check and compare one file; print its lines; return success."""
    path = out / f"{name}_{exporter}.onnx"
    tag = f"{path.name:<22}"
    try:
        start = time.perf_counter()
        if force or not path.exists():
            try:
                export(name, model, exporter, path)
            except BaseException:
                path.unlink(missing_ok=True)  # never leave a half-written file as "kept"
                raise
            status = f"{time.perf_counter() - start:5.1f}s"
        else:
            status = "kept "
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        ops = collections.Counter(n.op_type for n in proto.graph.node)
        diff, scale = compare(name, model, path, seed)
        ok = diff <= TOLERANCE * scale
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        key = " ".join(f"{op} {ops.get(op, 0)}" for op in KEY_OPS)
        print(
            f"{tag} {status} {len(proto.graph.node):4d} nodes {path.stat().st_size / 1e6:6.2f} MB"
            f"  sha256 {sha}  max|diff| {diff:.1e}  max|logit| {scale:.1e}  "
            f"{'ok' if ok else 'FAIL'}\n    {key}\n"
            f"    all ops {dict(sorted(ops.items()))}",
            flush=True,
        )
        return ok
    except Exception as exc:  # report and go on with the other files
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"{tag} FAILED: {type(exc).__name__}: {first_line}", flush=True)
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=MODELS)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "transformers")
    parser.add_argument("--force", action="store_true", help="rebuild existing files")
    parser.add_argument("--seed", type=int, default=0, help="weights and check inputs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    failed, start = [], time.perf_counter()
    for name in args.names:
        try:
            model = build(name, args.seed)
        except Exception as exc:
            print(f"{name:<22} build FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
            continue
        for exporter in EXPORTERS:
            if not make_one(name, model, exporter, args.out, args.seed, args.force):
                failed.append(f"{name}/{exporter}")
    print(
        f"done in {time.perf_counter() - start:.0f}s, out={args.out}; "
        f"failed: {', '.join(failed) or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
