"""timm ViT-tiny at ``--channels 0.5 --lossy-couplings``: how far the pruned model's output is
from the original's on real photographs, without calibration, with activation importance, and
with activation importance plus the refit (recovery), measured side by side in one run.

Usage::

    python benchmarks/vit_photos.py [--model .cache/timm/vit_tiny_patch16_224_legacy.onnx]
        [--calibration-samples 256] [--eval-samples 128]

The model comes from ``models/make_timm_models.py vit_tiny_patch16_224`` (random weights,
``pretrained=False``: nothing is downloaded). Real images are not reachable offline, so the
data is a documented stand-in: random 224×224 crops (scale 0.3-1.0 of the shorter side, resized
with bilinear filtering, half of them mirrored) of the two photographs scikit-learn ships
(``sklearn.datasets.load_sample_images``: a temple in China and a flower, 427×640 each),
normalised with ImageNet's mean and standard deviation. Calibration and evaluation crops come
from different seeds (0 and 1), so no evaluation crop is a calibration crop.

Columns: mean and minimum cosine of the pruned logits to the original's over the evaluation
crops, top-1 agreement with the original, params after / before, seconds of the compress call.
The original's top-1 on these photos means nothing (random weights); agreement and cosine say
how much of the original function survives.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / ".cache" / "timm" / "vit_tiny_patch16_224_legacy.onnx"
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def photo_crops(count: int, seed: int, size: int = 224) -> np.ndarray:
    """``count`` normalised NCHW float32 crops of scikit-learn's two sample photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(min(photo.shape[:2]) * rng.uniform(0.3, 1.0))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        image = Image.fromarray(photo[top : top + side, left : left + side])
        array = np.asarray(image.resize((size, size), Image.BILINEAR), np.float64) / 255.0
        if rng.random() < 0.5:
            array = array[:, ::-1]
        crops.append(((array - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(crops).astype(np.float32)


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + 16]})[0] for i in range(0, len(images), 16)]
    )


def settings(calibration: Path) -> list[tuple[str, dict]]:
    base = {"ratio": 0.5, "lossy_couplings": True}
    calibrated = {**base, "importance": "activation", "calibration": str(calibration)}
    return [
        ("l1, no calibration", base),
        ("activation, no refit", {**calibrated, "recover": False}),
        ("activation + refit", calibrated),
    ]


def row(label: str, source: Path, target: Path, options: dict, images, reference) -> str:
    from sparsec import api

    start = time.perf_counter()
    try:
        result = api.compress(
            source, target, pipeline=api.channel_passes(**options), latency_runs=0, force=True
        )
    except Exception as error:  # the row shows the one-line error
        return f"| {label} | error: {type(error).__name__}: {str(error).splitlines()[0]} | | | | |"
    seconds = time.perf_counter() - start
    pruned = logits(target, images)
    cosine = (pruned * reference).sum(1) / (
        np.linalg.norm(pruned, axis=1) * np.linalg.norm(reference, axis=1)
    )
    agreement = float((pruned.argmax(1) == reference.argmax(1)).mean())
    params = result.after.params / result.before.params
    return (
        f"| {label} | {cosine.mean():.4f} | {cosine.min():.4f} | {agreement:.3f} | "
        f"{params:.3f} | {seconds:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=128)
    args = parser.parse_args()
    if not args.model.exists():
        print(f"{args.model}: missing (python models/make_timm_models.py vit_tiny_patch16_224)")
        return 1
    print("$ " + shlex.join(["python", *sys.argv]))
    images = photo_crops(args.eval_samples, seed=1)
    reference = logits(args.model, images)
    rows = [
        "| setting | mean cosine | min cosine | top-1 agreement | params | s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        calibration = folder / "calibration.npz"
        np.savez(calibration, input=photo_crops(args.calibration_samples, seed=0))
        for label, options in settings(calibration):
            print(f"  {label}...", file=sys.stderr, flush=True)
            rows.append(row(label, args.model, folder / "out.onnx", options, images, reference))
    print(f"\n## {args.model.name} at --channels 0.5 --lossy-couplings, stand-in photos\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
