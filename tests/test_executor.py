"""The Ray executor (``sparsec.executor``), on a local Ray instance the test starts: a
``--target-macs`` sweep measured in Ray actors gives the local executor's sensitivity table and
allocation; ``sparsec run --executor ray`` runs a recipe's jobs as Ray tasks (a job after the one
writing its source) with the local run's models and figures; without Ray, ``--executor ray`` is
one line with the install command; the option's values and combinations are checked before any
work."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import MODELS

from sparsec import executor, jobs
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.pruning import budget
from sparsec.spec import load_recipe

ray = pytest.importorskip("ray")

CNN, CALIBRATION = MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz"
TARGET = {"target_macs": 0.7}


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of two CPUs for this module (the executor connects to it)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 2**20,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cnn() -> Model:
    return Model.load(CNN)


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return {"input": np.load(CALIBRATION)["input"][:48]}


def _points(table) -> dict[tuple[int, float], tuple]:
    return {
        (g.id, p.ratio): (p.error, p.stderr, p.macs, p.params, p.units.tolist())
        for g in table.groups
        for p in g.points
    }


def test_a_ray_sweep_gives_the_local_table_and_allocation(ray_instance, cnn, samples):
    local, chosen = budget.sweep_allocation(cnn, samples, TARGET, seed=3)
    remote, picked = budget.sweep_allocation(cnn, samples, TARGET, seed=3, executor="ray")
    assert picked == chosen and any(chosen.values())
    assert _points(remote).keys() == _points(local).keys() and len(_points(local)) > 3
    for key, (error, stderr, *counts) in _points(local).items():
        other = _points(remote)[key]
        assert other[2:] == tuple(counts), key  # the same units removed and costs
        assert other[:2] == pytest.approx((error, stderr), rel=1e-6, abs=1e-12), key
    assert remote.text().splitlines()[1:] == local.text().splitlines()[1:]  # after the timing


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


def test_a_recipe_on_ray_runs_its_jobs_as_tasks_with_the_local_results(
    ray_instance, cli, tmp_path, monkeypatch
):
    """Run locally, job "target" measures its sweep in Ray actors; run on Ray, in its task (no
    actors inside tasks): the same model either way."""
    runs = {}
    for where in ("local", "ray"):
        folder = tmp_path / where
        folder.mkdir()
        (folder / "r.toml").write_text(RECIPE.format(cnn=CNN, calibration=CALIBRATION))
        monkeypatch.chdir(folder)  # the Ray tasks work in the driver's folder
        code, _, err = cli("run", "r.toml", "--report", "run.json", "--executor", where)
        assert code == 0, err
        runs[where] = json.loads((folder / "run.json").read_text())
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
