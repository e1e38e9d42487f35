"""onnxruntime sessions over ``Model`` objects or files, with optional intermediate outputs.

Every place that runs a model (validation, the shape-inference fallback, later calibration
capture) creates its session here, so that serialisation details (the 2 GB limit, exposing
intermediate tensors as extra graph outputs) live in one place. This is the only module that
imports onnxruntime.

Memory: a ``Model`` goes to onnxruntime as a file with external data in a temporary folder
(``session_for``), whose weights onnxruntime memory-maps rather than copies out of a protobuf;
so does a model file of ``EXTERNAL_COPY_BYTES`` or more holding its weights in its protobuf
(``session_for_file``). Where that copy cannot be written, the bytes (or the user's file) go
instead, as before. A model whose weights pass ``LARGE_MODEL_BYTES`` (``is_large``) runs
without prepacking too (``session.disable_prepacking``: prepacking would make an anonymous copy
of every Gemm/MatMul weight), so its pages are the kernel's to drop, and they leave the process
with the session.
Callers keep one large session alive at a time (``validate``, ``evaluate``): run it, keep its
outputs, free it. A session whose runs are not timed goes without the memory arena (``arena``).

onnxruntime's own messages never reach the user: every session logs at severity 3 (errors,
which become ``InputError`` lines anyway), the default logger too, and the import itself runs
with file descriptor 2 silenced, because onnxruntime 1.32 prints an ANSI-coloured telemetry
warning *while being imported* when it cannot write under ``$HOME/.cache`` (no session or
logger setting can reach that line).
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.errors import InputError, SparsecError, one_line
from sparsec.ir.model import PROTOBUF_LIMIT_BYTES

_SEVERITY = 4  # onnxruntime's FATAL only: its errors reach the user as one sparsec error line


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block (C++ code writes to it directly,
    past ``sys.stderr``); restored afterwards, and a no-op when it cannot be duplicated."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with _native_stderr_silenced():
    import onnxruntime as ort
ort.set_default_logger_severity(_SEVERITY)

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# onnxruntime graph transformers sparsec's sessions leave out. QDQPropagationTransformer (level
# basic and up) moves Q/DQ pairs across Reshape/Transpose, an exact rewrite that only enables
# int8 fusions; onnxruntime 1.32 aborts the whole process (a C++ assertion) when such a value
# feeds an If node. Without it sparsec validates every QDQ model and reports its latency a little
# pessimistically.
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]

# Weights past this many bytes: sessions map them from a file, one such session at a time.
LARGE_MODEL_BYTES = 1 << 28
EXTERNAL_TENSOR_BYTES = 1024  # a file's tensors from this size go to onnxruntime as external data
EXTERNAL_COPY_BYTES = 1 << 24  # from this file size (below, the copy's own protobuf costs as much)


class Session:
    """An onnxruntime CPU session with named inputs/outputs."""

    def __init__(
        self,
        source: bytes | str,
        *,
        optimization: str = "all",
        threads: int = 0,
        lean: bool = False,
        mapped: bool = False,
        arena: bool = True,
    ) -> None:
        options = ort.SessionOptions()
        if mapped:  # weights stay memory-mapped from the file's external data (no packed copy)
            options.add_session_config_entry("session.disable_prepacking", "1")
        options.graph_optimization_level = _LEVELS[optimization]
        options.log_severity_level = _SEVERITY
        if threads:
            options.intra_op_num_threads = threads
        if lean or not arena:  # untimed runs: no memory arena or pattern planning
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        if lean:  # a one-off probe run, one thread
            options.intra_op_num_threads = options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                source,
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=DISABLED_OPTIMIZERS,
            )
        except Exception as error:  # onnxruntime raises its own untyped exception classes
            raise InputError(f"onnxruntime cannot load the model: {one_line(error)}") from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.output_types = {
            o.name: o.type for o in self._session.get_outputs()
        }  # 'seq(map(int64,tensor(float)))'

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        try:
            results = self._session.run(
                names, {k: v for k, v in feeds.items() if k in self.input_names}
            )
        except Exception as error:
            raise InputError(f"onnxruntime failed to run the model: {one_line(error)}") from None
        return dict(zip(names, results))


class Recorded:
    """A session's outputs on a sequence of feeds, computed up front: it stands in for the
    session (freed meanwhile) where the same feeds are run in the same order, so that a large
    model's session is not alive with another's. ``run`` returns the next recorded outputs;
    ``done``: the outputs of feeds run already, before ``feeds``."""

    def __init__(
        self, session: Session, feeds: Iterable[dict[str, np.ndarray]], done: Iterable = ()
    ) -> None:
        self.input_names, self.output_names = session.input_names, session.output_names
        self.output_types = session.output_types
        self._outputs = collections.deque(done)
        self._outputs.extend(session.run(batch) for batch in feeds)

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        recorded = self._outputs.popleft()
        return recorded if outputs is None else {name: recorded[name] for name in outputs}


def optimized_op_names(model, optimization: str = "basic") -> list[str]:
    """Names of the nodes left after onnxruntime optimizes ``model`` at ``optimization``
    (constant folding included): what actually runs."""
    with tempfile.TemporaryDirectory(prefix="sparsec-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = _LEVELS[optimization]
        options.log_severity_level = _SEVERITY
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        try:
            ort.InferenceSession(
                model.to_proto().SerializeToString(),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=DISABLED_OPTIMIZERS,
            )
        except Exception as error:
            raise InputError(f"onnxruntime cannot load the model: {one_line(error)}") from None
        return [
            node.name
            for node in onnx.load(
                options.optimized_model_filepath, load_external_data=False
            ).graph.node
        ]


def can_truncate(model) -> bool:
    """``session_for`` honours ``only`` and ``fed`` for this model (it goes to onnxruntime as
    bytes: no external data, under the protobuf limit)."""
    return not model.has_external_data() and model.weight_bytes() < PROTOBUF_LIMIT_BYTES


def session_for(
    model,
    *,
    extra_outputs: Sequence[str] = (),
    optimization: str = "all",
    threads: int = 0,
    lean: bool = False,
    only: bool = False,
    fed: Mapping[str, np.dtype] | None = None,
    mapped: bool | None = None,
    arena: bool = True,
) -> Session:
    """A session over an in-memory ``Model``, optionally exposing intermediate values by name.
    With ``only``, the session computes ``extra_outputs`` alone: the graph outputs are replaced
    by them and every node they do not depend on is left out (onnxruntime runs every node of a
    graph whatever outputs are asked for), for models under the protobuf limit; ``fed`` (with
    ``only``) names intermediate values the caller feeds instead (with their dtypes): they become
    graph inputs and what computes them alone is left out too.

    The model goes to onnxruntime as a file in a temporary folder, its weights as external data
    beside it, which onnxruntime memory-maps instead of copying them out of a protobuf (resnet18
    at level "all": 191 -> 111 MB more peak RSS, shufflenet 28 -> 20 MB; the same graph, so
    the same kernels and outputs). A session exposing or computing only some values
    (``extra_outputs``, ``only``) of a model under the protobuf limit goes as bytes (the graph
    edited in its protobuf). ``mapped`` (default: ``is_large``): no prepacking, so that a
    file's weights stay mapped; two sessions whose timings are compared take the same value.
    ``arena=False`` (sessions whose runs are not timed): no memory arena and no memory-pattern
    planning, activations allocated per run (resnet18 at level "all": 20 MB less; the same
    kernels and outputs). When the temporary copy cannot be written (a full disk, no temporary
    folder), a model under the protobuf limit goes as bytes; a larger one is one ``InputError``
    line naming the folder and ``TMPDIR``.
    """
    mapped = is_large(model) if mapped is None else mapped
    options: dict[str, Any] = {"optimization": optimization, "threads": threads, "lean": lean}
    options |= {"mapped": mapped, "arena": arena}
    if can_truncate(model) and (only or extra_outputs):
        return Session(_edited_bytes(model, extra_outputs, only, fed or {}), **options)
    try:
        return _session_from_copy(model, extra_outputs, options)
    except OSError as error:  # no room (or no folder) for the copy: bytes, when they can go
        if not can_truncate(model):
            raise InputError(_no_temporary_copy(error)) from None
    return Session(model.to_proto().SerializeToString(), **options)


def _edited_bytes(model, names: Sequence[str], only: bool, fed: Mapping[str, np.dtype]) -> bytes:
    """The model's protobuf bytes computing ``names`` alone (``only``; ``fed`` values given
    instead of computed) or exposing them beside its outputs."""
    proto = model.to_proto()
    if only:
        _truncate(proto, names, fed)
    else:
        _expose(proto, names)
    return proto.SerializeToString()


def _session_from_copy(model, extra_outputs: Sequence[str], options: dict[str, Any]) -> Session:
    """A session over the model written to a temporary folder, weights as external data beside
    it (mapped by onnxruntime); the folder goes when the session is made."""
    with tempfile.TemporaryDirectory(prefix="sparsec-") as folder:
        path = Path(folder) / "model.onnx"
        with _exposed(model, extra_outputs):
            ir.save(model.ir, str(path), external_data="model.onnx.data")
        model.release_mapped_weights()  # what the save read stays in the page cache only
        return Session(str(path), **options)


def _no_temporary_copy(error: OSError) -> str:
    return (
        f"cannot write the temporary copy of the model onnxruntime reads "
        f"(in {tempfile.gettempdir()}): {one_line(error)}; point TMPDIR at a folder with room"
    )


@contextlib.contextmanager
def _exposed(model, names: Sequence[str]):
    """Temporarily list the named intermediate values (or graph inputs) as graph outputs."""
    outputs = model.graph.outputs
    original = list(outputs)
    by_name = {v.name: v for v in model.graph.inputs} | {
        v.name: v for node in model.nodes() for v in node.outputs
    }
    outputs.extend(by_name[n] for n in names if n in by_name and by_name[n] not in original)
    try:
        yield
    finally:
        outputs.clear()
        outputs.extend(original)


def session_for_file(
    path: str | Path,
    *,
    optimization: str = "all",
    threads: int = 0,
    mapped: bool | None = None,
    arena: bool = True,
) -> Session:
    """A session over a model file (``mapped``, ``arena``: as ``session_for``'s); a file holding
    its weights in its protobuf goes to onnxruntime as a copy with external data
    (``_with_external_data``), or the file itself when that copy cannot be written."""
    mapped = is_large(path) if mapped is None else mapped
    options: dict[str, Any] = {"optimization": optimization, "threads": threads}
    options |= {"mapped": mapped, "arena": arena}
    try:
        with tempfile.TemporaryDirectory(prefix="sparsec-") as folder:
            source = _with_external_data(Path(path), Path(folder))
            try:
                return Session(str(source), **options)
            except InputError:
                if source == Path(path):
                    raise
    except OSError:  # no room (or no folder) for the copy: onnxruntime reads the file itself
        pass
    return Session(str(path), **options)  # onnxruntime's refusal, naming the user's file


def _with_external_data(path: Path, folder: Path) -> Path:
    """``path``, or, when its weights are inside its protobuf, a copy in ``folder`` with them as
    external data beside it, which onnxruntime maps instead of copying out of the protobuf
    (level "all": resnet18's session 135 -> 91..109 MB more peak RSS, its whole compress --channels
    0.5 run 368 -> 315 MB; the same graph, the same outputs), for files of ``EXTERNAL_COPY_BYTES``
    and more (5 MB models: within 4 MB either way). A file that cannot be read is left to
    onnxruntime to refuse."""
    if not path.is_file() or not EXTERNAL_COPY_BYTES <= path.stat().st_size <= PROTOBUF_LIMIT_BYTES:
        return path
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a readable model: onnxruntime will say so
        return path
    tensors = proto.graph.initializer
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors) or not any(
        len(t.raw_data) >= EXTERNAL_TENSOR_BYTES for t in tensors
    ):
        return path
    copy = folder / path.name
    onnx.save_model(
        proto,
        str(copy),
        save_as_external_data=True,
        location=copy.name + ".data",
        size_threshold=EXTERNAL_TENSOR_BYTES,
    )
    return copy


def is_large(source) -> bool:
    """Whether a ``Model`` (its weights) or a model file (with the external-data files beside it
    that it names) passes ``LARGE_MODEL_BYTES``."""
    if not isinstance(source, (str, Path)):
        return source.weight_bytes() > LARGE_MODEL_BYTES
    path = Path(source)
    size = path.stat().st_size if path.is_file() else 0
    if size > LARGE_MODEL_BYTES or not size:
        return size > LARGE_MODEL_BYTES
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a readable model: onnxruntime will say so
        return False
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    folder = path.parent
    return size + sum(_file_size(folder / name) for name in locations) > LARGE_MODEL_BYTES


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def runs(model, feeds: dict[str, np.ndarray]) -> bool:
    """Whether onnxruntime runs ``model`` (a ``Model``, or a model file's path) on ``feeds``,
    with graph optimizations off."""
    try:
        if isinstance(model, (str, Path)):
            session = session_for_file(model, optimization="disable")
        else:
            session = session_for(model, optimization="disable")
        session.run(feeds)
    except SparsecError:
        return False
    return True


def _expose(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    """Make intermediate values graph outputs (type left open so ORT reports what it computes)."""
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)


def _truncate(proto: onnx.ModelProto, names: Sequence[str], fed: Mapping[str, np.dtype]) -> None:
    """Make ``names`` the only graph outputs and drop the nodes none of them depends on (a node
    with subgraphs depends on every value its subgraphs read), a ``fed`` value counting as
    given: it becomes a graph input unless a node still needed computes it anyway."""
    graph = proto.graph
    del graph.output[:]
    _expose(proto, names)
    needed, unused, computed = set(names), [], set()
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if any(output in needed and output not in fed for output in node.output):
            needed.update(_reads(node))
            computed.update(node.output)
        else:
            unused.append(index)
    for index in unused:  # descending, so the indices left stay valid
        del graph.node[index]
    present = {value.name for value in graph.input}
    for name in sorted(needed & set(fed) - computed - present):
        graph.input.append(
            onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(fed[name])), None
            )
        )


def _reads(node: onnx.NodeProto) -> set[str]:
    """The values a node reads: its inputs and, through its subgraphs, every name they use."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        for subgraph in [attribute.g] * attribute.HasField("g") + list(attribute.graphs):
            for inner in subgraph.node:
                names |= _reads(inner)
    return names
