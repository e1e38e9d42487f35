"""Weights spilled to a temporary external-data file: a large model's new arrays live in the
kernel's page cache, memory-mapped, instead of in the process.

Invariant: a spilled tensor is an ``ir.ExternalTensor`` over bytes appended once to the spill
file and never rewritten, so it reads back exactly the array it stands for; the file and its
folder live until the ``Spill`` closes (``Spill.temporary``), and nothing may read a spilled
tensor after that. Arrays under ``MIN_BYTES`` stay in memory (not worth a mapping).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

MIN_BYTES = 1 << 20
ALIGNMENT = 4096
FILE_NAME = "spill.data"


class Spill:
    """An append-only external-data file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._stream = open(self.folder / FILE_NAME, "wb")  # noqa: SIM115 (closed by close())
        self.bytes = 0

    @classmethod
    @contextlib.contextmanager
    def temporary(cls) -> Iterator[Spill]:
        """A spill in a fresh temp folder, removed (file and all) when the block ends."""
        folder = Path(tempfile.mkdtemp(prefix="sparsec-spill-"))
        spill = cls(folder)
        try:
            yield spill
        finally:
            spill._stream.close()
            shutil.rmtree(folder, ignore_errors=True)

    def tensor(self, array: np.ndarray, name: str) -> ir.ExternalTensor:
        """``array`` appended to the file, as a mapped tensor named ``name``."""
        array = np.ascontiguousarray(array)
        offset = -(-self.bytes // ALIGNMENT) * ALIGNMENT
        self._stream.seek(offset)
        self._stream.write(array.astype(array.dtype.newbyteorder("<"), copy=False).data)
        self._stream.flush()
        self.bytes = offset + array.nbytes
        return ir.ExternalTensor(
            FILE_NAME,
            offset,
            array.nbytes,
            ir.DataType.from_numpy(array.dtype),
            shape=ir.Shape(array.shape),
            name=name,
            base_dir=self.folder,
        )

    def takes(self, array: np.ndarray) -> bool:
        """Whether ``array`` is spilled (numeric, at least ``MIN_BYTES``); else it stays in memory."""
        return array.nbytes >= MIN_BYTES and array.dtype.kind in "biuf"
