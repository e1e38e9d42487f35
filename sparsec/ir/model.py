"""``Model``: sparsec's handle on an ONNX model, a thin wrapper over ``onnx_ir.Model``.

Invariants:
- This package (``sparsec.ir``) is the only sparsec code that imports onnx-ir or touches
  protobuf, the testing kit (``sparsec.testing``: it builds and runs ONNX protos for tests)
  aside. Passes read onnx-ir's own nodes and values,
  handed out by this wrapper, and edit the graph through its methods (which keep a value's
  data, shape and dtype consistent and bump ``version``) or through onnx-ir directly.
- Nothing it answers is stale: ``value`` checks that the value it found is still in the graph
  under that name (and looks again when not), ``producer``/``consumers`` read the live graph,
  and every cached analysis (``cached``) is kept with the graph's ``version`` *and* its
  structure (``digest.structure``: the identities of its nodes, their inputs and attributes,
  the inputs, outputs, initializers and their tensors), so an edit made through onnx-ir
  invalidates it as surely as one made through a ``Model`` method.
- ``Model.of(ir_model)`` wraps an ``onnx_ir.Model`` (a pass called by onnx-ir's pass manager
  gets one) and hands back the same wrapper while it is alive, caches included.
- A loaded model passed the ONNX checker and every external-data reference resolves to an
  existing file inside the model's folder; otherwise ``load`` raises ``InputError``.
- ``save`` never leaves a half-written file and never overwrites its source unless forced.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.errors import InputError
from sparsec.ir import loading, saving, sparse_coo
from sparsec.ir import types as value_types
from sparsec.ir.analysis_cache import AnalysisCache
from sparsec.ir.gc_pause import builds
from sparsec.ir.onnx_api import call_onnx_api
from sparsec.ir.spill import Spill

# The protobuf limit is 2 GiB; keep a margin for the graph structure itself.
PROTOBUF_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2


class Model(AnalysisCache):
    """An ONNX model loaded for analysis and transformation."""

    def __init__(self, model: ir.Model, path: Path | None = None) -> None:
        self.ir = model
        self.path = path
        AnalysisCache.__init__(self)
        self._values: dict[str, ir.Value] = {}  # value(): the last name table
        self._names: set[str] | None = None  # unique_name(): every name taken or handed out
        _WRAPPERS[id(model)] = self  # Model.of(model) finds this wrapper while it lives
        self.source_bytes: int | None = None  # file bytes (model + external data) when loaded
        self.source_files: set[Path] = set()  # the model file and its external-data files
        self.input_shapes: dict[str, tuple[int, ...]] = {}  # the run's, bound by analyses
        self.spill: Spill | None = None  # where new large weights go while ``spilling``

    # ----------------------------------------------------------------- load / save
    @classmethod
    @builds
    def load(cls, path: str | os.PathLike) -> Model:
        """Load and check ``path``; raise ``InputError`` with one clear line when it is bad."""
        path = Path(path)
        proto, files = loading.read_checked_proto(path)
        sparse_names = sparse_coo.densify_sparse_initializers(proto, path.parent.resolve())
        sparse_coo.densify_sparse_constants(proto, path.parent.resolve())
        loading.embed_attribute_tensors(proto, path.parent.resolve())
        model = loading.deserialize(proto, path)
        if not model.graph.outputs:
            raise InputError(
                f"{path}: the graph has no outputs (nothing to compute, validate or compress)"
            )
        if sparse_names and not files and sparse_coo.COO_KEY not in model.metadata_props:
            model.metadata_props[sparse_coo.COO_KEY] = json.dumps(sparse_names)
        loading.check_structure(proto, path)
        ir.external_data.set_base_dir(model.graph, str(path.parent.resolve()))
        loaded = cls(model, path)
        loaded.source_files = {path.resolve(), *files}
        loaded.source_bytes = sum(f.stat().st_size for f in loaded.source_files)
        return loaded

    @classmethod
    def of(cls, model: ir.Model) -> Model:
        """The ``Model`` wrapping the onnx-ir ``model``: the same one (its caches with it) for
        as long as it is alive, else a new one."""
        known = _WRAPPERS.get(id(model))
        return known if known is not None and known.ir is model else cls(model)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto) -> Model:
        """Wrap an in-memory ``onnx.ModelProto`` (tests, generated graphs)."""
        return cls(ir.serde.deserialize_model(proto))

    @builds
    def to_proto(self, *, sparse: bool = True) -> onnx.ModelProto:
        """The ModelProto, with the initializers named in ``COO_KEY`` written as sparse
        initializers unless ``sparse=False`` (or the weights live in external data: those
        models are always written dense)."""
        proto = ir.serde.serialize_model(self.ir)
        if sparse and self._writes_sparse():
            sparse_coo.sparsify_initializers(proto, self.sparse_initializer_names())
        return proto

    def sparse_initializer_names(self) -> list[str]:
        """Initializers this model writes as ONNX sparse initializers (COO)."""
        return sparse_coo.coo_names(self.ir.metadata_props)

    def _writes_sparse(self) -> bool:
        """Whether saving writes sparse initializers: some are named, and no weight needs an
        external-data file (sparse and external tensors are never written together)."""
        return bool(self.sparse_initializer_names()) and not self.needs_external_data()

    def set_sparse_initializer_names(self, names: list[str]) -> None:
        """Name the initializers ``save`` writes as sparse (COO) initializers (none: dense)."""
        if names:
            self.set_metadata(sparse_coo.COO_KEY, json.dumps(sorted(names)))
        elif self.ir.metadata_props.pop(sparse_coo.COO_KEY, None) is not None:
            self.touch()

    def save(self, path: str | os.PathLike, *, force: bool = False) -> int:
        """Write to ``path`` so that the model and its external data switch as one (see
        ``sparsec.ir.saving``); return the bytes written (model + external data).

        Refuses to overwrite the file the model was loaded from unless ``force``. Writes external
        data (``<name>.<8 hex digits>.data`` beside the model, a fresh name each time; the one the
        previous ``path`` read is removed) when ``needs_external_data``.
        """
        with self.staged_save(path, force=force) as stage:
            return stage.commit()

    def staged_save(self, path: str | os.PathLike, *, force: bool = False):
        """``save`` in two steps: a context manager giving a ``saving.Staged`` (its ``bytes``;
        side files to write with it) whose ``commit()`` puts the model in place; leaving the block
        without committing writes nothing."""
        path = Path(path)
        self.check_destination(path, force=force)
        proto = self.to_proto() if self._writes_sparse() else None
        return saving.staged(
            self.ir, path, external=self.needs_external_data(), proto=proto, keep=self.source_files
        )

    def needs_external_data(self) -> bool:
        """Whether saving writes an external-data file: the model was loaded with one (the layout
        is kept even when every weight was replaced), a weight still lives in one, or the protobuf
        would pass 2 GB."""
        loaded_external = len(self.source_files) > 1  # the model file and at least one data file
        return (
            loaded_external
            or self.has_external_data()
            or self.weight_bytes() > PROTOBUF_LIMIT_BYTES
        )

    def check_destination(self, path: Path, *, force: bool = False) -> None:
        """Refuse a save to ``path`` that would clobber this model's own files or cannot be
        written (an external-data file gets a fresh name when saved: nothing can collide with it)."""
        path = Path(path)
        if (
            len(self.source_files) > 1
            and self.path is not None
            and saving.same_file(path, self.path)
        ):
            raise InputError(
                f"refusing to overwrite {path}, an external-data model the output is read from "
                "(--force cannot overwrite one); choose another output path"
            )
        self.refuse_clobbering_sources(path, force=force)
        saving.refuse_unwritable(path)

    def refuse_clobbering_sources(self, path: Path, *, force: bool, forceable: bool = True) -> None:
        """Raise ``InputError`` when writing ``path`` would overwrite this model's own files.

        ``force`` allows replacing the model file itself, never its external data (the
        weights are read from it while writing); ``forceable=False`` (a report or plan path)
        never allows it, and the message does not suggest --force.
        """
        path = Path(path)
        own = self.path.resolve() if self.path is not None else None
        for source in sorted(self.source_files):
            if saving.same_file(path, source) and (not force or source != own):
                hint = " or pass --force" if forceable and not force and source == own else ""
                raise InputError(
                    f"refusing to overwrite {source}, which the input model is read from; "
                    f"choose another output path{hint}"
                )
        if path.is_dir():
            raise InputError(f"output path {path} is a directory")

    def check(self) -> str | None:
        """The ONNX checker's full-check complaint about this model, or None when it passes.

        Weights are lifted out during the check, so external data and size do not matter.
        Sparse initializers get the full check in their dense form and the structural check
        as written (see ``sparse_coo``).
        """
        problem = call_onnx_api(loading.check_full, self.ir)
        if problem is None and self._writes_sparse():
            problem = sparse_coo.check_sparse_structure(self.to_proto())
        return problem

    @builds
    def copy(self) -> Model:
        """An independent copy of the graph that shares the weight tensors: cheap, and safe
        because every ``Model`` edit replaces a tensor instead of writing into it."""
        copy = Model(self.ir.clone(), self.path)
        copy.source_files, copy.source_bytes = set(self.source_files), self.source_bytes
        copy.input_shapes = dict(self.input_shapes)
        copy.spill = self.spill
        return copy

    @contextlib.contextmanager
    def spilling(self, min_model_bytes: int) -> Iterator[None]:
        """Within the block, when the weights pass ``min_model_bytes``: every large array this
        model (or a copy made meanwhile) takes as an initializer goes to a temp file, mapped
        (``spill``), so the process holds no second copy of the weights; nothing may read them
        after the block."""
        if self.weight_bytes() <= min_model_bytes:
            yield
            return
        with Spill.temporary() as store:
            self.spill = store
            try:
                yield
            finally:
                self.spill = None

    # ------------------------------------------------------------------ reading
    @property
    def graph(self) -> ir.Graph:
        """The main onnx-ir graph (live: edits through it are seen by this model's caches)."""
        return self.ir.graph

    @property
    def inputs(self) -> list[ir.Value]:
        """Graph inputs that are real inputs (initializers listed as inputs excluded)."""
        return [v for v in self.graph.inputs if not v.is_initializer()]

    @property
    def outputs(self) -> list[ir.Value]:
        """The graph outputs."""
        return list(self.graph.outputs)

    def nodes(self) -> list[ir.Node]:
        """Main-graph nodes in order (a list, so callers may edit while iterating)."""
        return list(self.graph)

    def all_nodes(self) -> Iterator[ir.Node]:
        """Every node: main graph, subgraphs (If/Loop/Scan bodies) and functions."""
        yield from ir.traversal.RecursiveGraphIterator(self.graph)
        for function in self.ir.functions.values():
            yield from ir.traversal.RecursiveGraphIterator(function)

    @staticmethod
    def has_subgraphs(node: ir.Node) -> bool:
        """Whether ``node`` holds a graph attribute (an If / Loop / Scan body)."""
        return any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        )

    @staticmethod
    def reads(node: ir.Node) -> set[str]:
        """Names of the values ``node`` reads: its inputs and, through its subgraphs (If / Loop /
        Scan bodies, nested ones too), every name their nodes read, outer-scope values among them."""
        names = {
            value.name for value in node.inputs if value is not None and value.name is not None
        }
        for attribute in node.attributes.values():
            if attribute.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                continue
            for graph in (
                [attribute.value] if attribute.type == ir.AttributeType.GRAPH else attribute.value
            ):
                for inner in ir.traversal.RecursiveGraphIterator(graph):
                    names.update(
                        value.name
                        for value in inner.inputs
                        if value is not None and value.name is not None
                    )
        return names

    def opsets(self) -> dict[str, int]:
        """Imported opsets: {domain: version}."""
        return dict(self.ir.opset_imports)

    @property
    def opset(self) -> int:
        """The default (``ai.onnx``) opset version, 0 when none is imported."""
        return self.ir.opset_imports.get("", self.ir.opset_imports.get("ai.onnx", 0))

    def initializers(self) -> dict[str, ir.Value]:
        """The main graph's initializers by name (a fresh dict)."""
        return dict(self.graph.initializers)

    def values_by_name(self) -> dict[str, ir.Value]:
        """{name: value} of the main graph (inputs, initializers, node outputs): a fresh dict,
        safe to keep using while editing."""
        values = {v.name: v for v in self.graph.inputs if v.name is not None}
        values.update(self.graph.initializers)
        for node in self.nodes():
            values.update({v.name: v for v in node.outputs if v is not None and v.name})
        return values

    def value(self, name: str) -> ir.Value | None:
        """The main-graph value called ``name``, or None. Answered from a name table that is
        checked on every hit (the value still has that name and is still in this graph) and
        built again on a miss, so an edit made through onnx-ir is always seen."""
        found = self._values.get(name)
        if found is not None and found.name == name and found.graph is self.graph:
            return found
        self._values = self.values_by_name()
        return self._values.get(name)

    def producer(self, value: ir.Value) -> ir.Node | None:
        """The node computing ``value`` (None for an input or initializer)."""
        return value.producer()

    def consumers(self, value: ir.Value) -> list[ir.Node]:
        """The nodes reading ``value``, each once, in order of use."""
        return list(dict.fromkeys(use.node for use in value.uses()))

    def functions(self) -> dict:
        """The model's local functions by (domain, name, overload)."""
        return dict(self.ir.functions)

    def producer_name(self) -> str:
        """The exporter that wrote the model, with its version (``pytorch 2.5``)."""
        return f"{self.ir.producer_name or '?'} {self.ir.producer_version or ''}".strip()

    @staticmethod
    def attr(node: ir.Node, name: str, default: Any = None) -> Any:
        """A node attribute as a plain Python value (ints, floats, lists, ndarray for tensors)."""
        attribute = node.attributes.get(name)
        if attribute is None or attribute.is_ref():
            return default
        value = attribute.value
        if attribute.type == ir.AttributeType.TENSOR:  # not isinstance(Protocol): slow
            return value.numpy()
        if isinstance(value, (list, tuple)):
            return list(value)
        return value

    def constant(self, value: ir.Value | None) -> np.ndarray | None:
        """The array a value always holds, or None when it depends on inputs.

        Covers initializers, ``Constant`` nodes and ``ConstantOfShape`` with a constant shape,
        so weights are found whichever way the exporter wrote them.
        """
        if value is None:
            return None
        if value.const_value is not None:
            try:
                return value.const_value.numpy()
            except ValueError as error:  # raw bytes that do not fit the dims: a corrupt file
                raise InputError(
                    f"tensor '{value.name}' holds data that does not match its shape ({error})"
                ) from None
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            return _constant_node_array(node)
        if node.op_type == "ConstantOfShape":
            shape = self.constant(node.inputs[0])
            if shape is None:
                return None
            fill = self.attr(node, "value")
            fill = np.zeros(1, np.float32) if fill is None else fill.reshape(-1)
            return np.full(tuple(int(d) for d in shape), fill[0], dtype=fill.dtype)
        return None

    def constant_shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """The shape of a constant value without materialising it (cheap for ConstantOfShape)."""
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(value.const_value.shape.numpy())
        node = value.producer()
        if (
            node is not None
            and node.op_type == "ConstantOfShape"
            and node.domain in ("", "ai.onnx")
        ):
            shape = self.constant(node.inputs[0])
            return None if shape is None else tuple(int(d) for d in shape)
        array = self.constant(value)
        return None if array is None else array.shape

    def static_shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """The value's shape when every dim is a known integer, else None."""
        dims = self.shape_dims(value) or []
        ints = [d for d in dims if isinstance(d, int)]
        return tuple(ints) if dims and len(ints) == len(dims) else None

    def shape_dims(self, value: ir.Value | None) -> list[int | str | None] | None:
        """The value's shape with symbolic dims as their names (or None), if the rank is known."""
        if value is None or value.shape is None:
            return None
        return [
            d if isinstance(d, int) else (d.value if hasattr(d, "value") else None)
            for d in value.shape.dims
        ]

    def elem_type(self, value: ir.Value) -> np.dtype | None:
        """The numpy dtype of a value, if known."""
        if value.dtype is None:
            return None
        try:
            return np.dtype(value.dtype.numpy())
        except (TypeError, ValueError):
            return None

    @staticmethod
    def type_name(value: ir.Value) -> str | None:
        """onnxruntime's name of the value's type: 'tensor(float)', 'seq(map(int64,tensor(float)))'."""
        return value_types.type_name(value.type)

    @staticmethod
    def is_tensor(value: ir.Value) -> bool:
        """Whether the value is a dense tensor (or of unknown type): not a sequence, map or optional."""
        return value_types.is_tensor(value.type)

    def has_external_data(self) -> bool:
        """Whether a weight of any graph still lives in an external-data file."""
        return any(
            isinstance(v.const_value, ir.ExternalTensor)
            for graph in self.ir.graphs()
            for v in graph.initializers.values()
        )

    def release_mapped_weights(self) -> int:
        """Drop the resident pages of every weight read from external data
        (``loading.release_mapped``): they leave the process, the weights stay readable."""
        return loading.release_mapped(
            v.const_value for graph in self.ir.graphs() for v in graph.initializers.values()
        )

    def weight_bytes(self) -> int:
        """Bytes held by initializers in every graph (what the protobuf would carry)."""
        total = 0
        for graph in self.ir.graphs():
            for value in graph.initializers.values():
                if value.const_value is not None:
                    total += value.const_value.nbytes
        return total

    # ------------------------------------------------------------------ editing
    def _structure_changed(self) -> None:
        self._names = None  # an edit made through onnx-ir may have added names

    def resize_initializer(self, value: ir.Value, array: np.ndarray) -> None:
        """Replace an initializer's data, keeping its shape and dtype consistent with it (a
        replaced memory-mapped weight's pages leave the resident set)."""
        replaced = value.const_value
        if self.spill is not None and self.spill.takes(array):
            value.const_value = self.spill.tensor(array, value.name or "")
        else:
            value.const_value = _tensor(array, name=value.name)
        loading.release_mapped([replaced])
        value.shape = ir.Shape(array.shape)
        value.dtype = ir.DataType.from_numpy(array.dtype)
        self.touch()

    def add_initializer(self, name: str, array: np.ndarray) -> ir.Value:
        """A new initializer with a name not used elsewhere in the graph."""
        unique = self.unique_name(name)
        value = ir.Value(
            name=unique,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=_tensor(array, name=unique),
        )
        self.graph.register_initializer(value)
        self.touch()
        return value

    def replace_constant_input(self, node: ir.Node, index: int, array: np.ndarray) -> ir.Value:
        """Give ``node`` a new constant at input ``index``; other consumers keep the old one.

        An initializer used by this node alone is rewritten in place (its name survives);
        a shared one, or a ``Constant`` node's output, gets a fresh initializer.
        """
        old = node.inputs[index] if index < len(node.inputs) else None
        if (
            old is not None
            and old.is_initializer()
            and self.consumers(old) == [node]
            and not old.is_graph_output()
        ):
            self.resize_initializer(old, array)
            return old
        base = (
            old.name
            if old is not None and old.name
            else f"{node.name or node.op_type}_input{index}"
        )
        new = self.add_initializer(base, array)
        self.set_input(node, index, new)
        return new

    def set_constant(self, value: ir.Value, array: np.ndarray) -> None:
        """Give a constant value (initializer, ``Constant`` or ``ConstantOfShape`` output) new
        contents, for every consumer. Its name survives, except when a ``ConstantOfShape``
        gets non-uniform contents: then a new initializer takes over its uses."""
        if value.is_initializer():
            self.resize_initializer(value, array)
            return
        node = value.producer()
        if (
            node is not None
            and node.op_type == "ConstantOfShape"
            and _is_uniform(array, self.constant(value))
        ):
            self.replace_constant_input(node, 0, np.array(array.shape, dtype=np.int64))
        elif node is not None and node.op_type == "Constant":
            for name in list(node.attributes):
                del node.attributes[name]
            node.attributes["value"] = ir.AttrTensor("value", _tensor(array))
            value.dtype = ir.DataType.from_numpy(array.dtype)  # a shape needs a type to be written
        elif node is not None and node.op_type == "ConstantOfShape":
            self.replace_all_uses(value, self.add_initializer(_name(value), array))
            return
        else:
            raise ValueError(f"'{value.name}' is not a constant sparsec can rewrite")
        value.shape = ir.Shape(array.shape)
        self.touch()

    def set_dim(self, value: ir.Value, axis: int, size: int) -> None:
        """Record a new size for one axis of a value's declared shape (after surgery). A
        symbolic dim (``896*batch``: an axis that merges the batch with pruned channels) becomes
        unknown: its new size depends on the batch, and a number would freeze it."""
        if value.shape is None or axis >= len(value.shape):
            return
        dims = list(value.shape.dims)
        dims[axis] = int(size) if isinstance(dims[axis], int) else ir.SymbolicDim(None)
        value.shape = ir.Shape(dims)
        self.touch()

    def remove_attr(self, node: ir.Node, name: str) -> None:
        """Remove attribute ``name`` of ``node`` if it has one."""
        if name in node.attributes:
            del node.attributes[name]
            self.touch()

    def unique_name(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``...: a name no value or node of the model has yet
        (reserved: the next call gives another one).

        The names taken are collected once and kept across ``Model`` edits (each hands out its
        new names through here; a freed name stays reserved, which is harmless), and collected
        again when a cached analysis sees an edit made through onnx-ir: so a rewrite adding
        hundreds of nodes costs one walk of the graph, not one per node."""
        if self._names is None:
            self._names = self._value_names()
        taken = self._names
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def _value_names(self) -> set[str]:
        names = {v.name for v in self.graph.inputs if v.name is not None} | set(
            self.graph.initializers
        )
        for node in self.all_nodes():
            names.update(v.name for v in node.outputs if v.name)
            if node.name is not None:
                names.add(node.name)
        return names

    def set_input(self, node: ir.Node, index: int, value: ir.Value | None) -> None:
        """Point input ``index`` of ``node`` at ``value`` (appending optional inputs as needed)."""
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        self.touch()

    def set_attr(self, node: ir.Node, name: str, value: Any) -> None:
        """Set an attribute from a plain Python value (int, float, str, list, ndarray)."""
        if isinstance(value, np.ndarray):
            value = _tensor(value)
        node.attributes[name] = ir.convenience.convert_attribute(name, value)
        self.touch()

    def replace_all_uses(self, old: ir.Value, new: ir.Value) -> None:
        """Point every consumer (and graph output slot) of ``old`` at ``new``.

        When ``old`` is a graph output, ``new`` takes over its name so the model's interface
        does not change.
        """
        was_output = old.is_graph_output()
        if not self.can_replace(old, new):
            raise ValueError(
                f"cannot route graph output '{old.name}' to '{new.name}': it is not a node output "
                "of the same graph, or already an input, initializer or output"
            )
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        if was_output:  # the interface keeps its name, type and declared shape
            old_name = old.name
            old.name = None
            new.name = old_name
            new.type = old.type or new.type
            new.shape = old.shape or new.shape
        self.touch()

    @staticmethod
    def can_replace(old: ir.Value, new: ir.Value) -> bool:
        """Whether ``replace_all_uses(old, new)`` keeps the interface of every graph intact.

        Always, unless ``old`` is a graph output: then ``new`` takes its name, so it must be a
        node output of the same graph (a subgraph must not export an outer-scope value) and not
        already an input, initializer or output.
        """
        if not old.is_graph_output():
            return True
        new_producer, old_producer = new.producer(), old.producer()
        same_graph = (
            new_producer is not None
            and old_producer is not None
            and new_producer.graph is old_producer.graph
        )
        return same_graph and not (
            new.is_graph_input() or new.is_initializer() or new.is_graph_output()
        )

    def add_node(
        self,
        op_type: str,
        inputs: list,
        attributes: dict | None = None,
        *,
        before: ir.Node,
        name: str = "sparsec",
    ) -> ir.Value:
        """Insert a standard-domain node right before ``before`` (same graph); returns its output."""
        attrs = [
            ir.convenience.convert_attribute(k, _tensor(v) if isinstance(v, np.ndarray) else v)
            for k, v in (attributes or {}).items()
        ]
        node = ir.Node(
            "", op_type, inputs, attrs, num_outputs=1, name=self.unique_name(f"{name}/{op_type}")
        )
        node.outputs[0].name = self.unique_name(f"{name}/{op_type}_out")
        _graph(before).insert_before(before, node)
        self.touch()
        return node.outputs[0]

    def detach_input_producer(self, node: ir.Node, index: int) -> ir.Node:
        """Give ``node`` a private copy of the (single-output) node producing its input
        ``index``, so that editing the copy leaves the producer's other consumers alone."""
        source = node.inputs[index]
        producer = source.producer() if source is not None else None
        if source is None or producer is None:
            raise ValueError(f"input {index} of node '{node.name}' has no producer to detach")
        attrs = [
            ir.convenience.convert_attribute(name, attr.value)
            for name, attr in producer.attributes.items()
        ]
        clone = ir.Node(
            producer.domain,
            producer.op_type,
            list(producer.inputs),
            attrs,
            num_outputs=1,
            name=self.unique_name(
                f"{producer.name or producer.op_type}_for_{node.name or node.op_type}"
            ),
        )
        clone.outputs[0].name = self.unique_name(f"{source.name}_for_{node.name or node.op_type}")
        _graph(node).insert_before(node, clone)
        node.replace_input_with(index, clone.outputs[0])
        self.touch()
        return clone

    def remove_node(self, node: ir.Node) -> None:
        """Remove a node whose outputs are no longer used."""
        _graph(node).remove(node, safe=True)
        self.touch()

    def set_metadata(self, key: str, value: str) -> None:
        """Set ``metadata_props[key]`` (written with the model)."""
        self.ir.metadata_props[key] = value
        self.touch()

    def replace_by_constant(self, value: ir.Value, array: np.ndarray) -> ir.Value:
        """Let a new initializer holding ``array`` take the place and the name of the node
        output ``value`` (whose producer is left unused)."""
        name = _name(value)
        new = self.add_initializer(f"{name}__constant", array)
        for use in list(value.uses()):
            use.node.replace_input_with(use.idx, new)
        value.name = self.unique_name(f"{name}__replaced")
        self.graph.initializers.pop(_name(new))
        new.name = name
        if new.const_value is not None:
            new.const_value.name = name
        self.graph.register_initializer(new)
        self.touch()
        return new

    def metadata(self, key: str) -> str | None:
        """``metadata_props[key]``, or None."""
        return self.ir.metadata_props.get(key)

    def replace_initializer(self, old: ir.Value, new: ir.Value) -> None:
        """Let the node output ``new`` take the place *and the name* of the initializer
        ``old``, which is removed."""
        name = _name(old)
        for use in list(old.uses()):
            use.node.replace_input_with(use.idx, new)
        self.graph.initializers.pop(name)
        old.name = self.unique_name(f"{name}__replaced")
        new.name = name
        self.touch()


_WRAPPERS: weakref.WeakValueDictionary[int, Model] = weakref.WeakValueDictionary()


def _tensor(array: np.ndarray, name: str | None = None) -> ir.Tensor:
    """``ir.tensor(array)`` without its protocol isinstance checks (slow, and per edit)."""
    return ir.Tensor(np.array(array, order="C"), name=name)


def _graph(node: ir.Node) -> ir.Graph:
    """The graph ``node`` is in (every node sparsec edits is in one)."""
    if node.graph is None:
        raise ValueError(f"node '{node.name}' is in no graph")
    return node.graph


def _name(value: ir.Value) -> str:
    """The name of a graph value (every value sparsec edits has one)."""
    if value.name is None:
        raise ValueError("a value without a name")
    return value.name


def _is_uniform(array: np.ndarray, before: np.ndarray | None) -> bool:
    """Whether ``array`` holds one value, the one ``before`` held (a sliced ConstantOfShape)."""
    if array.size == 0 or before is None or before.size == 0:
        return array.size == 0
    first = before.reshape(-1)[0]
    return bool(np.all(array == first)) and array.dtype == before.dtype


def _constant_node_array(node: ir.Node) -> np.ndarray | None:
    """The value of a ``Constant`` node, whichever attribute holds it."""
    for name, attribute in node.attributes.items():
        if attribute.is_ref():
            return None
        value = attribute.value
        if name in ("value", "sparse_value"):
            return value.numpy()
        if name in ("value_float", "value_int"):
            return np.array(value, dtype=np.float32 if name == "value_float" else np.int64)
        if name in ("value_floats", "value_ints"):
            return np.array(list(value), dtype=np.float32 if name == "value_floats" else np.int64)
    return None
