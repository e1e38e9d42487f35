"""Channel plans (``sparsec.pruning.plans``): version 2's sources, torch axes and group ratios on
the bundled models and on a MatMul-exported MLP, version 1 still read, ``--plan-in`` of a
version 2 plan repeating the cut exactly, the refit weights written beside the plan, every
module a weight the exporter deduplicated reaches (``also``), root-module parameters; and, with
torch, the documented recipe (``examples/apply_plan_torch.py``) pruning the PyTorch module to
the pruned ONNX model's outputs and parameter count, also with a deduplicated BatchNorm bias
and a ViT-like model's ``cls``/``pos``."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, prune, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.passes.cleanup import IdentityEliminationPass
from sparsec.pruning.plans import plan_files, refit_path, state_key

ROOT = Path(__file__).resolve().parents[1]
SOURCE_KEYS = {"node", "op_type", "input", "scope", "module", "param", "layout", "is_parameter"}
SOURCE_KEYS |= {"also"}


def _plan(path, **options) -> dict:
    return prune(path, ratio=0.5, **options)[1].artifacts["plan"]


def test_a_version_2_plan_says_where_each_cut_constant_comes_from():
    plan = _plan(MODELS / "digits_cnn.onnx")
    assert plan["version"] == 2 and set(plan["sources"]) == set(plan["initializers"])
    assert all(set(s) == SOURCE_KEYS for s in plan["sources"].values())
    assert plan["sources"]["se.reduce.weight"] == {
        "node": "/se/reduce/Conv",
        "op_type": "Conv",
        "input": 1,
        "scope": "/se/reduce",
        "module": "se.reduce",
        "param": "weight",
        "layout": "same",
        "is_parameter": True,
        "also": [],
    }
    stats = plan["sources"]["stem_bn.running_var"]
    assert (stats["op_type"], stats["input"], stats["module"], stats["param"]) == (
        "BatchNormalization",
        4,
        "stem_bn",
        "running_var",
    )
    for entries in plan["initializers"].values():  # Conv and norms keep torch's axes
        assert all(entry["torch_axis"] == entry["axis"] for entry in entries)


def test_the_dynamo_exporter_s_scope_comes_from_the_node_metadata():
    plan = _plan(MODELS / "digits_cnn_dynamo.onnx")
    source = plan["sources"]["se.reduce.weight"]
    assert source["node"] == "node_conv2d_5"  # no scope in the name: it is in name_scopes
    assert (source["scope"], source["module"], source["param"]) == (
        "/se/se.reduce",
        "se.reduce",
        "weight",
    )


def test_a_version_2_plan_gives_each_group_cut_its_ratio():
    plan = _plan(MODELS / "digits_mlp.onnx")
    assert plan["groups"] and plan["sources"]["fc1.weight"]["layout"] == "same"
    members = {f"{n}[axis {e['axis']}]" for n, es in plan["initializers"].items() for e in es}
    for group in plan["groups"]:
        assert 0 < group["removed"] < group["units"]
        assert group["ratio"] == pytest.approx(group["removed"] / group["units"])
        assert set(group["members"]) <= members
    assert {m for g in plan["groups"] for m in g["members"]} == members


def _matmul_mlp() -> Model:
    """The legacy PyTorch export of Linear(8, 6) -> ReLU -> Linear(6, 3) as MatMul: transposed
    weights named onnx::MatMul_*, biases named as parameters, added by a node of the scope."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in [
            ("onnx::MatMul_7", (8, 6)),
            ("fc1.bias", (6,)),
            ("onnx::MatMul_8", (6, 3)),
            ("out.bias", (3,)),
        ]
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["h0"], name="/fc1/MatMul"),
        helper.make_node("Add", ["fc1.bias", "h0"], ["h1"], name="/fc1/Add"),
        helper.make_node("Relu", ["h1"], ["h2"], name="/Relu"),
        helper.make_node("MatMul", ["h2", "onnx::MatMul_8"], ["h3"], name="/out/MatMul"),
        helper.make_node("Add", ["out.bias", "h3"], ["y"], name="/out/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    return Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_matmul_weight_is_torch_transposed_so_its_torch_axis_is_the_other():
    plan = _plan(_matmul_mlp())
    weight = plan["sources"]["onnx::MatMul_7"]
    assert (weight["module"], weight["param"], weight["layout"], weight["is_parameter"]) == (
        "fc1",
        "weight",
        "transposed",
        False,
    )
    assert [(e["axis"], e["torch_axis"]) for e in plan["initializers"]["onnx::MatMul_7"]] == [
        (1, 0)
    ]
    assert [(e["axis"], e["torch_axis"]) for e in plan["initializers"]["onnx::MatMul_8"]] == [
        (0, 1)
    ]
    assert plan["sources"]["fc1.bias"]["module"] == "fc1"


def _graph(nodes, inits: dict[str, tuple], x: list[int], y: list[int]) -> Model:
    """A float graph x -> y of ``nodes`` with seeded random initializers ``inits`` (shapes)."""
    rng = np.random.default_rng(0)
    arrays = [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, shape).astype(np.float32), name)
        for name, shape in inits.items()
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        arrays,
    )
    return Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _batch_norm(name: str, inp: str, out: str, bias: str):
    """The legacy exporter's BatchNormalization node of module ``name``, its bias ``bias``."""
    return helper.make_node(
        "BatchNormalization",
        [inp, f"{name}.weight", bias, f"{name}.running_mean", f"{name}.running_var"],
        [out],
        name=f"/{name}/BatchNormalization",
    )


def _shared_bias_cnn() -> Model:
    """Two Conv-BN branches added, as the legacy exporter writes two BatchNorms whose biases
    are equal: one initializer, ``bn2.bias = Identity(bn1.bias)``."""
    bn = _batch_norm
    nodes = [
        helper.make_node("Identity", ["bn1.bias"], ["bn2.bias"], name="Identity_0"),
        helper.make_node("Conv", ["x", "a.weight"], ["a"], name="/a/Conv"),
        bn("bn1", "a", "n1", "bn1.bias"),
        helper.make_node("Conv", ["x", "b.weight"], ["b"], name="/b/Conv"),
        bn("bn2", "b", "n2", "bn2.bias"),
        helper.make_node("Add", ["n1", "n2"], ["s"], name="/Add"),
        helper.make_node("Conv", ["s", "c.weight"], ["y"], name="/c/Conv"),
    ]
    inits = {"a.weight": (6, 4, 1, 1), "b.weight": (6, 4, 1, 1), "c.weight": (2, 6, 1, 1)}
    for name in ("bn1", "bn2"):
        inits |= {f"{name}.{p}": (6,) for p in ("weight", "running_mean", "running_var")}
    return _graph(nodes, inits | {"bn1.bias": (6,)}, [1, 4, 3, 3], [1, 2, 3, 3])


@pytest.mark.parametrize("eliminated", [False, True], ids=["identity", "identity-eliminated"])
def test_a_weight_the_exporter_shared_names_every_module_it_reaches(eliminated):
    model = _shared_bias_cnn()
    if eliminated:  # as sparsec compress does before pruning: both BatchNorms read bn1.bias
        IdentityEliminationPass()(model)
    plan = _plan(model)
    source = plan["sources"]["bn1.bias"]
    assert (source["module"], source["param"], source["is_parameter"]) == ("bn1", "bias", True)
    ((also,),) = [source["also"]]
    assert (also["module"], also["param"], also["layout"], also["torch_axes"]) == (
        "bn2",
        "bias",
        "same",
        [0],
    )
    assert also["node"] == "/bn2/BatchNormalization" and also["is_parameter"] != eliminated
    assert plan["sources"]["bn2.weight"]["also"] == []  # its own weight: no one else's


def _root_parameter_mlp() -> Model:
    """Tokens [1, 5, 3] -> a Linear patch embedding (MatMul + Add) -> + ``pos`` (a parameter
    of the root module) -> Relu -> a Linear head whose weight the exporter named ``val_7``."""
    nodes = [
        helper.make_node("MatMul", ["x", "onnx::MatMul_1"], ["p0"], name="/patch/MatMul"),
        helper.make_node("Add", ["patch.bias", "p0"], ["p1"], name="/patch/Add"),
        helper.make_node("Add", ["p1", "pos"], ["t"], name="/Add"),
        helper.make_node("Relu", ["t"], ["r"], name="/Relu"),
        helper.make_node("MatMul", ["r", "val_7"], ["y"], name="/head/MatMul"),
    ]
    inits = {"onnx::MatMul_1": (3, 8), "patch.bias": (8,), "pos": (1, 5, 8), "val_7": (8, 2)}
    return _graph(nodes, inits, [1, 5, 3], [1, 5, 2])


def test_a_root_parameter_is_a_parameter_of_the_root_module_with_its_own_axes():
    plan = _plan(_root_parameter_mlp())
    pos = plan["sources"]["pos"]
    assert (pos["module"], pos["param"], pos["layout"], pos["is_parameter"]) == (
        "",
        "pos",
        "same",
        True,
    )
    assert [(e["axis"], e["torch_axis"]) for e in plan["initializers"]["pos"]] == [(2, 2)]
    head = plan["sources"]["val_7"]  # read as a layer's weight inside a module: not the root's
    assert (head["module"], head["param"], head["layout"], head["is_parameter"]) == (
        "head",
        "weight",
        "transposed",
        False,
    )
    assert [(e["axis"], e["torch_axis"]) for e in plan["initializers"]["val_7"]] == [(0, 1)]


def test_a_state_dict_key_names_a_module_path_and_a_parameter():
    assert state_key("cls") == ("", "cls")
    assert state_key("layer1.0.conv1.weight") == ("layer1.0.conv1", "weight")
    assert state_key("0.weight") == ("0", "weight")  # a root nn.Sequential's child
    assert state_key("fc.weight_quantized") == ("fc", "weight")
    for name in ("onnx::MatMul_7", "/Constant_output_0", "layer1.0", "1x", ""):
        assert state_key(name) is None, name


def _compress(cli, tmp_path, model, *args, name="out"):
    out = tmp_path / f"{name}.onnx"
    code, _, stderr = cli("compress", model, "-o", out, *args)
    assert code == 0, stderr
    return out


def _initializers(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _same_weights(a, b) -> bool:
    left, right = _initializers(a), _initializers(b)
    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)


def test_the_plan_of_several_steps_sums_each_group_s_removals(cli, tmp_path):
    plan = tmp_path / "plan.json"
    args = ("--channels", "0.5", "--steps", "2", "--plan-out", plan)
    _compress(cli, tmp_path, MODELS / "digits_mlp.onnx", *args)
    written = json.loads(plan.read_text())
    assert set(written["sources"]) == set(written["initializers"]) and written["groups"]
    for group in written["groups"]:
        assert group["ratio"] == 0.5 and group["removed"] == group["units"] // 2
    assert [len(e["kept"]) for e in written["initializers"]["fc1.bias"]] == [64]


def test_plan_in_of_a_version_2_plan_repeats_the_cut_exactly(cli, tmp_path):
    source = MODELS / "digits_cnn.onnx"
    plan = tmp_path / "plan.json"
    first = _compress(cli, tmp_path, source, "--channels", "0.5", "--plan-out", plan)
    again = tmp_path / "again.json"
    second = _compress(cli, tmp_path, source, "--plan-in", plan, "--plan-out", again, name="b")
    assert _same_weights(first, second)
    assert json.loads(again.read_text()) == json.loads(plan.read_text())


def test_a_version_1_plan_is_still_read(cli, tmp_path):
    source = MODELS / "digits_cnn.onnx"
    plan = tmp_path / "plan.json"
    first = _compress(cli, tmp_path, source, "--channels", "0.5", "--plan-out", plan)
    old = json.loads(plan.read_text())
    v1 = {
        "format": old["format"],
        "version": 1,
        "initializers": {
            name: [{k: e[k] for k in ("axis", "size", "kept")} for e in entries]
            for name, entries in old["initializers"].items()
        },
    }
    plan.write_text(json.dumps(v1))
    assert _same_weights(first, _compress(cli, tmp_path, source, "--plan-in", plan, name="b"))


def test_the_refit_weights_go_beside_the_plan(cli, tmp_path):
    plan = tmp_path / "plan.json"
    out = _compress(
        cli,
        tmp_path,
        MODELS / "digits_cnn.onnx",
        "--channels",
        "0.5",
        "--calibration",
        MODELS / "digits_calib.npz",
        "--plan-out",
        plan,
    )
    written = json.loads(plan.read_text())
    refit = written["refit"]
    assert refit["file"] == "plan.refit.npz" and refit["layout"] == "onnx"
    with np.load(tmp_path / "plan.refit.npz") as data:
        arrays = {name: data[name] for name in data.files}
    assert refit["names"] == sorted(arrays) and set(arrays) <= set(written["sources"])
    assert all(set(source) == SOURCE_KEYS for source in written["sources"].values())
    for name, entries in written["initializers"].items():
        if name in arrays:
            assert all(arrays[name].shape[e["axis"]] == len(e["kept"]) for e in entries)
    final = _initializers(out)
    assert np.array_equal(arrays["head.weight"], final["head.weight"])  # no later pass edits it


def test_a_plan_written_to_a_stream_has_no_refit_file_beside_it(tmp_path):
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    assert refit_path(tmp_path / "calib.json") == tmp_path / "calib.refit.npz"  # not calib.npz
    assert refit_path(fifo) is None and refit_path("/dev/stdout") is None
    assert refit_path("/dev/shm/plan.json") == Path("/dev/shm/plan.refit.npz")  # a plain folder
    ((path, _),) = plan_files({"plan": {"version": 2}}, "/dev/stdout")  # no refit: the plan alone
    assert str(path) == "/dev/stdout"
    artifacts = {"plan": {"version": 2}, "refit": {"arrays": {"w": np.ones(2)}, "sources": {}}}
    with pytest.raises(InputError, match="the refit weights go in a file beside the plan"):
        plan_files(artifacts, "/dev/stdout")  # refit weights would be lost without a word


def test_a_plan_naming_calibration_data_leaves_that_data_alone(tmp_path, cli):
    calibration = tmp_path / "calib.npz"
    calibration.write_bytes((MODELS / "digits_calib.npz").read_bytes())
    before = calibration.read_bytes()
    code, _, err = cli(
        "compress",
        MODELS / "digits_cnn.onnx",
        "-o",
        tmp_path / "out.onnx",
        "--channels",
        "0.3",
        "--calibration",
        calibration,
        "--plan-out",
        tmp_path / "calib.json",
    )
    assert code == 0, err
    assert calibration.read_bytes() == before and (tmp_path / "calib.refit.npz").is_file()


# ---------------------------------------------------------------- the PyTorch recipe
def _recipe():
    spec = importlib.util.spec_from_file_location(
        "apply_plan_torch", ROOT / "examples" / "apply_plan_torch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_models(torch):
    """A Conv-BN-ReLU CNN with a residual block (its second conv grouped, so that the plan cuts
    it group by group) and a Linear head (exported as Gemm), and an MLP
    on [batch, tokens, features] (its Linear layers exported as MatMul + Add), seeded."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=4)
            self.bn2 = nn.BatchNorm2d(channels)
            self.down = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.down(x))

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.layer1 = nn.Sequential(Block(16))
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.layer1(self.stem(x)).mean((2, 3)))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(12, 32), nn.Linear(32, 24), nn.Linear(24, 5)

        def forward(self, x):
            return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    torch.manual_seed(0)
    cnn, mlp = Cnn(), Mlp()
    with torch.no_grad():  # a trained network's statistics, not the initial ones
        for module in cnn.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return [(cnn.eval(), (2, 3, 8, 8), "Gemm"), (mlp.eval(), (2, 5, 12), "MatMul")]


def _export(torch, module, shape, path: Path) -> None:
    """The legacy exporter; BatchNorm kept as its own node (TrainingMode.PRESERVE), else it
    is folded into the Conv's weight, which the PyTorch module does not have."""
    torch.onnx.export(
        module,
        torch.randn(*shape),
        str(path),
        dynamo=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    "args",
    [(), ("--calibration", "random"), ("--calibration", "random", "--steps", "2")],
    ids=["cut", "cut+refit", "steps+refit"],
)
def test_the_recipe_prunes_the_pytorch_module_as_the_plan_pruned_its_export(cli, tmp_path, args):
    torch = pytest.importorskip("torch")
    recipe = _recipe()
    for index, (module, shape, linear) in enumerate(_torch_models(torch)):
        source, plan_path = tmp_path / f"m{index}.onnx", tmp_path / f"m{index}.json"
        _export(torch, module, shape, source)
        pruned = _compress(
            cli, tmp_path, source, "--channels", "0.5", *args, "--plan-out", plan_path
        )
        plan = recipe.load_plan(plan_path)
        assert bool(plan["arrays"]) == bool(args)
        assert all(group["ratio"] == 0.5 for group in plan["groups"])
        assert bool(plan.get("grouped")) == (linear == "Gemm")  # the CNN's grouped conv
        layouts = {s["layout"] for s in plan["sources"].values() if s["op_type"] == linear}
        assert layouts == {"transposed" if linear == "MatMul" else "same"}
        assert recipe.apply_plan(module, plan) == []
        x = np.random.default_rng(index).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
        (want,) = run_ort(Model.load(pruned), {"x": x})
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        _same_parameter_count(torch, module, shape, pruned, tmp_path / f"again{index}.onnx")


def _same_parameter_count(torch, module, shape, pruned: Path, again: Path) -> None:
    """The pruned module has the pruned ONNX model's parameters: exported again with
    BatchNorm folded (as sparsec folds it), the two hold the same number of float weights."""
    torch.onnx.export(module, torch.randn(*shape), str(again), dynamo=False)

    def floats(path):
        arrays = _initializers(path).values()
        return sum(a.size for a in arrays if a.dtype == np.float32)

    assert floats(again) == floats(pruned)
    if not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()):
        assert sum(p.numel() for p in module.parameters()) == floats(pruned)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_the_recipe_refuses_a_conv_the_exporter_folded_a_batchnorm_into(cli, tmp_path):
    torch = pytest.importorskip("torch")
    (module, shape, _), _ = _torch_models(torch)
    source, plan = tmp_path / "eval.onnx", tmp_path / "plan.json"
    torch.onnx.export(module, torch.randn(*shape), str(source), dynamo=False)  # TrainingMode.EVAL
    _compress(cli, tmp_path, source, "--channels", "0.5", "--plan-out", plan)
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"BatchNorm folded in\).*TrainingMode\.PRESERVE"):
        recipe.apply_plan(module, recipe.load_plan(plan))


def _equal_bias_cnn(torch):
    """A new user's CNN, seeded, whose two BatchNorms keep their zero biases: equal, so the
    legacy exporter writes one initializer, ``res_bn.bias = Identity(cat_bn.bias)``."""
    nn = torch.nn

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.cat_bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.res, self.res_bn = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            y = torch.relu(self.cat_bn(self.stem(x)))
            return self.head(torch.relu(self.res_bn(self.res(y)) + y).mean((2, 3)))

    torch.manual_seed(0)
    cnn = Cnn()
    with torch.no_grad():  # trained weights and statistics; the biases stay zero
        for bn in (cnn.cat_bn, cnn.res_bn):
            bn.weight.uniform_(0.5, 1.5)
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return cnn.eval(), (2, 3, 8, 8)


def _root_parameter_vit(torch):
    """A new user's ViT-like model, seeded, on patch tokens [batch, 4, 12]: a Linear patch
    embedding, ``cls`` and ``pos`` parameters of the root module, an attention-free pre-norm
    MLP block (its LayerNorm's default weights equal the final LayerNorm's: shared too)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(self.norm(x))))

    class Vit(nn.Module):
        def __init__(self, dim=16, tokens=4):
            super().__init__()
            self.patch = nn.Linear(12, dim)
            self.cls = nn.Parameter(torch.randn(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim))
            self.block, self.norm, self.head = Block(dim, 32), nn.LayerNorm(dim), nn.Linear(dim, 5)

        def forward(self, x):
            t = self.patch(x)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
            return self.head(self.norm(self.block(t))[:, 0])

    torch.manual_seed(0)
    return Vit().eval(), (2, 4, 12)


def _pruned_as_planned(cli, tmp_path, torch, module, shape, args) -> dict:
    """Export ``module``, ``sparsec compress`` it with ``args`` and ``--plan-out``, apply the
    plan to ``module``: every constant placed, and the module computes what the pruned ONNX
    model does in onnxruntime. Returns the plan."""
    source, plan_path = tmp_path / "m.onnx", tmp_path / "plan.json"
    _export(torch, module, shape, source)
    pruned = _compress(cli, tmp_path, source, *args, "--plan-out", plan_path)
    recipe = _recipe()
    plan = recipe.load_plan(plan_path)
    assert recipe.apply_plan(module, plan) == []
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    (want,) = run_ort(Model.load(pruned), {"x": x})
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    return plan


TRIAL_ARGS = [("--channels", "0.5"), ("--channels", "0.5", "--calibration", "random")]
TRIAL_ARGS += [("--channels", "0.5", "--calibration", "random", "--steps", "2")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("args", TRIAL_ARGS, ids=["cut", "cut+refit", "steps+refit"])
def test_the_recipe_prunes_every_module_a_deduplicated_weight_reaches(cli, tmp_path, args):
    torch = pytest.importorskip("torch")
    module, shape = _equal_bias_cnn(torch)
    plan = _pruned_as_planned(cli, tmp_path, torch, module, shape, args)
    assert any(n.op_type == "Identity" for n in onnx.load(tmp_path / "m.onnx").graph.node)
    owners = {(s["module"], s["param"]): name for name, s in plan["sources"].items()}
    assert owners[("cat_bn", "bias")] == "cat_bn.bias"  # unshare-vectors: res_bn has a copy
    assert owners[("res_bn", "bias")].endswith(":input2")
    assert module.res_bn.bias.shape == module.cat_bn.bias.shape == (8,)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("args", TRIAL_ARGS, ids=["cut", "cut+refit", "steps+refit"])
def test_the_recipe_prunes_the_root_module_s_own_parameters(cli, tmp_path, args):
    torch = pytest.importorskip("torch")
    module, shape = _root_parameter_vit(torch)
    plan = _pruned_as_planned(cli, tmp_path, torch, module, shape, args)
    for name in ("cls", "pos"):
        source = plan["sources"][name]
        assert (source["module"], source["param"], source["is_parameter"]) == ("", name, True)
        assert [(e["axis"], e["torch_axis"]) for e in plan["initializers"][name]] == [(2, 2)]
    assert module.cls.shape == (1, 1, 8) and module.pos.shape == (1, 5, 8)
    assert isinstance(module.pos, torch.nn.Parameter) and module.pos.requires_grad


def test_plan_out_dash_is_refused_in_one_line_and_writes_nothing(tmp_path, cli):
    out = tmp_path / "out.onnx"
    code, _, err = cli(
        "compress", MODELS / "digits_cnn.onnx", "-o", out, "--channels", "0.5", "--plan-out", "-"
    )
    assert code != 0 and not out.exists()
    assert err.strip().splitlines() == [
        (
            "sparsec: error: --plan-out needs a file path (its refit weights go beside it); "
            "/dev/stdout prints the plan alone"
        )
    ]
