"""Where independent pieces of work run: here (in this process, or in local worker processes)
or on a Ray cluster. Where they run never changes what they compute.

An executor is named by text (``--executor``): ``local`` (the default), ``ray`` (the Ray
instance ``RAY_ADDRESS`` names, the one this process is already connected to, else a new local
one), ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT`` / ``auto`` (a cluster's address).

``start(executor, model, initializer, initargs, jobs=, tasks=)`` gives ``Workers`` (or None:
run in this process). Every worker first runs ``initializer(path, *initargs, threads)`` once,
``path`` being its own copy of ``model`` saved as ONNX (a local worker reads the file the driver
saved; a Ray worker writes the bytes the driver put once in Ray's object store), then
``Workers.map(function, tasks)`` yields ``function(task)`` for every task, in task order.
Functions are module-level and tasks, initargs and results plain data: they cross process and
machine boundaries (a Ray cluster's workers need sparsec installed).

``run_tasks(executor, function, tasks, after)`` runs stateless tasks: here one after another, or
as Ray tasks (one CPU each), task ``i`` started once the tasks ``after[i]`` are done; results come
back in task order either way.

Ray is an optional extra (``pip install 'sparsec[ray]'``), imported only when asked for.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sparsec.errors import InputError, UsageError, one_line

LOCAL, RAY = "local", "ray"
INSTALL = "--executor ray needs Ray (the ray extra): pip install 'sparsec[ray]'"
_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+$")
EXPECTED = "local, ray, ray://HOST:PORT or a Ray cluster's HOST:PORT (or auto)"
# what --executor's help says of its values (compress's target sweep, analyze --sensitivity)
WHERE_TEXT = (
    "local (this machine, --jobs processes) or ray (RAY_ADDRESS's cluster, else a new local Ray "
    "instance), ray://HOST:PORT or HOST:PORT: Ray actors (--jobs of them, default one per CPU; "
    "the result is the same; needs pip install 'sparsec[ray]')"
)
MODEL_FILE = "model.onnx"
CONNECT_S = 10  # how long a cluster's address may take to accept a connection
# Ray 2.5x starts clusters with token authentication, and a driver given an address does not
# read the token unless told to: what a failed connection to an address adds.
AUTH_HINT = (
    " (a cluster started with token authentication needs RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN "
    "when its token is not in ~/.ray/auth_token)"
)
CLOSE_S = 10  # how long Ray actors may take to remove their folders before being killed


@dataclass(frozen=True)
class Executor:
    """Parsed ``--executor`` text: ``local``, or Ray at ``address`` (None: ``ray.init()``'s
    own choice)."""

    kind: str = LOCAL
    address: str | None = None

    @property
    def remote(self) -> bool:
        return self.kind == RAY


def parse(text: str | Executor) -> Executor:
    """The executor ``text`` names; ``ValueError`` saying what is expected when it names none."""
    if isinstance(text, Executor):
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected {EXPECTED}, got {text!r}")
    if text == LOCAL:
        return Executor()
    if text == RAY:
        return Executor(RAY)
    if text == "auto" or _ADDRESS.match(text):
        return Executor(RAY, text)
    raise ValueError(f"expected {EXPECTED}, got {text!r}")


def require_ray():
    """The ``ray`` module, or a ``UsageError`` telling how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL) from None
    return ray


class Workers(Protocol):
    def map(self, function: Callable, tasks: Sequence) -> Iterator: ...

    def close(self) -> None: ...


def start(
    executor: str | Executor,
    model,
    initializer: Callable,
    initargs: Sequence,
    *,
    jobs: int,
    tasks: int,
) -> Workers | None:
    """Workers for ``tasks`` independent tasks (module docstring). Local: ``jobs`` spawned
    processes (at most ``tasks``), or None with one job or one task; Ray: ``jobs`` actors, or
    with one job as many as the cluster has CPUs, at most ``tasks`` (within a Ray task, such as
    a recipe's job on Ray: local, as actors waiting for CPUs the tasks hold could wait forever)."""
    executor = parse(executor)
    if executor.remote and not in_ray_task():
        return RayWorkers(executor.address, model, initializer, initargs, jobs, tasks)
    count = min(jobs, tasks)
    return LocalWorkers(model, initializer, initargs, count) if count > 1 else None


def in_ray_task() -> bool:
    """Whether this process is a Ray worker (running a task or an actor)."""
    ray = sys.modules.get("ray")
    return bool(
        ray is not None
        and ray.is_initialized()
        and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    )


def _save(model, folder: str) -> str:
    path = str(Path(folder) / MODEL_FILE)
    model.save(path)
    return path


class LocalWorkers:
    """Spawned worker processes (no inherited state) on this machine, each loading the model
    from one temporary file, the cores shared between them."""

    def __init__(self, model, initializer: Callable, initargs: Sequence, count: int) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="sparsec-workers-")
        threads = max(1, (os.cpu_count() or 1) // count)  # not oversubscribed
        self.pool = ProcessPoolExecutor(
            max_workers=count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=initializer,
            initargs=(_save(model, self.folder.name), *initargs, threads),
        )

    def map(self, function: Callable, tasks: Sequence) -> Iterator:
        return self.pool.map(function, tasks)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.folder.cleanup()


class RayWorkers:
    """Ray actors (one CPU each), each writing the model's files (put once in the object store)
    to its own temporary folder and initialized from there."""

    def __init__(
        self,
        address: str | None,
        model,
        initializer: Callable,
        initargs: Sequence,
        jobs: int,
        tasks: int,
    ) -> None:
        self.ray = connect(address)
        from ray.util import ActorPool

        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        count = max(1, min(tasks, jobs if jobs > 1 else cpus))
        with tempfile.TemporaryDirectory(prefix="sparsec-workers-") as folder:
            _save(model, folder)
            files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        shared = self.ray.put((files, initializer, tuple(initargs)))
        actor = self.ray.remote(num_cpus=1)(_RayWorker)
        self.actors = [actor.remote(shared) for _ in range(count)]
        self.pool = ActorPool(self.actors)

    def map(self, function: Callable, tasks: Sequence) -> Iterator:
        results = self.pool.map(lambda worker, task: worker.run.remote(function, task), list(tasks))
        return _unwrapped(self.ray, results)

    def close(self) -> None:
        """Each actor removes its folder (killed before, it left a copy of the model behind),
        then ends; an actor that does not answer within ``CLOSE_S`` is killed as it is."""
        with contextlib.suppress(Exception):
            self.ray.get([actor.close.remote() for actor in self.actors], timeout=CLOSE_S)
        for actor in self.actors:
            self.ray.kill(actor)


def _unwrapped(ray, results: Iterable) -> Iterator:
    """``results``, a task's exception raised as itself (not Ray's wrapper with its trace)."""
    try:
        yield from results
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


class _RayWorker:
    """One Ray actor: the model's files in its own folder, the initializer run once."""

    def __init__(self, shared: tuple) -> None:
        files, initializer, initargs = shared
        self.folder = tempfile.TemporaryDirectory(prefix="sparsec-ray-")
        for name, data in files.items():
            (Path(self.folder.name) / name).write_bytes(data)
        initializer(str(Path(self.folder.name) / MODEL_FILE), *initargs, 1)

    def run(self, function: Callable, task):
        return function(task)

    def close(self) -> None:
        self.folder.cleanup()


def connect(address: str | None):
    """``ray``, connected to ``address`` (None: ``ray.init()``'s choice) unless this process
    already is; an unreachable cluster is one ``InputError`` line."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    where = address or os.environ.get("RAY_ADDRESS")
    if where:
        _check_reachable(where)
    settings: dict = {"logging_level": logging.ERROR}  # Ray's INFO lines are not the user's
    if not where:
        settings.update(include_dashboard=False, log_to_driver=False)
    try:
        ray.init(address=address, **settings)
    except (Exception, SystemExit) as error:  # Ray raises several kinds, or exits
        hint = AUTH_HINT if where and "RAY_AUTH_MODE" not in os.environ else ""
        raise InputError(
            f"--executor: cannot start Ray at {where or 'a new local instance'}: "
            f"{one_line(error)}{hint}"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """An ``InputError`` line at once when nothing listens at ``address``'s HOST:PORT (Ray
    itself retries for minutes, then exits the process)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "auto": Ray finds it
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as error:
        raise InputError(
            f"--executor: cannot reach the Ray cluster at {address} ({one_line(error)}); start "
            "it (ray start --head) or give its address"
        ) from None


def run_tasks(
    executor: str | Executor,
    function: Callable,
    tasks: Sequence,
    after: Sequence[Sequence[int]] = (),
) -> Generator:
    """``function(task)`` per task, in task order (module docstring): locally in this process,
    one after another; on Ray each task once the earlier tasks ``after[i]`` names are done.
    Closing the iterator early cancels the Ray tasks not done yet."""
    executor = parse(executor)
    if not executor.remote:
        return (function(task) for task in tasks)
    ray = connect(executor.address)
    remote = ray.remote(num_cpus=1)(_call)
    refs: list = []
    for index, task in enumerate(tasks):
        waits = [refs[i] for i in (after[index] if index < len(after) else ())]
        refs.append(remote.remote(function, task, *waits))
    return _gathered(ray, refs)


def _call(function: Callable, task, *done):
    """A Ray task: ``function(task)``; ``done``: the results it waited for (unused)."""
    return function(task)


def _gathered(ray, refs: list) -> Generator:
    """The tasks' results in task order; closed early (or on a task's error), it cancels the tasks
    not done, never a done one: cancelling a task whose reply is on its way aborts Ray's driver
    ("Tried to complete task that was not pending", ray-project/ray#54798)."""
    done = 0
    try:
        for result in _unwrapped(ray, (ray.get(ref) for ref in refs)):
            done += 1
            yield result
    finally:
        if done < len(refs):
            with contextlib.suppress(Exception):  # a lost driver must not hide the task's error
                _, running = ray.wait(refs[done:], num_returns=len(refs) - done, timeout=0)
                for ref in running:
                    ray.cancel(ref)
