"""The Ray executor (``sparsec.executor``), on a local Ray instance the test starts: a
``--target-macs`` sweep measured in Ray actors gives the local executor's sensitivity table and
allocation; ``sparsec run --executor ray`` runs a recipe's jobs as Ray tasks (a job after the one
writing its source) with the local run's models and figures; without Ray, ``--executor ray`` is
one line with the install command; the option's values and combinations are checked before any
work.

Invariant: Ray never runs in pytest's process. The Ray instance is a child process's (its own
process group, stopped at the module's end or when pytest dies), and every Ray driver is a child
process connecting to it by address: a Ray crash fails a test, it cannot end pytest, and no Ray
state (signal handlers, threads) outlives the module."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS

from sparsec import executor, jobs
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.pruning import budget
from sparsec.spec import load_recipe

CNN, CALIBRATION = MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz"
TARGET = {"target_macs": 0.7}
START_S, STOP_S, DRIVER_S = 120, 60, 300  # the Ray instance's start and stop, a driver's run

HEAD = """
import sys, ray
context = ray.init(
    num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False
)
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()  # until the test module closes it (or pytest ends)
ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> dict[str, str]:
    """A local Ray instance of two CPUs, started by a child process: the environment a driver
    connects with (``RAY_ADDRESS`` and the instance's own token, nothing written to ~/.ray)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed: pip install 'sparsec[ray]'")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with log.open("w") as stderr:
        head = subprocess.Popen(
            [sys.executable, "-c", HEAD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True,
            start_new_session=True,  # its own process group: _stop kills what outlives it
        )  # fmt: skip
    try:
        ready, _, _ = select.select([head.stdout], [], [], START_S)
        address = head.stdout.readline().strip() if ready else ""
        assert address, f"the Ray instance did not start:\n{log.read_text()[-3000:]}"
        yield {**env, "RAY_ADDRESS": address}
    finally:
        _stop(head)


def _stop(head: subprocess.Popen) -> None:
    """Close the Ray instance's stdin (it shuts Ray down and exits), then kill what is left of
    its process group (a crashed or hung instance leaves Ray's agents)."""
    head.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(STOP_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait()


def _in_child(env: dict[str, str], function, *args):
    """``function(*args)`` in a spawned process with the environment ``env``: a Ray driver's
    crash there is a ``BrokenProcessPool`` here, a hang ends it after ``DRIVER_S``."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, context, initializer=_child_setup, initargs=(env,)) as pool:
        return pool.submit(function, *args).result()


def _child_setup(env: dict[str, str]) -> None:
    os.environ.update(env)  # before Ray is imported: it reads its settings then
    signal.alarm(DRIVER_S)


def _sparsec(env: dict[str, str], folder, *args) -> subprocess.CompletedProcess:
    """The ``sparsec`` command in a child process working in ``folder``."""
    command = [sys.executable, "-m", "sparsec.entry", *map(str, args)]
    return subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=DRIVER_S, check=False
    )


@pytest.fixture(scope="module")
def cnn() -> Model:
    return Model.load(CNN)


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return _samples()


def _samples() -> dict[str, np.ndarray]:
    return {"input": np.load(CALIBRATION)["input"][:48]}


def _points(table) -> dict[tuple[int, float], tuple]:
    return {
        (g.id, p.ratio): (p.error, p.stderr, p.macs, p.params, p.units.tolist())
        for g in table.groups
        for p in g.points
    }


def test_a_ray_sweep_gives_the_local_table_and_allocation(ray_head, cnn, samples):
    local, chosen = budget.sweep_allocation(cnn, samples, TARGET, seed=3)
    folders = set(Path(tempfile.gettempdir()).glob("sparsec-ray-*"))
    remote, picked, text = _in_child(ray_head, _ray_sweep, ray_head["RAY_ADDRESS"])
    left = set(Path(tempfile.gettempdir()).glob("sparsec-ray-*")) - folders
    assert not left, "each Ray worker removes its copy of the model"
    assert picked == chosen and any(chosen.values())
    assert remote.keys() == _points(local).keys() and len(remote) > 3
    for key, (error, stderr, *counts) in _points(local).items():
        assert remote[key][2:] == tuple(counts), key  # the same units removed and costs
        assert remote[key][:2] == pytest.approx((error, stderr), rel=1e-6, abs=1e-12), key
    assert text.splitlines()[1:] == local.text().splitlines()[1:]  # after the timing


def _ray_sweep(address: str) -> tuple:
    """In a child process: the sweep measured on the Ray cluster at ``address`` (HOST:PORT), as
    plain data (its points, allocation and text)."""
    table, chosen = budget.sweep_allocation(
        Model.load(CNN), _samples(), TARGET, seed=3, executor=address
    )
    return _points(table), chosen, table.text()


def _weights(model: Model) -> dict[str, np.ndarray]:
    return {name: model.constant(v) for name, v in model.initializers().items()}


def test_without_ray_the_executor_is_one_line_with_the_install_command(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` raises ImportError
    code, _, err = cli(
        "compress", CNN, "-o", tmp_path / "x.onnx", "--target-macs", "0.7",
        "--calibration", CALIBRATION, "--executor", "ray",
    )  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "pip install 'sparsec[ray]'" in lines[0] and "Traceback" not in err
    assert len(lines) == 1 and not (tmp_path / "x.onnx").exists()
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(cnn=CNN, calibration=CALIBRATION))
    code, _, err = cli("run", recipe, "--executor", "ray")
    assert code == 2 and err.count("\n") == 1 and "pip install 'sparsec[ray]'" in err, err
    assert not (tmp_path / "half.onnx").exists()


def test_run_refuses_an_unknown_executor(cli, tmp_path):
    code, _, err = cli("run", tmp_path / "r.toml", "--executor", "ray:/x")
    assert code == 2 and "expected local, ray" in err, err


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--executor", "nowhere", "--target-macs", "0.7"), "expected local, ray"),
        (("--executor", "ray://no-port", "--target-macs", "0.7"), "ray://HOST:PORT"),
        (("--executor", "ray", "--channels", "0.5"), "--executor runs a --target-macs"),
    ],
)
def test_bad_executor_values_and_combinations_are_usage_errors(cli, tmp_path, flags, expected):
    code, _, err = cli(
        "compress", CNN, "-o", tmp_path / "x.onnx", "--calibration", CALIBRATION, *flags
    )
    assert code == 2 and expected in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "text, kind, address",
    [
        ("local", "local", None),
        ("ray", "ray", None),
        ("ray://10.0.0.2:10001", "ray", "ray://10.0.0.2:10001"),
        ("10.0.0.2:6379", "ray", "10.0.0.2:6379"),
        ("auto", "ray", "auto"),
    ],
)
def test_executor_texts(text, kind, address):
    assert executor.parse(text) == executor.Executor(kind, address)


def test_a_recipe_key_is_checked_like_the_flag(tmp_path, cli):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[defaults]\nexecutor = 3\n[[job]]\nname = "a"\nsource = "{CNN}"\noutput = "a.onnx"\n'
        "target_macs = 0.7\n"
    )
    code, _, err = cli("run", recipe)
    assert code == 2 and "job 'a': executor: expected local, ray" in err, err


RECIPE = """
[defaults]
source = "{cnn}"

[[job]]
name = "half"
output = "half.onnx"
channels = 0.5

[[job]]
name = "target"
output = "target.onnx"
target_macs = 0.7
calibration = "{calibration}"
calibration_samples = 32
executor = "ray"

[[job]]
name = "again"
source = "half.onnx"
output = "again.onnx"
"""


def test_a_recipe_on_ray_runs_its_jobs_as_tasks_with_the_local_results(ray_head, tmp_path):
    """Run locally, job "target" measures its sweep in Ray actors (on ``RAY_ADDRESS``'s
    cluster); run on Ray, in its task (no actors inside tasks): the same model either way."""
    runs = {}
    for name, where in (("local", "local"), ("ray", ray_head["RAY_ADDRESS"])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "r.toml").write_text(RECIPE.format(cnn=CNN, calibration=CALIBRATION))
        flags = ("--report", "run.json", "--executor", where)
        done = _sparsec(ray_head, folder, "run", "r.toml", *flags)  # tasks work in its folder
        assert done.returncode == 0, done.stderr
        runs[name] = json.loads((folder / "run.json").read_text())
    names = [[job["name"] for job in runs[w]["jobs"]] for w in ("local", "ray")]
    assert names[0] == names[1] == ["half", "target", "again"]  # recipe order
    for job in ("half", "target", "again"):
        local, remote = (Model.load(tmp_path / w / f"{job}.onnx") for w in ("local", "ray"))
        weights, got = _weights(local), _weights(remote)
        assert got.keys() == weights.keys(), job
        for name, array in weights.items():
            np.testing.assert_array_equal(got[name], array, f"{job} {name}")
    for local, remote in zip(runs["local"]["jobs"], runs["ray"]["jobs"]):
        assert _figures(remote) == _figures(local)


def _figures(job: dict) -> dict:
    """The job's name, status and counts (not its timings)."""
    counts = ("nodes", "params", "macs", "bytes")
    return {k: v for k, v in job.items() if k in ("name", "status") or k.startswith(counts)}


def test_a_job_waits_for_the_jobs_writing_what_it_reads(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(cnn=CNN, calibration=CALIBRATION))
    assert jobs._writers_before(load_recipe(recipe)) == [[], [], [0]]


def test_an_address_nothing_listens_at_is_one_line_at_once():
    with pytest.raises(InputError, match=r"cannot reach the Ray cluster at ray://127\.0\.0\.1:1 "):
        executor._check_reachable("ray://127.0.0.1:1")  # port 1: refused


def test_a_refused_connection_to_an_address_names_token_authentication(monkeypatch):
    """Ray 2.5x clusters use token authentication, which a driver given an address only uses
    when told: the one error line says how (a stand-in for ray, none in this process)."""

    class Refusing:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**_settings):
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(executor, "require_ray", lambda: Refusing)
    monkeypatch.setattr(executor, "_check_reachable", lambda address: None)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(InputError, match="RAY_AUTH_MODE=token") as caught:
        executor.connect("10.0.0.1:6379")
    assert "\n" not in str(caught.value)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set already: the hint would not help
    with pytest.raises(InputError) as caught:
        executor.connect("10.0.0.1:6379")
    assert "RAY_AUTH_MODE" not in str(caught.value)
