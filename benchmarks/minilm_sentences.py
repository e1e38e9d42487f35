"""The all-MiniLM-L6-v2 model and real sentences the benchmarks compare embeddings on
(built by ``models/make_minilm.py`` into ``.cache/minilm``), and the cosine they report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

FOLDER = Path(__file__).resolve().parents[1] / ".cache/minilm"
MODEL = FOLDER / "minilm_legacy.onnx"
SENTENCES = FOLDER / "sentences.npz"
CALIBRATION = FOLDER / "calibration.npz"  # 1024 more sentences, disjoint from SENTENCES


def sentence_feeds(rows: slice = slice(None), path: Path = SENTENCES) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` of the chosen sentences of ``path`` (512 in SENTENCES,
    1024 in CALIBRATION)."""
    data = np.load(path)
    return {"input_ids": data["input_ids"][rows], "attention_mask": data["attention_mask"][rows]}


def embed(path: Path, feeds: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    count = len(next(iter(feeds.values())))
    return np.concatenate(
        [
            session.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0]
            for i in range(0, count, batch)
        ]
    )


def cosines(path: Path, feeds: dict[str, np.ndarray], reference: np.ndarray) -> np.ndarray:
    """Per sentence, the cosine between ``path``'s embedding and ``reference``."""
    return row_cosines(embed(path, feeds), reference)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the cosine between ``a`` and ``b``."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
