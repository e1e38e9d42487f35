"""Generate the small committed attention test models in ``models/attention/``.

Run from the repository root (the output folder is always next to this script)::

    /path/to/python models/make_attention_models.py

Generation-only dependencies (NOT sparsec package dependencies)::

    pip install torch==2.13.0 scikit-learn scipy onnxscript transformers

It writes, and checks, these files (every one < 1 MB, a single file, no ``.onnx.data``):

* The trained digits ViT of ``make_digits_models.py`` (re-trained here identically: same seed,
  same recipe, and the script asserts its logits match ``models/digits_vit.onnx`` within 1e-4)
  through the dynamo exporter: ``vit_dynamo18.onnx`` (its written-out attention, opset 18),
  ``vit_sdpa_dynamo18.onnx`` and ``vit_dynamo23.onnx`` (the same weights with attention through
  ``F.scaled_dot_product_attention``: decomposed at opset 18, one ONNX ``Attention`` per block at
  opset 23). Input ``input`` [batch, 1, 8, 8], output ``logits`` [batch, 10]. Their onnxruntime
  top-1 accuracy on ``digits_test.npz`` must equal the torch one and ``digits_vit.onnx``'s.
* Four pre-LayerNorm transformer blocks built with ``onnx.helper`` (seeded numpy weights,
  ``numpy.random.default_rng(0)``; hidden 32, 4 query heads of dim 8, MLP 32 -> 64 -> 32):
  ``com_microsoft_attention.onnx`` (com.microsoft ``Attention``, packed QKV),
  ``com_microsoft_mha.onnx`` (separate Q/K/V projections -> com.microsoft
  ``MultiHeadAttention``), ``com_microsoft_gqa.onnx`` (com.microsoft ``GroupQueryAttention``,
  2 kv heads, causal) and ``onnx_attention_gqa23.onnx`` (ONNX ``Attention`` opset 23 with 3-D
  Q/K/V, ``q_num_heads=4``, ``kv_num_heads=2``, causal). Input ``input`` [batch, seq, 32],
  output ``output`` [batch, seq, 32]. Each must match a numpy reference of the block
  (written here) in onnxruntime within 1e-4 (max abs diff).
* ``llama_gqa_legacy.onnx``: a tiny random ``LlamaForCausalLM`` (hidden 32, 4 heads, 2 kv heads,
  2 layers, MLP 64, vocab 64, eager attention, no kv cache) exported with the legacy TorchScript
  exporter at opset 17. Input ``input_ids`` int64 [batch, seq], output ``logits``
  [batch, seq, 64]; onnxruntime must match torch within 1e-4 relative to the logit scale.

Seeds: ``SEED = 0`` everywhere (``torch.manual_seed``, ``numpy.random.default_rng``); torch uses
2 threads and deterministic algorithms. Reruns give the same bytes (a sha256 prefix of every
file is printed). Every file passes ``onnx.checker.check_model(path, full_check=True)``; the
dynamo stack-trace metadata (absolute paths of this machine) is removed. It takes about 2
minutes on 2 CPU cores (most of it re-training the ViT) and downloads nothing. It prints a
summary table (nodes, bytes, attention-related op counts) and exits 1 if any check failed.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"

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
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from scipy.special import erf
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_digits_models as digits

SEED = 0
MODELS_DIR = Path(__file__).resolve().parent
OUT_DIR = MODELS_DIR / "attention"
MAX_FILE_BYTES = 1_000_000
TOLERANCE = 1e-4
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP = 32, 4, 2, 8, 64
KEY_OPS = (
    "MatMul",
    "Softmax",
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "Reshape",
    "Transpose",
)
warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX")
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------
def strip_stack_traces(proto: onnx.ModelProto) -> None:
    """Drop node stack traces: they embed absolute paths of this machine."""
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def save_single_file(proto: onnx.ModelProto, path: Path) -> None:
    """Save with every tensor inline (no ``.onnx.data``), removing stale files first."""
    data_path = path.with_name(path.name + ".data")
    for p in (path, data_path):
        p.unlink(missing_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    assert not data_path.exists(), data_path


def export_dynamo(
    model: nn.Module,
    example: tuple,
    path: Path,
    opset: int,
    input_names: list[str],
    output_name: str,
    dynamic_shapes,
) -> None:
    program = torch.onnx.export(
        model,
        example,
        dynamo=True,
        opset_version=opset,
        input_names=input_names,
        output_names=[output_name],
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )
    proto = program.model_proto
    strip_stack_traces(proto)
    save_single_file(proto, path)


def describe(path: Path) -> dict:
    """full_check, size limit, single file; node count, op histogram, sha256 prefix."""
    onnx.checker.check_model(str(path), full_check=True)
    assert not path.with_name(path.name + ".data").exists(), path
    size = path.stat().st_size
    assert size < MAX_FILE_BYTES, (path.name, size)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        assert init.data_location != TensorProto.EXTERNAL, (path.name, init.name)
    hist = collections.Counter(n.op_type for n in model.graph.node)
    return {
        "name": path.name,
        "bytes": size,
        "nodes": len(model.graph.node),
        "hist": hist,
        "sha": hashlib.sha256(path.read_bytes()).hexdigest()[:12],
    }


def print_summary(rows: list[dict]) -> None:
    print()
    head = "".join(f"{op[:9]:>10}" for op in KEY_OPS)
    print(f"{'file':<28}{'bytes':>8}{'nodes':>6}{head}  {'check':<22} sha256[:12]")
    for r in rows:
        ops = "".join(f"{r['hist'].get(op, 0):>10}" for op in KEY_OPS)
        print(f"{r['name']:<28}{r['bytes']:>8}{r['nodes']:>6}{ops}  {r['check']:<22} {r['sha']}")
    print()
    for r in rows:
        print(f"{r['name']}: {' '.join(f'{k}:{v}' for k, v in sorted(r['hist'].items()))}")


# --------------------------------------------------------------------------
# (a) the digits ViT through the dynamo exporter
# --------------------------------------------------------------------------
class SdpaAttention(digits.Attention):
    """``digits.Attention`` with the same weights, attention through F.scaled_dot_product_attention.

    The default SDPA scale is ``head_dim ** -0.5``, the scale the written-out version uses.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        ctx = F.scaled_dot_product_attention(q, k, v)
        return self.out(ctx.transpose(1, 2).reshape(-1, self.tokens, self.dim))


def sdpa_variant(model: digits.DigitsViT) -> digits.DigitsViT:
    """A DigitsViT with the same state dict whose attention modules use SDPA."""
    torch.manual_seed(SEED)
    variant = digits.DigitsViT()
    for blk in variant.blocks:
        blk.attn.__class__ = SdpaAttention
    variant.load_state_dict(model.state_dict())
    return variant.eval()


def make_vit_files() -> list[dict]:
    digits.seed_everything(SEED)
    data = digits.load_splits()
    model, acc = digits.build(
        "digits_vit", digits.DigitsViT, data, epochs=120, lr=3e-3, weight_decay=0.05
    )
    test = np.load(MODELS_DIR / "digits_test.npz")
    x, label = test["input"], test["label"]
    ref_sess = ort.InferenceSession(
        str(MODELS_DIR / "digits_vit.onnx"), providers=["CPUExecutionProvider"]
    )
    ref_logits = ref_sess.run(["logits"], {"input": x})[0]
    ref_acc = float((ref_logits.argmax(1) == label).mean())
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(torch_logits - ref_logits).max())
    print(f"re-trained ViT vs digits_vit.onnx: max|diff| {diff:.1e}, acc {acc:.4f} / {ref_acc:.4f}")
    assert diff <= TOLERANCE and acc == ref_acc, (diff, acc, ref_acc)

    sdpa = sdpa_variant(model)
    with torch.no_grad():
        sdpa_diff = float(np.abs(sdpa(torch.from_numpy(x)).numpy() - torch_logits).max())
    assert sdpa_diff <= 1e-5, sdpa_diff
    rows = []
    batch = {0: torch.export.Dim("batch")}
    for name, module, opset in (
        ("vit_dynamo18.onnx", model, 18),
        ("vit_sdpa_dynamo18.onnx", sdpa, 18),
        ("vit_dynamo23.onnx", sdpa, 23),
    ):
        path = OUT_DIR / name
        export_dynamo(
            module, (torch.zeros(2, 1, 8, 8),), path, opset, ["input"], "logits", (batch,)
        )
        row = describe(path)
        proto = onnx.load(str(path))
        assert [i.name for i in proto.graph.input] == ["input"]
        assert [o.name for o in proto.graph.output] == ["logits"]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = sess.run(["logits"], {"input": x})[0]
        single = sess.run(["logits"], {"input": x[:1]})[0]
        np.testing.assert_allclose(single[0], logits[0], rtol=1e-4, atol=1e-5)
        got_acc = float((logits.argmax(1) == label).mean())
        got_diff = float(np.abs(logits - torch_logits).max())
        assert got_acc == ref_acc and got_diff <= TOLERANCE, (name, got_acc, got_diff)
        if opset == 23:
            assert row["hist"]["Attention"] == 2 and row["hist"]["Softmax"] == 0, row["hist"]
        else:
            assert row["hist"]["Softmax"] == 2 and row["hist"]["Attention"] == 0, row["hist"]
        row["check"] = f"acc {got_acc:.4f} d {got_diff:.0e}"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------
# (b) hand-built blocks with fused attention ops, and their numpy reference
# --------------------------------------------------------------------------
def np_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, kv_heads: int, causal: bool
) -> np.ndarray:
    """Scaled dot-product attention on [B, S, H*D] tensors, grouped-query when kv_heads < heads.

    Query head h reads kv head ``h // (heads // kv_heads)`` (the convention of ORT's
    GroupQueryAttention, ONNX Attention and transformers' ``repeat_kv``).
    """
    b, s, _ = q.shape
    d = q.shape[-1] // heads
    qh = q.reshape(b, s, heads, d).transpose(0, 2, 1, 3).astype(np.float64)
    kh = k.reshape(b, s, kv_heads, d).transpose(0, 2, 1, 3).astype(np.float64)
    vh = v.reshape(b, s, kv_heads, d).transpose(0, 2, 1, 3).astype(np.float64)
    kh = np.repeat(kh, heads // kv_heads, axis=1)
    vh = np.repeat(vh, heads // kv_heads, axis=1)
    scores = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d)
    if causal:
        scores = np.where(np.tril(np.ones((s, s), dtype=bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs = scores / scores.sum(-1, keepdims=True)
    return (probs @ vh).transpose(0, 2, 1, 3).reshape(b, s, heads * d)


def block_weights(kv_heads: int) -> dict[str, np.ndarray]:
    """Seeded weights of one pre-LN block; K/V projections have kv_heads * HEAD_DIM outputs."""
    rng = np.random.default_rng(SEED)
    kv = kv_heads * HEAD_DIM

    def w(shape, fan_in):
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def b(n):
        return (rng.standard_normal(n) * 0.1).astype(np.float32)

    return {
        "ln1.weight": rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32),
        "ln1.bias": b(HIDDEN),
        "attn.q.weight": w((HIDDEN, HIDDEN), HIDDEN),
        "attn.q.bias": b(HIDDEN),
        "attn.k.weight": w((HIDDEN, kv), HIDDEN),
        "attn.k.bias": b(kv),
        "attn.v.weight": w((HIDDEN, kv), HIDDEN),
        "attn.v.bias": b(kv),
        "attn.out.weight": w((HIDDEN, HIDDEN), HIDDEN),
        "attn.out.bias": b(HIDDEN),
        "ln2.weight": rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32),
        "ln2.bias": b(HIDDEN),
        "mlp.fc1.weight": w((HIDDEN, MLP), HIDDEN),
        "mlp.fc1.bias": b(MLP),
        "mlp.fc2.weight": w((MLP, HIDDEN), MLP),
        "mlp.fc2.bias": b(HIDDEN),
    }


def np_block(x: np.ndarray, wts: dict, kv_heads: int, causal: bool, gelu: bool) -> np.ndarray:
    """x + out_proj(attn(LN1 x)), then h + fc2(act(fc1(LN2 h))), in float64."""
    x = x.astype(np.float64)
    h = np_layernorm(x, wts["ln1.weight"], wts["ln1.bias"])
    q, k, v = (h @ wts[f"attn.{n}.weight"] + wts[f"attn.{n}.bias"] for n in "qkv")
    ctx = np_attention(q, k, v, HEADS, kv_heads, causal)
    h = x + ctx @ wts["attn.out.weight"] + wts["attn.out.bias"]
    f = np_layernorm(h, wts["ln2.weight"], wts["ln2.bias"]) @ wts["mlp.fc1.weight"]
    f = f + wts["mlp.fc1.bias"]
    f = 0.5 * f * (1.0 + erf(f / np.sqrt(2.0))) if gelu else np.maximum(f, 0.0)
    return h + f @ wts["mlp.fc2.weight"] + wts["mlp.fc2.bias"]


def linear(nodes: list, x: str, name: str, out: str | None = None) -> str:
    """MatMul with the [in, out] initializer ``name.weight``, then Add ``name.bias``."""
    nodes.append(
        helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}.matmul"], name=f"{name}/MatMul")
    )
    out = out or f"{name}.out"
    nodes.append(
        helper.make_node("Add", [f"{name}.matmul", f"{name}.bias"], [out], name=f"{name}/Add")
    )
    return out


def build_block(kind: str) -> tuple[onnx.ModelProto, dict, int, bool, bool]:
    """One pre-LN block around the fused attention op ``kind``; returns (model, weights, ...)."""
    kv_heads = KV_HEADS if kind in ("gqa", "onnx23") else HEADS
    causal = kind in ("gqa", "onnx23")
    gelu = kind == "onnx23"
    wts = block_weights(kv_heads)
    inits = dict(wts)
    n: list = []
    n.append(
        helper.make_node(
            "LayerNormalization",
            ["input", "ln1.weight", "ln1.bias"],
            ["ln1.out"],
            name="ln1",
            axis=-1,
            epsilon=1e-5,
        )
    )
    if kind == "attention":
        # packed QKV: columns [Q | K | V], head h of each at columns h*D:(h+1)*D of its third
        for c in "qkv":
            del inits[f"attn.{c}.weight"], inits[f"attn.{c}.bias"]
        inits["attn.qkv.weight"] = np.concatenate([wts[f"attn.{c}.weight"] for c in "qkv"], 1)
        inits["attn.qkv.bias"] = np.concatenate([wts[f"attn.{c}.bias"] for c in "qkv"])
        n.append(
            helper.make_node(
                "Attention",
                ["ln1.out", "attn.qkv.weight", "attn.qkv.bias"],
                ["attn.ctx"],
                name="attn/Attention",
                domain="com.microsoft",
                num_heads=HEADS,
            )
        )
    else:
        q, k, v = (linear(n, "ln1.out", f"attn.{c}") for c in "qkv")
        if kind == "mha":
            n.append(
                helper.make_node(
                    "MultiHeadAttention",
                    [q, k, v],
                    ["attn.ctx"],
                    name="attn/MultiHeadAttention",
                    domain="com.microsoft",
                    num_heads=HEADS,
                )
            )
        elif kind == "gqa":
            # seqlens_k = total_sequence_length - 1 for every batch row (no padding, no cache)
            inits["attn.one"] = np.array([1], dtype=np.int64)
            n += [
                helper.make_node(
                    "Shape", ["input"], ["attn.batch"], name="attn/batch", start=0, end=1
                ),
                helper.make_node("Shape", ["input"], ["attn.seq"], name="attn/seq", start=1, end=2),
                helper.make_node(
                    "Sub", ["attn.seq", "attn.one"], ["attn.seq_m1"], name="attn/seq_minus_1"
                ),
                helper.make_node(
                    "Cast",
                    ["attn.seq_m1"],
                    ["attn.seq_m1_i32"],
                    name="attn/seq_minus_1_int32",
                    to=TensorProto.INT32,
                ),
                helper.make_node(
                    "Expand",
                    ["attn.seq_m1_i32", "attn.batch"],
                    ["attn.seqlens_k"],
                    name="attn/seqlens_k",
                ),
                helper.make_node(
                    "Cast",
                    ["attn.seq"],
                    ["attn.seq_i32"],
                    name="attn/seq_int32",
                    to=TensorProto.INT32,
                ),
                helper.make_node(
                    "Squeeze",
                    ["attn.seq_i32"],
                    ["attn.total_seq"],
                    name="attn/total_sequence_length",
                ),
                helper.make_node(
                    "GroupQueryAttention",
                    [q, k, v, "", "", "attn.seqlens_k", "attn.total_seq"],
                    ["attn.ctx", "attn.present_key", "attn.present_value"],
                    name="attn/GroupQueryAttention",
                    domain="com.microsoft",
                    num_heads=HEADS,
                    kv_num_heads=KV_HEADS,
                ),
            ]
        else:  # onnx23
            n.append(
                helper.make_node(
                    "Attention",
                    [q, k, v],
                    ["attn.ctx"],
                    name="attn/Attention",
                    q_num_heads=HEADS,
                    kv_num_heads=KV_HEADS,
                    is_causal=1,
                )
            )
    linear(n, "attn.ctx", "attn.out")
    n.append(helper.make_node("Add", ["input", "attn.out.out"], ["resid1"], name="resid1"))
    n.append(
        helper.make_node(
            "LayerNormalization",
            ["resid1", "ln2.weight", "ln2.bias"],
            ["ln2.out"],
            name="ln2",
            axis=-1,
            epsilon=1e-5,
        )
    )
    linear(n, "ln2.out", "mlp.fc1")
    act = "Gelu" if gelu else "Relu"
    n.append(helper.make_node(act, ["mlp.fc1.out"], ["mlp.act"], name=f"mlp/{act}"))
    linear(n, "mlp.act", "mlp.fc2")
    n.append(helper.make_node("Add", ["resid1", "mlp.fc2.out"], ["output"], name="resid2"))

    io_shape = ["batch", "seq", HIDDEN]
    graph = helper.make_graph(
        n,
        f"{kind}_block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, io_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, io_shape)],
        initializer=[numpy_helper.from_array(a, name) for name, a in inits.items()],
    )
    if kind == "onnx23":
        opsets, ir_version = [helper.make_opsetid("", 23)], 11
    else:
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        ir_version = 8
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=ir_version,
        producer_name="sparsec models/make_attention_models.py",
    )
    return model, wts, kv_heads, causal, gelu


BLOCKS = [
    ("com_microsoft_attention.onnx", "attention"),
    ("com_microsoft_mha.onnx", "mha"),
    ("com_microsoft_gqa.onnx", "gqa"),
    ("onnx_attention_gqa23.onnx", "onnx23"),
]


def make_block_files() -> list[dict]:
    rows = []
    rng = np.random.default_rng(SEED + 1)
    inputs = [
        rng.standard_normal((b, s, HIDDEN)).astype(np.float32) for b, s in ((1, 1), (2, 7), (3, 16))
    ]
    for name, kind in BLOCKS:
        path = OUT_DIR / name
        model, wts, kv_heads, causal, gelu = build_block(kind)
        save_single_file(model, path)
        row = describe(path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diff = 0.0
        for x in inputs:
            got = sess.run(["output"], {"input": x})[0]
            ref = np_block(x, wts, kv_heads, causal, gelu)
            assert got.shape == ref.shape, (name, got.shape, ref.shape)
            diff = max(diff, float(np.abs(got - ref).max()))
        assert diff <= TOLERANCE, (name, diff)
        row["check"] = f"numpy d {diff:.0e}"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------
# (c) a written-out grouped-query attention decoder from transformers
# --------------------------------------------------------------------------
class LogitsOnly(nn.Module):
    """input_ids -> logits of a causal LM, no kv cache.

    The all-ones attention mask is passed explicitly: without one, transformers checks
    position_ids for packed sequences with ``torch.diff``, which the legacy exporter lacks.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False
        ).logits


def make_llama_file() -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        num_hidden_layers=2,
        intermediate_size=MLP,
        vocab_size=64,
        max_position_embeddings=128,
        initializer_range=0.15,
        attn_implementation="eager",
    )
    torch.manual_seed(SEED)
    lm = LlamaForCausalLM(config)
    with torch.no_grad():  # fresh RMSNorm weights are all ones: redraw them
        gen = torch.Generator().manual_seed(SEED)
        for mod in lm.modules():
            if type(mod).__name__ == "LlamaRMSNorm":
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
    model = LogitsOnly(lm.eval()).eval()
    path = OUT_DIR / "llama_gqa_legacy.onnx"
    example = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(SEED))
    path.unlink(missing_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
    )
    row = describe(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff, scale = 0.0, 0.0
    for b, s in ((1, 1), (1, 5), (3, 17)):
        ids = torch.randint(0, 64, (b, s), generator=torch.Generator().manual_seed(SEED + s))
        with torch.no_grad():
            ref = model(ids).numpy()
        got = sess.run(["logits"], {"input_ids": ids.numpy()})[0]
        assert got.shape == ref.shape == (b, s, 64), (got.shape, ref.shape)
        diff = max(diff, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    assert diff <= TOLERANCE * max(1.0, scale), (diff, scale)
    row["check"] = f"torch d {diff:.0e}"
    return [row]


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    torch.set_num_threads(2)
    start = time.perf_counter()
    rows, failed = [], []
    for part in (make_vit_files, make_block_files, make_llama_file):
        try:
            rows += part()
        except Exception as exc:  # report and go on with the other parts
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            print(f"{part.__name__} FAILED: {type(exc).__name__}: {first}", flush=True)
            failed.append(part.__name__)
    print_summary(rows)
    print(f"\ndone in {time.perf_counter() - start:.0f}s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
