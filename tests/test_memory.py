"""Memory mechanisms: one onnxruntime session alive at a time, a masked reference freed before
its session runs, mapped weights whose pages leave the process, large models mapped by
onnxruntime, evaluation batches bounded by bytes; and (slow) the peak RSS of a whole run on a
generated model past 2 GB."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sparsec import api
from sparsec import evaluate as evaluate_module
from sparsec.ir import Model, runtime, spill
from sparsec.ir.spill import Spill
from sparsec.passes import Pipeline
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.pruning.oracle_gate import run_oracle
from sparsec.validate import validate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from memory import write_big_model  # noqa: E402  (the benchmark's seeded generator)

WIDTH = 256


@pytest.fixture
def chain(tmp_path) -> Path:
    """Three seeded Gemm+Relu layers of width 256, weights in an external-data file."""
    path = tmp_path / "chain.onnx"
    write_big_model(path, layers=3, width=WIDTH)
    return path


@pytest.fixture
def feeds() -> dict:
    return {"x": np.random.default_rng(0).standard_normal((1, WIDTH)).astype(np.float32)}


class Tracked(runtime.Session):
    """A session that records how many sessions are alive whenever one runs, and calls a
    probe before each run."""

    alive: ClassVar[weakref.WeakSet] = weakref.WeakSet()
    most = 0
    probe = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        Tracked.alive.add(self)

    def run(self, *args, **kwargs):
        Tracked.most = max(Tracked.most, len(Tracked.alive))
        if Tracked.probe is not None:
            Tracked.probe()
        return super().run(*args, **kwargs)


@pytest.fixture
def tracked(monkeypatch):
    monkeypatch.setattr(runtime, "Session", Tracked)
    Tracked.alive, Tracked.most, Tracked.probe = weakref.WeakSet(), 0, None
    return Tracked


def test_validation_runs_one_session_at_a_time(chain, feeds, tracked):
    verdict = validate(Model.load(chain), Model.load(chain), feeds, latency_runs=0)
    assert verdict.passed and tracked.most == 1


def test_small_models_are_timed_interleaved_large_ones_alone(chain, feeds, tracked, monkeypatch):
    verdict = validate(chain, Model.load(chain), feeds, latency_runs=3)
    assert verdict.passed and tracked.most == 2 and verdict.latency_ms_candidate is not None
    monkeypatch.setattr(runtime, "LARGE_MODEL_BYTES", 0)
    tracked.most = 0
    verdict = validate(chain, Model.load(chain), feeds, latency_runs=3)
    assert verdict.passed and tracked.most == 1 and verdict.latency_ms_reference is not None


def test_a_built_reference_is_freed_before_its_session_runs(chain, feeds, tracked):
    """Its graph, which holds the weights (a web of cycles), not only its wrapper: freed by the
    collection that follows its session's creation, with automatic collection off."""
    built: list = []
    freed: list[bool] = []

    def build():
        model = Model.load(chain)
        built.append(weakref.ref(model.ir.graph))
        return model

    gc.disable()
    try:
        tracked.probe = lambda: freed.append(built[0]() is None)
        assert validate(build, Model.load(chain), feeds, latency_runs=0).passed
    finally:
        gc.enable()
    assert freed[0] is True


def test_the_oracle_takes_the_pass_s_reference_builder(chain, feeds, tracked):
    model = Model.load(chain)
    model.input_shapes = {"x": (1, WIDTH)}
    result = Pipeline([ChannelPrunePass(ratio=0.5)])(model)
    assert result.modified and result.reference is not None
    oracle = run_oracle(result.reference, result.model, feeds, "random")
    assert oracle.passed and tracked.most == 1


def _resident_kb(data_file: Path) -> int:
    """Resident KB of this process's mappings of ``data_file`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].endswith(":"):  # a mapping's header line
            inside = line.rstrip().endswith(str(data_file))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_released_weights_leave_the_process_and_stay_readable(chain):
    model = Model.load(chain)
    weight = model.initializers()["W0"]
    before = model.constant(weight).copy()
    assert _resident_kb(chain.with_name("chain.onnx.data")) > 0
    assert model.release_mapped_weights() >= 1
    assert _resident_kb(chain.with_name("chain.onnx.data")) == 0
    assert np.array_equal(model.constant(weight), before)


def test_a_replaced_mapped_weight_is_released(chain):
    model = Model.load(chain)
    weight = model.initializers()["W1"]
    mapped = weight.const_value
    model.resize_initializer(weight, model.constant(weight)[: WIDTH // 2].copy())
    assert mapped.raw is not None and _resident_kb(chain.with_name("chain.onnx.data")) == 0


def test_a_file_is_large_by_its_external_data_too(chain, monkeypatch):
    monkeypatch.setattr(runtime, "LARGE_MODEL_BYTES", chain.stat().st_size + 1)
    assert runtime.is_large(chain) and runtime.is_large(Model.load(chain))
    monkeypatch.setattr(runtime, "LARGE_MODEL_BYTES", 1 << 40)
    assert not runtime.is_large(chain)


def test_a_mapped_session_computes_the_same_to_rounding(chain, feeds):
    plain = runtime.Session(str(chain)).run(feeds)["y"]
    mapped = runtime.Session(str(chain), mapped=True).run(feeds)["y"]  # unpacked Gemm kernels
    np.testing.assert_allclose(mapped, plain, rtol=1e-5, atol=1e-6)


def test_a_model_s_session_maps_its_weights_from_a_file_and_computes_what_its_bytes_do(
    chain, feeds, monkeypatch
):
    model = Model.from_proto(onnx.load(str(chain)))  # weights in memory, no external data
    expected = runtime.Session(model.to_proto().SerializeToString()).run(feeds)["y"]
    sources = []
    monkeypatch.setattr(runtime, "Session", lambda source, **kw: sources.append(source))
    runtime.session_for(model)
    assert isinstance(sources[0], str) and sources[0].endswith(".onnx")  # a file, not bytes
    monkeypatch.undo()
    for arena in (True, False):  # untimed sessions go without the arena: the same outputs
        got = runtime.session_for(model, arena=arena).run(feeds)["y"]
        np.testing.assert_array_equal(got, expected)


def test_a_file_with_weights_inside_runs_from_a_copy_with_external_data(
    chain, feeds, tmp_path, monkeypatch
):
    inside = tmp_path / "inside.onnx"
    onnx.save_model(onnx.load(str(chain)), str(inside))  # the weights in the protobuf
    expected = runtime.Session(str(inside)).run(feeds)["y"]
    monkeypatch.setattr(runtime, "EXTERNAL_COPY_BYTES", 0)
    seen, plain = [], runtime.Session

    def session(source, **options):
        seen.append((source, onnx.load(source, load_external_data=False).graph.initializer[0]))
        return plain(source, **options)

    monkeypatch.setattr(runtime, "Session", session)
    got = runtime.session_for_file(inside).run(feeds)["y"]
    assert seen[0][1].data_location == onnx.TensorProto.EXTERNAL  # mapped by onnxruntime
    np.testing.assert_array_equal(got, expected)
    runtime.session_for_file(chain)  # external data already: the file itself
    assert seen[1][0] == str(chain)


def test_evaluation_replays_the_reference_of_a_large_model_or_small_outputs(
    chain, tracked, monkeypatch
):
    data = evaluate_module.random_eval_data(Model.load(chain), seed=0)
    monkeypatch.setattr(evaluate_module, "EVAL_RECORD_BYTES", 0)  # outputs too big to keep
    both = evaluate_module.evaluate(chain, Model.load(chain), data, batch_size=8)
    assert tracked.most == 2
    for record, large in ((1 << 24, 1 << 40), (0, 0)):  # small outputs kept; a large model
        monkeypatch.setattr(evaluate_module, "EVAL_RECORD_BYTES", record)
        monkeypatch.setattr(runtime, "LARGE_MODEL_BYTES", large)
        tracked.most = 0
        alone = evaluate_module.evaluate(chain, Model.load(chain), data, batch_size=8)
        assert tracked.most == 1 and alone.to_json() == both.to_json()


def test_evaluation_batches_are_bounded_by_input_bytes():
    images = {"x": np.zeros((64, 3, 224, 224), np.float32)}
    assert evaluate_module._bounded_batch(images) == 1
    assert evaluate_module._bounded_batch({"x": np.zeros((256, 64), np.float32)}) == 64


def test_a_spilled_array_reads_back_and_its_file_goes_with_the_spill():
    array = np.random.default_rng(0).standard_normal((300, 7)).astype(np.float32)
    with Spill.temporary() as store:
        first, second = store.tensor(array, "a"), store.tensor(array[::2], "b")
        np.testing.assert_array_equal(first.numpy(), array)
        np.testing.assert_array_equal(second.numpy(), array[::2])
        folder = store.folder
    assert not folder.exists()


def test_a_spilling_model_and_its_copies_map_their_new_weights(chain, monkeypatch):
    monkeypatch.setattr(spill, "MIN_BYTES", 0)
    model = Model.load(chain)
    with model.spilling(0):
        copy = model.copy()
        weight = copy.initializers()["W0"]
        copy.resize_initializer(weight, copy.constant(weight)[:10].copy())
        assert isinstance(weight.const_value, ir.ExternalTensor)
        assert weight.const_value.base_dir == copy.spill.folder
    assert model.spill is None


def test_a_spilled_compression_writes_the_same_weights(chain, tmp_path, monkeypatch):
    passes = [ChannelPrunePass(ratio=0.5)]
    api.compress(chain, tmp_path / "plain.onnx", pipeline=passes, latency_runs=0)
    monkeypatch.setattr(spill, "MIN_BYTES", 0)
    monkeypatch.setattr(runtime, "LARGE_MODEL_BYTES", 0)
    passes = [ChannelPrunePass(ratio=0.5)]
    result = api.compress(chain, tmp_path / "spilled.onnx", pipeline=passes, latency_runs=0)
    assert result.oracle is not None and result.oracle.passed
    plain, spilled = Model.load(tmp_path / "plain.onnx"), Model.load(tmp_path / "spilled.onnx")
    for name, value in plain.initializers().items():
        np.testing.assert_array_equal(
            spilled.constant(spilled.initializers()[name]), plain.constant(value)
        )


# --- slow: a generated model past 2 GB, whole run, in a child process ----------------------

RUN_AND_REPORT_PEAK = """
import json, resource, sys
from sparsec.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.slow
def test_a_model_past_2gb_compresses_within_its_memory_bound(tmp_path):
    path = tmp_path / "big.onnx"
    weight_bytes = write_big_model(path)
    assert weight_bytes > 2 * 1024**3
    out = tmp_path / "out.onnx"
    command = [sys.executable, "-c", RUN_AND_REPORT_PEAK, "compress", str(path), "-o", str(out)]
    done = subprocess.run(
        [*command, "--channels", "0.5", "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["code"] == 0, done.stderr
    peak = figures["peak_kb"] * 1024
    assert peak <= 1.2 * weight_bytes + 300 * 2**20, f"peak {peak / 2**20:.0f} MB"
