"""Writing a model so that its file and its external-data file switch as one.

Invariant: at every moment ``OUT`` is either the previous model, with the data file it reads, or
the complete new model, with its own; a save that fails or is interrupted (Ctrl-C, SIGTERM)
leaves no temp file. How:

1. ``staged`` writes everything inside a private temp folder beside ``OUT`` (``.OUT.<random>.tmp/``):
   the model and, with external data, its data file ``OUT.<8 hex digits>.data``, a name no file in
   the folder has. The new model never points at bytes the previous one reads.
2. ``Staged.commit`` writes the side files (report, plan) to temp files first, then commits, one
   save per folder at a time (an advisory lock on the folder, so two runs writing the
   same ``OUT`` leave the last one's pair) and with SIGINT/SIGTERM held back until it is done:
   move the data file out, replace ``OUT`` by the new model (``os.replace``, atomic), then remove
   the data files the previous ``OUT`` read that sparsec wrote for it (``OUT.<8 hex>.data`` in the
   same folder), never one the model being saved was loaded from.
3. The temp folder is removed on the way out, whatever happened; a temp path a signal cut off
   from its ``finally`` is removed at interpreter exit.

A process killed outright (SIGKILL, power loss) may leave the temp folder, never a broken pair.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Collection, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from sparsec.errors import InputError
from sparsec.ir.tensor_checks import iter_tensors

try:
    import fcntl
except ImportError:  # not POSIX: saves to one folder are not serialised
    fcntl = None  # type: ignore[assignment]


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_file_pattern(path: Path) -> re.Pattern:
    """Names of the external-data files sparsec writes for the model file ``path``."""
    return re.compile(re.escape(Path(path).name) + r"\.[0-9a-f]{8}\.data")


class Staged:
    """A model written into its temp folder, not yet in place: ``bytes`` is what ``commit``
    will put there (model + external data); ``side_files`` are written after it, with it."""

    def __init__(
        self, workdir: Path, path: Path, data_name: str | None, keep: Collection[Path]
    ) -> None:
        self.workdir, self.path, self.data_name, self.keep = workdir, path, data_name, keep
        data = workdir / data_name if data_name else None
        self.bytes = (workdir / path.name).stat().st_size + (
            data.stat().st_size if data and data.is_file() else 0
        )
        self.side_files: list[tuple[Path, str | bytes]] = []

    def sha256(self) -> str:
        """The sha256 of the model file as it will be put in place."""
        return file_sha256(self.workdir / self.path.name)

    def add_side_file(self, path: Path, text: str | bytes) -> None:
        """Write ``text`` (or bytes) to ``path`` with the model, at ``commit``."""
        self.side_files.append((Path(path), text))

    def commit(self) -> int:
        """Put the model and its data in place, then the side files; return the model's bytes.
        Every side file is written first (regular files to temp files beside them, streams
        through), so a side file that cannot be written leaves the model unwritten."""
        staged_sides: list[tuple[Path, Path]] = []  # (temp file, the path it replaces)
        try:
            for side, text in self.side_files:
                staged = _stage_text(side, text)
                if staged is not None:
                    staged_sides.append(staged)
            with _folder_lock(self.path.parent):
                stale = _stale_data_files(self.path, self.keep)
                with held_signals():
                    written = _commit(self.workdir, self.path, self.data_name)
                    _remove(stale)
                    for temp, target in staged_sides:
                        os.replace(temp, target)
                        _PENDING.discard(temp)
            return written
        finally:
            _remove([temp for temp, _ in staged_sides])


@contextlib.contextmanager
def staged(
    model: ir.Model,
    path: Path,
    *,
    external: bool,
    proto: onnx.ModelProto | None = None,
    keep: Collection[Path] = (),
) -> Iterator[Staged]:
    """The model written into a private temp folder beside ``path``; nothing is in place until
    ``commit``, and the temp folder goes when the block ends, committed or not. ``OSError``
    becomes one ``InputError`` line."""
    path = Path(path)
    try:
        with held_signals():  # created and registered as one step: a signal cannot fall between
            workdir = _pending(
                Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            )
        try:
            data_name = _fresh_data_name(path) if external else None
            _write(model, proto, workdir / path.name, data_name)
            yield Staged(workdir, path, data_name, keep)
        finally:
            _remove([workdir])
    except OSError as error:
        where = getattr(error, "filename", None) or path
        raise InputError(f"cannot write {where}: {error.strerror or error}") from None


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temp file beside it renamed over it; a stream
    is written through)."""
    staged = _stage_text(Path(path), text)
    if staged is not None:
        temp, target = staged
        with held_signals():
            os.replace(temp, target)
            _PENDING.discard(temp)


def _stage_text(path: Path, text: str | bytes) -> tuple[Path, Path] | None:
    """``text`` in a temp file, with the path to rename it over: beside ``path``, or beside
    the file a symbolic link ``path`` points to (so the link stays a link). A stream (a
    device, FIFO or socket, or a link into /proc like /dev/stdout, which may point
    at a regular file a rename would replace for everyone) is written through now: None."""
    temp = None
    try:
        if is_stream(path):
            _write_through(path, text)
            return None
        target = path.resolve() if path.is_symlink() else path
        with held_signals():
            fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            _pending(Path(temp))
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
        os.chmod(temp, 0o666 & ~_umask())
        return Path(temp), target
    except OSError as error:
        _remove([Path(temp)] if temp else [])
        raise InputError(
            f"cannot write {path}: {error.strerror or error} (nothing written)"
        ) from None


def is_stream(path: Path) -> bool:
    """Whether ``path`` is written through rather than replaced: it exists and is not a regular
    file (a device, FIFO or socket), or a link on the way to its file goes through /proc
    (``/dev/stdout`` -> ``/proc/self/fd/1``: a rename would replace the link, not write to the
    file it stands for). A regular file under /dev (``/dev/shm``) is a file like any other."""
    if path.exists() and not path.is_file():
        return True
    hop = Path(os.path.abspath(path))
    for _ in range(40):  # the links followed, as the kernel bounds them
        if str(hop).startswith("/proc/"):
            return True
        if not hop.is_symlink():
            return False
        hop = Path(os.path.abspath(hop.parent / os.readlink(hop)))
    return True  # a loop of links: nothing to rename over either


def _write_through(path: Path, text: str | bytes) -> None:
    """Write to a stream: this process's own stdout or stderr through ``sys`` (after what it
    printed before, never over it), anything else opened for appending (no truncation of a
    file a shell redirected it to)."""
    own = _own_stream(path)
    if own is not None:
        own.flush()
        own.buffer.write(text if isinstance(text, bytes) else text.encode())
        own.buffer.flush()
        return
    with open(path, "ab" if isinstance(text, bytes) else "a") as stream:
        stream.write(text)


def _own_stream(path: Path):
    """``sys.stdout`` or ``sys.stderr`` when ``path`` is the same file as that stream's, else None."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    for stream in (sys.stdout, sys.stderr):
        try:
            mine = os.fstat(stream.fileno())
        except (AttributeError, OSError, ValueError):  # a replaced or closed stream
            continue
        if (mine.st_dev, mine.st_ino) == (target.st_dev, target.st_ino) and hasattr(
            stream, "buffer"
        ):
            return stream
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fresh_data_name(path: Path) -> str:
    while True:
        name = f"{path.name}.{secrets.token_hex(4)}.data"
        if not os.path.lexists(path.parent / name):
            return name


def _write(
    model: ir.Model, proto: onnx.ModelProto | None, target: Path, data_name: str | None
) -> None:
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
    if (
        not candidates or not path.is_file() or path.is_symlink()
    ):  # a link's model reads beside its target
        return set()
    read = _external_locations(path)
    return {
        p
        for p in candidates
        if p.name in read
        and p.is_file()
        and not p.is_symlink()
        and not any(same_file(p, k) for k in keep)
    }


def _external_locations(path: Path) -> set[str]:
    """The external-data locations named anywhere in the model file ``path`` (empty when it does
    not parse: then nothing is removed)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # whatever the previous file was, only its own data may go
        return set()
    return {
        os.path.normpath(entry.value)
        for t in iter_tensors(proto)
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }


def _remove(paths: Collection[Path]) -> None:
    """Remove files or temp folders (signals held: a removal is not cut short) and forget them."""
    with held_signals():
        for path in paths:
            with contextlib.suppress(
                OSError
            ):  # already gone (a concurrent save) or not ours to remove
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            _PENDING.discard(path)


# Temp files and folders this process made and has not removed yet. A signal can land between
# a ``finally:`` and the removal inside it; what that leaves is removed when the process exits.
_PENDING: set[Path] = set()


def _pending(path: Path) -> Path:
    _PENDING.add(path)
    return path


@atexit.register
def _remove_pending() -> None:
    _remove(list(_PENDING))


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
            previous[signum] = signal.signal(
                signum, lambda received, _frame: pending.append(received)
            )
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for received in dict.fromkeys(pending):
            signal.raise_signal(received)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (resolved, or the same inode: a hard link)."""
    try:
        return a.resolve() == Path(b).resolve() or (
            a.exists() and Path(b).exists() and os.path.samefile(a, b)
        )
    except OSError:
        return False


def refuse_unwritable(path: Path, *, streams: bool = False) -> None:
    """Raise ``InputError`` unless ``path`` can be written: its folder exists and is writable,
    and, unless ``streams`` (a file written through, like a JSON report to /dev/stdout), it is
    not a device, FIFO or socket (a model is written to a temp file and renamed over its path,
    which would replace the node, not write through it)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist")
    if not streams and not path.is_dir() and is_stream(path):
        raise InputError(
            f"output path {path} is not a regular file (a device, FIFO, socket, or a link into "
            "/proc like /dev/stdout): give a file path"
        )
    if not os.access(path.parent, os.W_OK) and not (
        streams and path.exists() and os.access(path, os.W_OK)
    ):
        raise InputError(f"cannot write to folder {path.parent} (read-only or no permission)")
