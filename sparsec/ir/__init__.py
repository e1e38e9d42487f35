"""sparsec's IR layer: a ``Model`` over onnx-ir, and everything that touches protobuf.

What it guarantees, and what it does not hide:

- **Reading is onnx-ir's API.** ``Model.nodes()``, ``producer``, ``consumers``, ``value`` and
  friends hand out onnx-ir's own ``Node`` and ``Value`` objects, and analyses and passes read
  them directly (``op_type``, ``domain``, ``inputs``, ``outputs``, ``attributes``, ``shape``,
  ``const_value``). A change of IR library would therefore reach every layer above, not stay in
  this folder. Code outside ``sparsec/ir/`` (the ``sparsec.testing`` kit aside: it builds ONNX protos for tests) does
  not import ``onnx_ir`` at all, and no sparsec module imports an ``_``-prefixed onnx-ir module
  (``tests/test_ir_boundary.py`` checks it).
- **Edits go through ``Model`` methods or through onnx-ir**: the methods
  (``resize_initializer``, ``add_initializer``, ``replace_all_uses``, ``set_attr``,
  ``remove_node``, ...) keep a value's data, shape and dtype consistent and bump
  ``Model.version``; an edit made through onnx-ir directly (``graph.remove``,
  ``replace_all_uses_with``) is seen too, because every cached analysis is kept with the
  graph's structure (``digest.structure``) as well as its version, and ``Model.value``
  checks each answer against the live graph. Only bytes written into an existing tensor object
  go unseen: call ``Model.touch()`` then.
- **onnx-ir's pass contract** (``passes``): sparsec's passes subclass
  ``onnx_ir.passes.PassBase`` and run in onnx-ir's ``PassManager``; onnx-ir passes run in a
  sparsec ``Pipeline``.
- **Loading, saving, onnxruntime sessions, shape inference and protobuf stay here**
  (``loading``, ``saving``, ``runtime``, ``shapes``, ``sparse_coo``, ``tensor_checks``;
  ``onnx_api`` calls onnx's checker and shape inference on a proto without its large weights).
- **A process-wide patch**: importing this package calls ``types.install()``, which wraps three
  functions of onnx-ir's ``serde`` module so that map types (``map(int64, tensor(float))``, as
  skl2onnx's ZipMap writes them) load and save; onnx-ir 1.1 raises ``NotImplementedError`` on
  them. The patch affects every user of onnx-ir in the process, is idempotent, and is skipped
  when onnx-ir reads maps by itself: it can be deleted once the onnx-ir version sparsec
  requires does.
"""

from sparsec.ir import types

types.install()  # before any model is read: onnx-ir 1.1 cannot read or write map types

from sparsec.ir.model import Model  # noqa: E402
from sparsec.ir.saving import (  # noqa: E402
    file_sha256,
    refuse_unwritable,
    write_text,
)

__all__ = ["Model", "file_sha256", "refuse_unwritable", "write_text"]
