"""Block reconstruction (sparsec.pruning.reconstruct): the ONNX->torch translation equals
onnxruntime on real regions, a fit lowers the block error with zeros and shapes kept, the
oracle still holds, a seed makes it deterministic, and without torch ``--recover block`` is one
line telling how to install it."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsec.analysis.activations import capture, load_calibration
from sparsec.errors import UsageError
from sparsec.ir import Model
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.passes.sparsity import WeightSparsityPass
from sparsec.pruning.reconstruct import reconstruct as recon
from sparsec.pruning.reconstruct.regions import cut_chain, find_regions
from sparsec.pruning.reconstruct.torch_ops import unsupported
from sparsec.pruning.recovery import output_error
from sparsec.testing import assert_pass_exact

MODELS = Path(__file__).resolve().parents[1] / "models"
CALIB = MODELS / "digits_calib.npz"


def _samples(model, count: int = 32) -> dict:
    return load_calibration(str(CALIB), model, count, 0)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit"])
def test_translation_equals_onnxruntime(name):
    torch = pytest.importorskip("torch")
    from sparsec.pruning.reconstruct.translate import TorchRegion

    model = Model.load(MODELS / f"{name}.onnx")
    regions = find_regions(model, cut_chain(model), lambda value: True)
    assert len(regions) >= 4 and all(not unsupported(r.nodes) for r in regions)
    names = sorted({n for r in regions for n in [*r.externals, r.exit]})
    batch = next(capture(model, _samples(model), names, 16))
    for region in regions:
        with torch.no_grad():
            feeds = {n: torch.from_numpy(batch[n]) for n in region.externals}
            got = TorchRegion(model, region, torch).forward(feeds).numpy()
        want = batch[region.exit]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), region.exit


def test_untranslatable_op_is_listed_not_raised():
    class Node:
        op_type, domain = "NonMaxSuppression", ""

    assert unsupported([Node()]) == ["no torch mapping for NonMaxSuppression"]


def _sparse_vit(recover, seed: int = 0):
    """digits_vit at 2:4 (wanda, layer refit) then ``recover``: the checked ``PassResult``."""
    original = Model.load(MODELS / "digits_vit.onnx")
    pass_ = WeightSparsityPass(
        nm="2:4", score="wanda", calibration=str(CALIB), calibration_samples=64, seed=seed
    )
    pass_.recover = recover
    return assert_pass_exact(pass_, original)


def test_block_lowers_error_keeps_zeros_and_shapes(monkeypatch):
    pytest.importorskip("torch")
    from sparsec.pruning.reconstruct import result as result_module

    monkeypatch.setattr(recon, "STEPS", 40)
    monkeypatch.setattr(recon, "AUGMENT", 2)
    refit, real = {}, result_module.reconstruct

    def spy(model, original, samples, **options):  # the layer refit's values, the fit's report
        refit.update({n: model.constant(v).copy() for n, v in model.initializers().items()})
        refit["report"] = real(model, original, samples, **options)
        refit["fitted"] = dict(refit["report"]["arrays"])  # emptied when the fit is put back
        return refit["report"]

    monkeypatch.setattr(result_module, "reconstruct", spy)
    block = _sparse_vit("block")  # assert_pass_exact: the oracle holds after reconstruction
    report, arrays = refit.pop("report"), refit.pop("fitted")
    fitted = [row for row in report["regions"] if row["held_after"] < row["held_before"]]
    assert fitted and all(row["error_after"] < row["error_before"] for row in fitted)
    assert "block reconstruction" in " ".join(d.message for d in block.diagnostics)
    assert arrays and (report["arrays"] or "reverted" in report)  # kept, or put back
    for name, new in arrays.items():
        old = refit[name]
        assert old.shape == new.shape and old.dtype == new.dtype
        if (old == 0).mean() >= 0.5:
            assert np.all(new[old == 0] == 0), name  # N:M zeros stay zero
    for name, value in block.model.initializers().items():
        kept = report["arrays"].get(name, refit[name])
        np.testing.assert_array_equal(block.model.constant(value), kept)


def test_seed_makes_it_deterministic(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(recon, "STEPS", 20)
    monkeypatch.setattr(recon, "AUGMENT", 2)
    runs = [_sparse_vit("block") for _ in range(2)]
    reports = [run.artifacts["reconstruction"] for run in runs]  # kept even when put back
    assert reports[0]["regions"] and reports[0]["held_error_block"] > 0
    untimed = [
        [{k: v for k, v in row.items() if k != "seconds"} for row in r["regions"]] for r in reports
    ]
    assert untimed[0] == untimed[1]  # every region's errors, bit for bit
    assert reports[0]["held_error_block"] == reports[1]["held_error_block"]
    other = _sparse_vit("block", seed=1).artifacts["reconstruction"]["regions"]
    assert [row["held_after"] for row in other] != [row["held_after"] for row in untimed[0]]
    first, second = (run.artifacts["refit"]["arrays"] for run in runs)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_block_without_torch_is_one_line(monkeypatch, cli, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'sparsec\[reconstruct\]'"):
        recon.require_torch()
    code, _, err = cli(
        "compress",
        MODELS / "digits_cnn.onnx",
        "-o",
        tmp_path / "out.onnx",
        "--channels",
        "0.5",
        "--calibration",
        CALIB,
        "--recover",
        "block",
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "sparsec[reconstruct]" in lines[0], err


def test_a_fit_that_raises_the_model_error_is_put_back(monkeypatch):
    """When the block fit leaves the whole model's error on the held-out samples above the layer
    refit's (as it did after dropped blocks), the refit's values stay and the report says so."""
    pytest.importorskip("torch")
    from sparsec.pruning.reconstruct import result as result_module

    refit = {}

    def harmful(model, original, samples, **options):  # a fit that scrambles one weight
        values = model.values_by_name()
        refit.update({n: model.constant(v).copy() for n, v in model.initializers().items()})
        name = next(n for n in model.initializers() if model.constant(values[n]).ndim == 2)
        model.set_constant(values[name], model.constant(values[name]) * -3.0)
        return {"regions": [{"fitted": True}], "skipped": [], "arrays": {name: None}}

    monkeypatch.setattr(result_module, "reconstruct", harmful)
    block = _sparse_vit("block")  # assert_pass_exact: the oracle holds with the refit kept
    report = block.artifacts["reconstruction"]
    assert (
        report["reverted"] > report["held_error_layer"]
        and block.stats["regions_reconstructed"] == 0
    )
    line = " ".join(d.message for d in block.diagnostics)
    assert f"raised the held-out error to {report['reverted']:.4g}, so the layer refit" in line
    for name, value in block.model.initializers().items():
        np.testing.assert_array_equal(block.model.constant(value), refit[name])


def test_kept_positions_pick_the_plan_list_the_data_match():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((8, 6, 5)).astype(np.float32)
    right, wrong = [0, 2, 3], [1, 4, 5]
    mine = dense[:, right] + 0.01 * rng.standard_normal((8, 3, 5)).astype(np.float32)
    entries = [{"axis": 0, "size": 6, "kept": wrong}, {"axis": 0, "size": 6, "kept": right}]
    plan = {"initializers": {"a": entries[:1], "b": entries[1:], "c": [dict(size=9, kept=[0])]}}
    axis, kept = recon.kept_positions(mine, dense, plan)
    assert axis == 1 and kept.tolist() == right
    only_wrong = {"initializers": {"a": entries[:1]}}
    assert recon.kept_positions(mine, dense, only_wrong) is None  # no list fits the data
    assert recon.kept_positions(mine, dense, None) is None
    assert recon.kept_positions(mine[:, :, :2], dense, plan) is None  # two axes differ


def test_augmented_copies_are_noisy_samples():
    rng = np.random.default_rng(1)
    images = {"x": rng.uniform(size=(10, 3)).astype(np.float32)}
    more = recon.augmented(images, 3, seed=0)["x"]
    assert more.shape == (40, 3) and more.dtype == np.float32
    np.testing.assert_array_equal(more[:10], images["x"])
    noise = more[10:].reshape(3, 10, 3) - images["x"]
    spread = noise.std(axis=(0, 1)) / images["x"].std(axis=0)
    assert np.all((spread > 0.5 * recon.NOISE) & (spread < 2 * recon.NOISE))
    assert recon.augmented(images, 0, seed=0) is images


def test_token_copies_swap_kept_ids_for_the_inputs_own():
    """Copies of token inputs: only kept positions (mask not 0) of integer inputs change, to
    ids of that input's kept positions, about ``SWAP`` of them; the mask, an input of one id
    and float inputs are repeated; the same seed gives the same copies, another seed others."""
    samples = _tokens(64, 0)
    samples["input_ids"] += 100 * samples["attention_mask"]  # kept ids 100..149, padding 0
    samples["token_type_ids"] = np.zeros_like(samples["input_ids"])
    samples["scale"] = np.ones((64, 2), np.float32)
    more = recon.augmented(samples, 3, seed=0, mask="attention_mask")
    for name in ("attention_mask", "token_type_ids", "scale"):
        np.testing.assert_array_equal(more[name], np.concatenate([samples[name]] * 4))
    ids, kept = samples["input_ids"], samples["attention_mask"] != 0
    copies = more["input_ids"].reshape(4, *ids.shape)
    np.testing.assert_array_equal(copies[0], ids)
    changed = copies[1:] != ids
    assert not changed[:, ~kept].any()  # padding stays padding
    assert abs(changed[:, kept].mean() - recon.SWAP) < 0.05
    assert set(copies[1:][changed].tolist()) <= set(ids[kept].tolist())
    again = recon.augmented(samples, 3, seed=0, mask="attention_mask")["input_ids"]
    np.testing.assert_array_equal(again, more["input_ids"])
    other = recon.augmented(samples, 3, seed=1, mask="attention_mask")["input_ids"]
    assert (other != more["input_ids"]).any()
    unmasked = recon.augmented({"ids": ids + 100}, 2, seed=0)["ids"].reshape(3, *ids.shape)
    assert (unmasked[1:] != ids + 100)[:, ~kept].any()  # no mask: every position may change


def test_channel_cut_regions_end_inside_and_held_out_error_falls(monkeypatch):
    """At --channels 0.5 every feature map is cut: regions still end at the cut values (their
    target the original's kept channels), then the whole network is refined; the error against
    the dense model on samples the fit never saw is lower than the layer refit's, and the
    oracle holds (assert_pass_exact)."""
    pytest.importorskip("torch")
    monkeypatch.setattr(recon, "STEPS", 100)
    monkeypatch.setattr(recon, "WHOLE_STEPS", 300)
    monkeypatch.setattr(recon, "AUGMENT", 4)
    original = Model.load(MODELS / "digits_cnn.onnx")
    held_out = {"input": np.load(MODELS / "digits_test.npz")["input"][:128]}

    def cut(recover):
        pass_ = ChannelPrunePass(
            ratio=0.5, importance="activation", calibration=str(CALIB), recover=recover
        )
        return assert_pass_exact(pass_, original)

    layer, block = cut("layer"), cut("block")
    regions = block.artifacts["reconstruction"]["regions"]
    inside = [row for row in regions if row["exit"] != "logits"]
    assert len(inside) >= 3 and sum(row["fitted"] for row in inside) >= 2
    assert any(row["entry"] == "input" and row["exit"] == "logits" for row in regions)
    assert output_error(block.model, original, held_out) < output_error(
        layer.model, original, held_out
    )


def _bert_cut(recover, samples, tmp_path):
    """models/blocks/bert_like.onnx at --heads 0.5 --ffn 0.5 (activation importance) then
    ``recover``: the checked ``PassResult``."""
    path = tmp_path / "calibration.npz"
    np.savez(path, **samples)
    pass_ = ChannelPrunePass(
        ratio=0.0, heads=0.5, ffn=0.5, importance="activation", calibration=str(path)
    )
    pass_.recover = recover
    return assert_pass_exact(pass_, Model.load(MODELS / "blocks" / "bert_like.onnx"))


def _tokens(count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mask = (np.arange(12) < rng.integers(4, 13, (count, 1))).astype(np.int64)
    return {"input_ids": rng.integers(0, 50, (count, 12)) * mask, "attention_mask": mask}


def test_head_cut_is_fitted_on_samples_the_refit_did_not_see(monkeypatch, tmp_path):
    """A head and FFN cut: the layer refit fits its calibration samples (on MiniLM 0.12 output
    error on them, 0.27 on others), so held-out batches it had seen rejected every block fit
    (0 regions fitted here, as on MiniLM). The held-out samples are kept out of the cut: the
    fit is stopped on samples neither fit saw, regions are fitted, and on fresh samples the
    error is below the layer refit's."""
    pytest.importorskip("torch")
    monkeypatch.setattr(recon, "PLAIN_STEPS", 300)
    from sparsec.pruning.reconstruct import result as result_module

    seen, real = [], result_module.reconstruct

    def spy(model, original, samples, **options):
        seen.append((samples, options["held"]))
        return real(model, original, samples, **options)

    monkeypatch.setattr(result_module, "reconstruct", spy)
    samples, fresh = _tokens(32, 0), _tokens(128, 1)  # 32: before, no region was fitted
    layer, block = _bert_cut(True, samples, tmp_path), _bert_cut("block", samples, tmp_path)
    fitted, held = seen[0]
    assert len(held["input_ids"]) == 4 and len(fitted["input_ids"]) == 28
    assert block.stats["regions_reconstructed"] >= 3
    original = Model.load(MODELS / "blocks" / "bert_like.onnx")
    assert output_error(block.model, original, fresh) < output_error(layer.model, original, fresh)


@pytest.mark.parametrize(
    "count, block, held_rows",
    [
        (0, 1, None),  # nothing to split
        (1, 1, None),  # one sample: both parts are it
        (2, 1, [1]),
        (16, 1, [7, 15]),
        (16, 4, [12, 13, 14, 15]),  # a fixed batch of 4: the last whole batch held out
        (64, 4, [28, 29, 30, 31, 60, 61, 62, 63]),  # every 8th batch of 4
        (7, 4, None),  # one whole batch only
    ],
)
def test_held_out_samples_are_whole_batches_of_a_fixed_one(count, block, held_rows):
    samples = {"x": np.arange(count, dtype=np.float32)}
    seen, held = recon.held_out(samples, block)
    if held_rows is None:
        assert seen is samples and held is samples
        return
    assert held["x"].tolist() == held_rows
    assert sorted(seen["x"].tolist() + held["x"].tolist()) == list(range(count))


def test_token_inputs_take_the_plain_rate_float_inputs_the_other():
    tokens = {"ids": np.zeros((4, 3), np.int64), "mask": np.ones((4, 3), np.int64)}
    images = {"x": np.zeros((4, 3), np.float32)}
    assert not recon.float_inputs(tokens) and recon.float_inputs(images)


def _mlp(batch, tokens: bool = False) -> Model:
    """x [batch, 8] -> MatMul 8x8 -> Relu -> MatMul 8x4 (seeded); with ``tokens``, x is the
    rows of a 16x8 table picked by int64 ids [batch, 8]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    data, shape = ("ids", [batch, 8]) if tokens else ("x", [batch, 8])
    output = [batch, 8, 4] if tokens else [batch, 4]
    if tokens:
        table = rng.normal(size=(16, 8)).astype(np.float32)
        weights.append(numpy_helper.from_array(table, "table"))
        nodes.insert(0, helper.make_node("Gather", ["table", "ids"], ["x"]))
    kind = TensorProto.INT64 if tokens else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(data, kind, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output)],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return Model.from_proto(proto)


def _block_sparsity(model: Model, samples: int, tmp_path) -> list[str]:
    """The recover.block lines of unstructured sparsity 0.5 (wanda) with block recovery on
    ``samples`` seeded calibration rows (ids below 16 for a model fed ``ids``)."""
    calibration = tmp_path / "calib.npz"
    rng = np.random.default_rng(1)
    if model.graph.inputs[0].name == "ids":
        np.savez(calibration, ids=rng.integers(0, 16, size=(samples, 8)))
    else:
        np.savez(calibration, x=rng.normal(size=(samples, 8)).astype(np.float32))
    sparsity = WeightSparsityPass(ratio=0.5, score="wanda", calibration=str(calibration))
    sparsity.recover = "block"
    return [d.message for d in sparsity(model).diagnostics if d.code == "recover.block"]


def test_block_recovery_of_a_fixed_batch_model_holds_out_whole_batches(tmp_path):
    """A model whose batch is fixed at 4, 16 calibration samples: the cut runs on whole batches
    and the block fit on the held-out batch (holding out every 8th sample left 2, fewer than
    one batch: an error)."""
    lines = _block_sparsity(_mlp(4), 16, tmp_path)
    assert lines and "on held-out samples" in lines[0]


def test_one_calibration_sample_says_nothing_was_held_out(tmp_path):
    lines = _block_sparsity(_mlp("N"), 1, tmp_path)
    assert lines and "too few calibration samples to hold any out" in lines[0]


def test_final_stage_fits_the_whole_chain_and_lowers_the_output_error(monkeypatch):
    """At 2:4 every region ends at a full-shape value, so the per-region fits each match their
    block and errors compound; the final stage fits one region from the data input to the
    output, and on samples no fit saw the output error falls below the per-region result's
    (0.077 -> 0.044 here)."""
    pytest.importorskip("torch")
    monkeypatch.setattr(recon, "STEPS", 40)
    monkeypatch.setattr(recon, "AUGMENT", 2)
    monkeypatch.setattr(recon, "FINAL_STEPS", 300)
    monkeypatch.setattr(recon, "FINAL_RATE", 1e-4)  # few steps: a faster rate than MiniLM's
    original = Model.load(MODELS / "digits_vit.onnx")
    fresh = {"input": np.load(MODELS / "digits_test.npz")["input"][:256]}
    with_final = _sparse_vit("block")
    monkeypatch.setattr(recon, "FINAL_STEPS", 0)
    without = _sparse_vit("block")
    regions = with_final.artifacts["reconstruction"]["regions"]
    chain = cut_chain(original)
    last = regions[-1]
    assert (last["entry"], last["exit"]) == (chain[0], chain[-1]) and last["fitted"]
    assert len(regions) == len(without.artifacts["reconstruction"]["regions"]) + 1
    assert last["held_after"] < last["held_before"]
    assert output_error(with_final.model, original, fresh) < output_error(
        without.model, original, fresh
    )


@pytest.mark.parametrize("tokens", [False, True])
def test_float_fits_decay_their_rate_to_zero_token_fits_keep_it(monkeypatch, tmp_path, tokens):
    """With float inputs each fit's Adam rate falls from its start along a cosine to 0 over the
    step budget; with token ids it stays at the plain rate (the MiniLM figures were measured so)."""
    torch = pytest.importorskip("torch")
    rates: list[float] = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    for budget in ("STEPS", "PLAIN_STEPS"):
        monkeypatch.setattr(recon, budget, 60)
    monkeypatch.setattr(recon, "FINAL_STEPS", 0)
    monkeypatch.setattr(recon, "PATIENCE", 10**6)  # every fit runs its whole budget
    lines = _block_sparsity(_mlp("N", tokens=tokens), 64, tmp_path)
    assert lines and len(rates) % 60 == 0 and rates
    first = rates[:60]
    if tokens:
        assert set(rates) == {recon.PLAIN_LEARNING_RATE}
    else:
        assert first[0] == recon.LEARNING_RATE and first[-1] < 0.01 * recon.LEARNING_RATE
        assert all(later <= earlier for earlier, later in itertools.pairwise(first))
