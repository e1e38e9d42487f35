"""The only package that touches onnx-ir or protobuf: loading, saving, editing, running.

Everything above it (analyses, passes, CLI) works through ``Model`` and the helpers exported
here, so a change of IR library or of serialisation stays inside this folder.
"""

from sparsec.ir import types

types.install()  # before any model is read: onnx-ir 1.1 cannot read or write map types

from sparsec.ir.model import Model, refuse_unwritable  # noqa: E402

__all__ = ["Model", "refuse_unwritable"]
