"""Generate the small committed ONNX test models for sparsec.

Run from the repository root::

    /path/to/python models/make_digits_models.py

Generation-only dependencies (NOT sparsec package dependencies)::

    pip install torch==2.13.0 scikit-learn onnxscript

What it does (fully seeded, CPU only, deterministic):

* loads ``sklearn.datasets.load_digits()`` (8x8 grey digits, bundled with
  scikit-learn, no download), scales pixels to [0, 1], reshapes to N x 1 x 8 x 8;
* makes a stratified 80/20 train/test split (``random_state=SEED``);
* writes ``digits_test.npz`` (the whole held-out split) and
  ``digits_calib.npz`` (256 samples drawn from the TRAIN split only);
* trains three models (CNN, MLP, tiny hand-written ViT) and exports them with
  the legacy TorchScript exporter (opset 17, input ``input``, output
  ``logits``, dynamic batch axis);
* re-exports the CNN with the dynamo exporter (opset 18) using external data;
* checks every model with ``onnx.checker`` (full_check), evaluates it in
  onnxruntime on the test split, asserts agreement with the torch accuracy and
  prints a summary table.
"""

from __future__ import annotations

import collections
import hashlib
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.numpy_helper
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
OUT_DIR = Path(__file__).resolve().parent
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LEGACY_OPSET = 17
DYNAMO_OPSET = 18
N_CALIB = 256
MAX_FILE_BYTES = 1_000_000
ACC_TOLERANCE = 0.005


# --------------------------------------------------------------------------
# Reproducibility and data
# --------------------------------------------------------------------------
def seed_everything(seed: int = SEED) -> None:
    """Seed torch/numpy, use 2 CPU threads and deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def load_splits() -> dict[str, np.ndarray]:
    """Return the stratified train/test split of sklearn digits as N x 1 x 8 x 8."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def write_datasets(data: dict[str, np.ndarray]) -> None:
    """Write the test split and a 256-sample calibration subset of the train split."""
    np.savez(OUT_DIR / "digits_test.npz", **{INPUT_NAME: data["x_test"], "label": data["y_test"]})
    rng = np.random.default_rng(SEED)
    idx = np.sort(rng.choice(len(data["x_train"]), size=N_CALIB, replace=False))
    np.savez(
        OUT_DIR / "digits_calib.npz",
        **{INPUT_NAME: data["x_train"][idx], "label": data["y_train"][idx]},
    )


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 conv -> ReLU -> 1x1 conv -> Sigmoid -> Mul."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class DigitsCNN(nn.Module):
    """Small CNN: stem, 2-branch Concat, depthwise residual block, SE, GAP, Linear.

    BatchNorm placement: one BN directly after the stem conv (foldable
    Conv+BN pattern) and two BNs after Concat / residual Add, where no conv
    precedes them so no exporter can fuse them into a conv.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.branch3 = nn.Conv2d(16, 16, 3, padding=1)
        self.branch1 = nn.Conv2d(16, 16, 1)
        self.cat_bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.res_bn = nn.BatchNorm2d(32)
        self.se = SqueezeExcite(32, 8)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = torch.cat([self.branch3(x), self.branch1(x)], dim=1)
        x = F.relu(self.cat_bn(x))
        x = x + self.pw(F.relu(self.dw(x)))
        x = F.relu(self.res_bn(x))
        x = self.se(x)
        x = F.max_pool2d(x, 2)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.head(x)


class DigitsMLP(nn.Module):
    """Flatten -> Linear(64,128) -> ReLU -> Linear(128,64) -> ReLU -> Linear(64,10)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention written out op by op (no nn.MultiheadAttention).

    The token count is a static Python int and the batch axis is ``-1`` in
    every reshape, so the exported Reshape shapes are constants rather than
    Shape/Gather/Concat subgraphs.
    """

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.dim = dim
        self.tokens = tokens
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        # B,S,H*D -> B,S,H,D -> B,H,S,D
        return t.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(-1, self.tokens, self.dim)
        return self.out(ctx)


class Block(nn.Module):
    """Pre-LayerNorm transformer block with a GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int, tokens: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, tokens)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class DigitsViT(nn.Module):
    """Tiny ViT: 2x2 patches (16 tokens), dim 32, 4 heads, 2 blocks, class token."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.patch = 2
        self.grid = 8 // self.patch  # 4x4 = 16 patch tokens
        tokens = self.grid * self.grid + 1  # + class token
        self.embed = nn.Linear(self.patch * self.patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, hidden, tokens) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, g = self.patch, self.grid
        # B,1,8,8 -> B,1,4,2,4,2 -> B,4,4,1,2,2 -> B,16,4
        x = x.reshape(-1, 1, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, p * p)
        x = self.embed(x)
        cls = self.cls.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x[:, 0]))


# --------------------------------------------------------------------------
# Training / evaluation
# --------------------------------------------------------------------------
def train(
    model: nn.Module,
    data: dict[str, np.ndarray],
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    batch_size: int = 64,
) -> nn.Module:
    """Train with AdamW + OneCycle (cosine) schedule and seeded shuffling."""
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"])
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def ort_accuracy(path: Path, npz_path: Path) -> float:
    """Top-1 accuracy in onnxruntime on an npz of (input, label).

    Also runs a batch of one to check that the batch axis really is dynamic.
    """
    data = np.load(npz_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run([OUTPUT_NAME], {INPUT_NAME: data[INPUT_NAME]})
    (single,) = sess.run([OUTPUT_NAME], {INPUT_NAME: data[INPUT_NAME][:1]})
    np.testing.assert_allclose(single[0], logits[0], rtol=1e-4, atol=1e-5)
    return float((logits.argmax(1) == data["label"]).mean())


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------
def export_legacy(model: nn.Module, path: Path, keep_batchnorm: bool = False) -> None:
    """TorchScript exporter, opset 17, dynamic batch.

    In the default EVAL mode the exporter's peephole pass folds a BatchNorm
    that directly follows a Conv into that Conv.  With ``keep_batchnorm`` the
    export uses ``training=PRESERVE`` (model still in eval mode, so BN runs on
    its running statistics with ``training_mode=0``), which skips that pass and
    keeps every BatchNorm as a real BatchNormalization node.  Constant folding
    is switched off in that mode, as the exporter recommends.
    """
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=LEGACY_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        training=mode,
        do_constant_folding=not keep_batchnorm,
    )


def strip_stack_traces(proto: onnx.ModelProto) -> None:
    """Drop node stack traces: they embed absolute paths of this machine."""
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def externalize_float_initializers(proto: onnx.ModelProto, location: str) -> None:
    """Mark every float initializer (weights and biases, any size) as external.

    Small int64 initializers (ReduceMean axes, Reshape shapes) stay inline:
    if they were external, ``onnx.checker.check_model(path, full_check=True)``
    fails because shape inference cannot read external data.
    """
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = onnx.numpy_helper.to_array(init)
        init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
        onnx.external_data_helper.set_external_data(init, location)


def export_dynamo_external(model: nn.Module, path: Path) -> Path:
    """Dynamo exporter, opset 18, all float weights in one external data file."""
    data_path = path.with_name(path.name + ".data")
    for p in (path, data_path):  # onnx appends to an existing data file
        p.unlink(missing_ok=True)
    program = torch.onnx.export(
        model,
        (torch.zeros(2, 1, 8, 8),),  # batch 2: torch.export specializes size-1 dims
        dynamo=True,
        opset_version=DYNAMO_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    proto = program.model_proto
    strip_stack_traces(proto)
    externalize_float_initializers(proto, data_path.name)
    onnx.save_model(proto, str(path))
    return data_path


def assert_weights_external(path: Path) -> None:
    """The .onnx proto must hold no float initializer payload inline."""
    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            assert init.data_location == onnx.TensorProto.EXTERNAL, init.name
            assert not init.raw_data and not init.float_data, init.name
    for node in model.graph.node:
        assert node.op_type != "Constant" or all(
            a.t.data_type != onnx.TensorProto.FLOAT for a in node.attribute
        ), node.name


def check_io(path: Path) -> None:
    model = onnx.load(str(path))
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    assert ins == [INPUT_NAME], ins
    assert outs == [OUTPUT_NAME], outs
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value"), dim0


def check_cnn_features(path: Path, expected_bn: int) -> None:
    """The CNN export must keep every feature the compiler tests rely on."""
    model = onnx.load(str(path), load_external_data=False)
    hist = collections.Counter(n.op_type for n in model.graph.node)
    assert hist["BatchNormalization"] == expected_bn, hist
    for op in ("Add", "Concat", "Sigmoid", "Mul"):
        assert hist[op] >= 1, (op, hist)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    depthwise = [
        n
        for n in model.graph.node
        if n.op_type == "Conv"
        and any(a.name == "group" and a.i > 1 and a.i == shapes[n.input[1]][0] for a in n.attribute)
    ]
    assert depthwise, "no depthwise Conv (group == channels) in export"


def op_histogram(path: Path) -> collections.Counter:
    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node)


def file_sizes(path: Path) -> list[tuple[str, int, str]]:
    """(name, bytes, sha256 prefix) of the .onnx file and its external data, if any."""
    files = [path, path.with_name(path.name + ".data")]
    return [
        (f.name, f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest()[:12])
        for f in files
        if f.exists()
    ]


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def verify(path: Path, torch_acc: float) -> dict:
    """checker(full_check) + I/O names + ORT accuracy == torch accuracy."""
    onnx.checker.check_model(str(path), full_check=True)
    check_io(path)
    acc = ort_accuracy(path, OUT_DIR / "digits_test.npz")
    assert abs(acc - torch_acc) <= ACC_TOLERANCE, (path.name, acc, torch_acc)
    files = file_sizes(path)
    for name, size, _ in files:
        assert size < MAX_FILE_BYTES, (name, size)
    hist = op_histogram(path)
    print(f"{path.name}: torch acc {torch_acc:.4f}  onnxruntime acc {acc:.4f}")
    return {
        "name": path.name,
        "files": files,
        "nodes": sum(hist.values()),
        "hist": hist,
        "acc": acc,
    }


def print_summary(rows: list[dict]) -> None:
    print()
    print(f"{'model':<26}{'nodes':>6}{'acc':>8}  op histogram")
    for r in rows:
        ops = " ".join(f"{k}:{v}" for k, v in sorted(r["hist"].items()))
        print(f"{r['name']:<26}{r['nodes']:>6}{r['acc']:>8.4f}  {ops}")
    print()
    print(f"{'file':<30}{'bytes':>9}  sha256[:12]")
    files = [f for r in rows for f in r["files"]]
    for npz in ("digits_test.npz", "digits_calib.npz"):
        files += file_sizes(OUT_DIR / npz)
    for name, size, digest in files:
        print(f"{name:<30}{size:>9}  {digest}")


def build(name: str, factory, data, **train_kw) -> tuple[nn.Module, float]:
    seed_everything(SEED)
    t0 = time.time()
    model = train(factory(), data, **train_kw)
    acc = torch_accuracy(model, data["x_test"], data["y_test"])
    print(f"trained {name} in {time.time() - t0:.1f}s, torch test acc {acc:.4f}")
    return model, acc


def main() -> None:
    seed_everything(SEED)
    data = load_splits()
    write_datasets(data)

    specs = [
        ("digits_cnn", DigitsCNN, dict(epochs=30, lr=3e-3), 0.97),
        ("digits_mlp", DigitsMLP, dict(epochs=40, lr=3e-3), 0.95),
        ("digits_vit", DigitsViT, dict(epochs=120, lr=3e-3, weight_decay=0.05), 0.90),
    ]
    rows, trained = [], {}
    for name, factory, kw, target in specs:
        model, acc = build(name, factory, data, **kw)
        assert acc >= target, (name, acc, target)
        trained[name] = (model, acc)
        path = OUT_DIR / f"{name}.onnx"
        export_legacy(model, path, keep_batchnorm=(name == "digits_cnn"))
        rows.append(verify(path, acc))
    # legacy + PRESERVE keeps all 3 BNs (incl. the foldable Conv->BN in the stem)
    check_cnn_features(OUT_DIR / "digits_cnn.onnx", expected_bn=3)

    model, acc = trained["digits_cnn"]
    path = OUT_DIR / "digits_cnn_dynamo.onnx"
    export_dynamo_external(model, path)
    assert_weights_external(path)
    rows.append(verify(path, acc))
    # the dynamo exporter's optimizer folds the stem Conv->BN; the other 2 stay
    check_cnn_features(path, expected_bn=2)

    print_summary(rows)


if __name__ == "__main__":
    main()
