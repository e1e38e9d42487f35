"""The fuzzing harness (sparsec.testing): a short fixed-seed run through all four modes, the
generator's promises (seeded, valid, any sub-list of blocks still valid, the op set covered,
each opset's op forms, the same channel groups at opsets 11 and 13),
the harness catching a broken pass, the minimizer, and every saved failing graph in
``tests/fuzz_regressions/`` (each must pass now; those listed in ``pending.txt`` are open bugs
in code this harness does not own, expected to fail until fixed: strict xfail)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.ir.cleanup import remove_unused
from sparsec.testing import fuzz
from sparsec.testing.fuzz import Failure, check_description, check_graph, fuzz_seeds, minimize
from sparsec.testing.graphs import BLOCKS, OPSETS, build, generate

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
PENDING = {
    line.split("#")[0].strip() for line in (REGRESSIONS / "pending.txt").read_text().splitlines()
} - {""}
SHORT_RUN_SEEDS = range(41, 61)  # 20 seeds that hold every op of COVERED and opsets 11 and 12


def test_short_fixed_seed_run_finds_no_failure(tmp_path):
    assert fuzz_seeds(SHORT_RUN_SEEDS, tmp_path) == {}


COVERED = "Conv MatMul Gemm Softmax LayerNormalization BatchNormalization Concat Split Slice Gather Add Mul"
COVERED += " Reshape Flatten Transpose Squeeze Unsqueeze Resize MaxPool AveragePool GlobalAveragePool If Loop"


def test_short_run_prunes_and_covers_the_op_set(tmp_path):
    """The short run is not vacuous: its graphs hold the ops the axis rules cover, --channels
    and --heads really remove weights from several of them, and no valid graph is refused."""
    ops = {node.op_type for seed in SHORT_RUN_SEEDS for node in build(generate(seed)).graph.node}
    assert set(COVERED.split()) <= ops
    shrunk, refusals = Counter(), []
    for seed in range(8):
        check_description(generate(seed), tmp_path / str(seed), ("channels", "heads"), refusals)
        for mode in ("channels", "heads"):
            report = json.loads((tmp_path / str(seed) / f"{mode}.json").read_text())
            shrunk[mode] += report["params_after"] < report["params_before"]
    assert shrunk["channels"] >= 4 and shrunk["heads"] >= 1 and refusals == []


def test_short_run_holds_graphs_of_the_old_opsets():
    assert {generate(seed)["opset"] for seed in SHORT_RUN_SEEDS} >= {11, 12, 13}


@pytest.mark.parametrize("opset", OPSETS)
def test_every_opset_writes_its_own_op_forms(opset):
    """At any opset every graph (QDQ included) is valid and runs; before opset 13, axes and
    split sizes are attributes and DequantizeLinear is per tensor."""
    for seed in range(12):
        model = build(generate(seed, qdq=True, opset=opset))
        onnx.checker.check_model(model, full_check=True)
        fuzz.run_model(model, fuzz.feeds_for(model))
        if opset < 13:
            _assert_opset_11_forms(model)


def test_opset_11_forms_make_the_channel_groups_opset_13_makes():
    """A graph written at opset 11 and at 13 has the same channel groups once dead code is gone
    (dead values may keep unknown shapes: ONNX inference has no data propagation through
    Shape-1): an axis rule that read only the opset-13 form would make a barrier at 11, which
    no exit code or oracle shows."""
    for seed in range(24):
        groups = []
        for opset in (11, 13):
            model = Model.from_proto(build(generate(seed, opset=opset)))
            remove_unused(model)
            analysis = find_channel_groups(model)
            groups.append(
                sorted((g.reason is None, g.units, len(g.sizes)) for g in analysis.groups)
            )
        assert groups[0] == groups[1], seed


def _assert_opset_11_forms(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        attrs = {a.name for a in node.attribute}
        if node.op_type in ("Squeeze", "Unsqueeze", "Split", "ReduceSum"):
            assert len(node.input) == 1, node
        assert not (node.op_type == "DequantizeLinear" and "axis" in attrs), node


def test_generator_is_seeded_and_every_block_kind_is_reachable():
    assert generate(7) == generate(7) and generate(7) != generate(8)
    assert build(generate(7)).SerializeToString() == build(generate(7)).SerializeToString()
    seen = {block["op"] for seed in range(300) for block in generate(seed, qdq=True)["blocks"]}
    assert seen == set(BLOCKS)


def test_any_sub_list_of_blocks_builds_a_valid_graph():
    """What the minimizer relies on: dropping blocks never makes an invalid model."""
    rng = np.random.default_rng(0)
    for seed in range(40):
        graph = generate(seed)
        keep = [block for block in graph["blocks"] if rng.random() < 0.5]
        model = build({**graph, "blocks": keep})
        onnx.checker.check_model(model, full_check=True)
        fuzz.run_model(model, fuzz.feeds_for(model))


def test_harness_reports_a_broken_oracle_reference(tmp_path, monkeypatch):
    """With the oracle's masking switched off, --channels runs fail validation (exit 1), and
    the harness reports that as a failure of its class."""
    monkeypatch.setattr(
        "sparsec.pruning.surgery.apply_masks", lambda model, masks, plain=False: None
    )
    failures = check_description(generate(3), tmp_path, modes=("channels",))
    assert [f.kind for f in failures] == ["exit-1"] and "oracle" in failures[0].line


def test_harness_reports_an_internal_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("conv_12")

    monkeypatch.setattr("sparsec.passes.sparsity.WeightSparsityPass.call", broken)
    failures = check_description(generate(3), tmp_path, modes=("nm", "cleanup"))
    assert [(f.mode, f.kind) for f in failures] == [("nm", "exit-3")]
    assert failures[0].key == "nm:exit-3:pass '?' failed: KeyError: '?'"


def test_harness_reports_a_changed_input_and_files_left_behind(tmp_path, monkeypatch):
    """A fake CLI that writes its output but also a temp file, or touches the input."""

    def fake(args, stray: bool):
        source, output = Path(args[1]), Path(args[3])
        output.write_bytes(source.read_bytes())
        if stray:
            (source.parent / "out.onnx.tmp").write_bytes(b"")
        else:
            source.write_bytes(source.read_bytes() + b" ")
        return 0, "", ""

    monkeypatch.setattr(fuzz, "run_cli", lambda args: fake(args, stray=True))
    assert [f.kind for f in check_graph(build(generate(3)), tmp_path / "a", ("nm",))] == [
        "leftover"
    ]
    monkeypatch.setattr(fuzz, "run_cli", lambda args: fake(args, stray=False))
    kinds = [f.kind for f in check_graph(build(generate(3)), tmp_path / "b", ("nm",))]
    assert kinds == ["input-changed"]


def test_invalid_input_is_the_generators_fault_not_sparsecs(tmp_path):
    model = build(generate(3))
    model.graph.node[0].input[0] = "missing"
    assert [f.kind for f in check_graph(model, tmp_path)] == ["invalid-input"]


def test_failure_class_blanks_names_and_numbers():
    a = Failure("channels", "exit-1", "output 'add_7' differs by 0.25, above 1e-4")
    b = Failure("channels", "exit-1", "output 'mul_12' differs by 3, above 2e-05")
    assert a.key == b.key != Failure("heads", "exit-1", a.line).key


def test_minimizer_keeps_only_the_blocks_the_failure_needs():
    """A fake checker that fails while an attention and a LayerNorm block are both present:
    delta debugging keeps exactly those two (in order) and simplifies the graph settings."""
    graph = {**generate(5), "weights": "mixed", "batch": "symbolic"}
    graph["blocks"] = (
        [{"op": "act", "seed": i} for i in range(6)]
        + [{"op": "layernorm", "seed": 6}]
        + [{"op": "mlp", "seed": 7}, {"op": "attention", "seed": 8}, {"op": "act", "seed": 9}]
    )
    failure = Failure("heads", "exit-3", "boom")
    calls = []

    def check(candidate, mode):
        calls.append(mode)
        ops = [block["op"] for block in candidate["blocks"]]
        return [failure] if "layernorm" in ops and "attention" in ops else []

    small = minimize(graph, failure, check)
    assert [block["op"] for block in small["blocks"]] == ["layernorm", "attention"]
    assert (small["weights"], small["batch"]) == ("initializer", "1") and set(calls) == {"heads"}


def _regressions() -> list:
    params = []
    for path in sorted(REGRESSIONS.glob("*.onnx")):
        marks = (
            [pytest.mark.xfail(strict=True, reason="open bug, listed in pending.txt")]
            if path.name in PENDING
            else []
        )
        params.append(pytest.param(path, marks=marks, id=path.stem))
    return params


def test_pending_list_names_existing_files():
    assert {path.name for path in REGRESSIONS.glob("*.onnx")} >= PENDING


@pytest.mark.parametrize("path", _regressions())
def test_saved_failing_graph_now_passes(path, tmp_path):
    meta = json.loads(path.with_suffix(".json").read_text())
    modes = tuple(mode for mode in meta["mode"].split(",") if mode in fuzz.MODES) or tuple(
        fuzz.MODES
    )
    if meta["failure"]["kind"] == "crash":  # it killed the process once: check it in another one
        code = (
            f"import onnx; from sparsec.testing.fuzz import check_graph; "
            f"print(check_graph(onnx.load({str(path)!r}), {str(tmp_path)!r}, {modes!r}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
        )
        assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr[-500:]
    else:
        assert check_graph(onnx.load(path), tmp_path, modes=modes) == []
