"""Writing a model so that its file and its external-data file switch as one.

Invariant: at every moment ``OUT`` is either the previous model, with the data file it reads, or
the complete new model, with its own; a save that fails or is interrupted (Ctrl-C, SIGTERM)
leaves no temp file. How:

1. Everything is written inside a private temp folder beside ``OUT`` (``.OUT.<random>.tmp/``):
   the model and, with external data, its data file ``OUT.<8 hex digits>.data``, a name no file in
   the folder has. The new model never points at bytes the previous one reads.
2. Commit, one save per folder at a time (an advisory lock on the folder, so two runs writing the
   same ``OUT`` leave the last one's pair) and with SIGINT/SIGTERM held back until it is done:
   move the data file out, replace ``OUT`` by the new model (``os.replace``, atomic), then remove
   the data files the previous ``OUT`` read that sparsec wrote for it (``OUT.<8 hex>.data`` in the
   same folder), never one the model being saved was loaded from.
3. The temp folder is removed on the way out, whatever happened.

A process killed outright (SIGKILL, power loss) may leave the temp folder, never a broken pair.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Collection, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from sparsec.errors import InputError

try:
    import fcntl
except ImportError:  # not POSIX: saves to one folder are not serialised
    fcntl = None


def data_file_pattern(path: Path) -> re.Pattern:
    """Names of the external-data files sparsec writes for the model file ``path``."""
    return re.compile(re.escape(Path(path).name) + r"\.[0-9a-f]{8}\.data")


def save(model: ir.Model, path: Path, *, external: bool, proto: onnx.ModelProto | None = None,
         keep: Collection[Path] = ()) -> int:
    """Write ``model`` (or ``proto``, a finished ModelProto without external data) to ``path`` as
    described above; return the bytes written (model + external data). ``keep``: files never
    removed (those the model was loaded from). Raises ``InputError`` when the folder refuses."""
    path = Path(path)
    try:
        workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            data_name = _fresh_data_name(path) if external else None
            _write(model, proto, workdir / path.name, data_name)
            with _folder_lock(path.parent):
                stale = _stale_data_files(path, keep)
                with held_signals():
                    written = _commit(workdir, path, data_name)
                    _remove(stale)
                    shutil.rmtree(workdir, ignore_errors=True)
            return written
        finally:
            with held_signals():
                shutil.rmtree(workdir, ignore_errors=True)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None


def _fresh_data_name(path: Path) -> str:
    while True:
        name = f"{path.name}.{secrets.token_hex(4)}.data"
        if not os.path.lexists(path.parent / name):
            return name


def _write(model: ir.Model, proto: onnx.ModelProto | None, target: Path, data_name: str | None) -> None:
    if proto is not None:
        onnx.save_model(proto, str(target))
    else:
        ir.save(model, str(target), external_data=data_name)


def _commit(workdir: Path, path: Path, data_name: str | None) -> int:
    """Move the data file (if one was written) and then the model out of ``workdir``; return
    their bytes. Call with signals held: the two renames must both happen or neither."""
    model_file = workdir / path.name
    written = model_file.stat().st_size
    data = workdir / data_name if data_name else None
    if data is None or not data.is_file() or data.stat().st_size == 0:  # no weight went to it
        data = None
    moved = None
    if data is not None:
        written += data.stat().st_size
        moved = path.parent / data.name
        if os.path.lexists(moved):  # another process took the name meanwhile (not a sparsec save)
            raise FileExistsError(f"{moved} appeared while writing; try again")
        os.rename(data, moved)
    try:
        os.replace(model_file, path)
    except BaseException:
        if moved is not None:
            moved.unlink(missing_ok=True)
        raise
    return written


def _stale_data_files(path: Path, keep: Collection[Path]) -> set[Path]:
    """The data files the current ``path`` reads that sparsec wrote for it and may go once it is
    replaced: named by ``data_file_pattern``, regular files in the same folder, not in ``keep``."""
    pattern = data_file_pattern(path)
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:  # a folder we may write but not list: remove nothing
        return set()
    if not candidates or not path.is_file() or path.is_symlink():  # a link's model reads beside its target
        return set()
    read = _external_locations(path)
    return {p for p in candidates if p.name in read and p.is_file() and not p.is_symlink()
            and not any(_same_file(p, k) for k in keep)}


def _external_locations(path: Path) -> set[str]:
    """The external-data locations named anywhere in the model file ``path`` (empty when it does
    not parse: then nothing is removed)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - whatever the previous file was, only its own data may go
        return set()
    tensors = [*_graph_tensors(proto.graph)]
    for function in proto.functions:
        tensors.extend(t for node in function.node for t in _node_tensors(node))
    return {os.path.normpath(entry.value) for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
            for entry in t.external_data if entry.key == "location"}


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        single = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for tensor in [*attribute.sparse_tensors, *single]:
            yield from (tensor.values, tensor.indices)
        for graph in [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]:
            yield from _graph_tensors(graph)


def _remove(files: Collection[Path]) -> None:
    for file in files:
        with contextlib.suppress(OSError):  # already gone (a concurrent save) or not ours to remove
            file.unlink()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (best effort: unlocked where unsupported)."""
    fd = None
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are delivered when it ends, to whatever
    handler was in place (a no-op outside the main thread, where Python runs no handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler not set from Python; leave it
            previous[signum] = signal.signal(signum, lambda received, _frame: pending.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:
        return False
