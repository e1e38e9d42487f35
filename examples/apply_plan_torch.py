"""Prune a PyTorch module the way a sparsec channel plan pruned its ONNX export.

    python examples/apply_plan_torch.py  # nothing: import ``apply_plan`` / ``load_plan``

``plan = load_plan("plan.json")`` reads a version 2 plan (``sparsec compress ... --plan-out
plan.json``) and its refit weights (``plan.refit.npz``, when recovery ran); ``apply_plan(model,
plan)`` then, for every plan entry whose source names a module, slices the parameter (or
BatchNorm running statistic) along the torch axis to the kept indices (a grouped conv's weight
group by group, ``grouped``), and so for every other
module parameter the constant is (``also``: a weight the exporter shared between modules),
rebuilds each module (``nn.Conv*d``, ``nn.Linear``, ``nn.BatchNorm*d``, ``nn.LayerNorm``)
with its new sizes, or for the root module and modules of your own (not ``torch.nn``'s)
replaces the tensors in place, and loads the refit weights. It returns the plan entries it
could not place, on every module they reach (no module path, or no torch axis): an empty
list means the module now computes what the pruned ONNX model does.

Needs only torch and numpy (not sparsec). The plan format is in docs/pytorch-plans.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def load_plan(path: str | Path) -> dict:
    """A sparsec channel plan (version 1 or 2), with its refit weights as ``plan["arrays"]``."""
    path = Path(path)
    plan = json.loads(path.read_text())
    if plan.get("format") != "sparsec-channel-plan" or plan.get("version") not in (1, 2):
        raise ValueError(f"{path} is not a sparsec channel plan of version 1 or 2")
    refit = (plan.get("refit") or {}).get("file")
    if (plan.get("refit") or {}).get("names") and not refit:
        raise ValueError(f"{path} names refit weights but no file holding them: write it again")
    plan["arrays"] = {}
    if refit:
        with np.load(path.parent / refit, allow_pickle=False) as data:
            plan["arrays"] = {name: data[name] for name in data.files}
    return plan


def apply_plan(model: nn.Module, plan: dict) -> list[str]:
    """Prune ``model`` in place as ``plan`` pruned its ONNX export; returns the plan's
    constants it could not place on a module parameter (or on every one they are)."""
    sources = plan.get("sources")
    if sources is None:
        raise ValueError("a version 1 plan has no sources: write it again with this sparsec")
    tensors, skipped = _sliced(model, plan, sources)
    for name, array in plan.get("arrays", {}).items():  # the refit values, in ONNX layout
        value = torch.from_numpy(np.ascontiguousarray(array))
        for source, _ in _places(sources.get(name, {}), []):
            where = _target(model, source)
            if where is None:
                skipped.append(name)
            else:
                tensors[where] = value.T if source["layout"] == "transposed" else value
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for (path, param), value in tensors.items():
        by_module.setdefault(path, {})[param] = value
    for path, params in by_module.items():
        _replace(model, path, params)
    return sorted(set(skipped))


def _places(source: dict, entries: list[dict]) -> list[tuple[dict, list]]:
    """Each module parameter a constant is, with its torch axis of each plan entry: the
    source's own, then those of ``also`` (one weight the exporter shared between modules)."""
    places = [(source, [entry.get("torch_axis") for entry in entries])]
    for other in source.get("also") or []:
        axes = other.get("torch_axes") or []
        places.append((other, [_at(axes, entry["axis"]) for entry in entries]))
    return places


def _at(axes: list, axis: int) -> int | None:
    return axes[axis] if 0 <= axis < len(axes) else None


def _sliced(model: nn.Module, plan: dict, sources: dict) -> tuple[dict, list[str]]:
    """Every planned parameter sliced to its kept indices along its torch axes."""
    tensors, skipped = {}, []
    for name, entries in plan["initializers"].items():
        source = sources.get(name, {})
        folded = source.get("op_type") == "Conv" and not source["is_parameter"]
        if folded and _target(model, source) is not None:
            raise ValueError(
                f"'{name}' (module {source['module']}) is not the module's weight but a tensor "
                "the exporter computed (a BatchNorm folded in): export with "
                "training=torch.onnx.TrainingMode.PRESERVE to keep BatchNorm in the graph"
            )
        for place, axes in _places(source, entries):
            where = _target(model, place)
            if where is None or None in axes:
                skipped.append(name)
                continue
            value = tensors.get(where, _tensor(model, where))
            for entry, axis in zip(entries, axes, strict=True):
                value = value.index_select(axis, torch.as_tensor(entry["kept"], dtype=torch.long))
            tensors[where] = value
    for name, entry in plan.get("grouped", {}).items():  # after their rows were cut above
        skipped += _gathered(model, tensors, sources.get(name, {}), entry, name)
    return tensors, skipped


def _gathered(model: nn.Module, tensors: dict, source: dict, entry: dict, name: str) -> list[str]:
    """A grouped conv's weight cut group by group: the rows of group j keep ``kept[j]`` along
    the per-group axis. Returns [name] when it has no place on a module."""
    skipped = []
    for place, (axis,) in _places(source, [entry]):
        where = _target(model, place)
        if where is None or axis is None:
            skipped.append(name)
            continue
        value = tensors.get(where, _tensor(model, where))
        rows = value.chunk(len(entry["kept"]), dim=0)
        tensors[where] = torch.cat(
            [
                r.index_select(axis, torch.as_tensor(k, dtype=torch.long))
                for r, k in zip(rows, entry["kept"])
            ]
        )
    return skipped


def _target(model: nn.Module, source: dict) -> tuple[str, str] | None:
    """(module path, parameter) of a plan source (path "" for the root module's own), None
    when the module has no such tensor."""
    path, param = source.get("module"), source.get("param")
    if path is None or not param:
        return None
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return (path, param) if getattr(module, param, None) is not None else None


def _tensor(model: nn.Module, where: tuple[str, str]) -> torch.Tensor:
    path, param = where
    return getattr(model.get_submodule(path), param).detach()


def _replace(model: nn.Module, path: str, params: dict[str, torch.Tensor]) -> None:
    """Swap the module at ``path`` for one of its new sizes holding ``params`` (the others
    kept); a module of your own (not ``torch.nn``'s, such as the root) keeps its object and
    takes the new tensors in place."""
    old = model.get_submodule(path)
    rebuild = REBUILD.get(type(old))
    if rebuild is None and not type(old).__module__.startswith("torch."):
        _set_tensors(old, params)
        return
    if rebuild is None:
        raise ValueError(f"no rule to rebuild {path} ({type(old).__name__}) with new sizes")
    state = {k: v.detach() for k, v in old.state_dict().items()}
    state.update(params)
    new = rebuild(old, state[SIZED_BY.get(type(old), "weight")])
    new.load_state_dict(state)
    new.train(old.training)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _set_tensors(module: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Put ``params`` in ``module`` as its own parameters (same ``requires_grad``) or buffers."""
    for name, value in params.items():
        old = getattr(module, name)
        if name in module._parameters:
            setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
        else:
            module._buffers[name] = value.clone()


def _conv(old: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A convolution of ``weight``'s sizes; a depthwise one stays depthwise."""
    depthwise = old.groups == old.in_channels == old.out_channels and old.groups > 1
    groups = weight.shape[0] if depthwise else old.groups
    return type(old)(
        weight.shape[1] * groups,
        weight.shape[0],
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        groups,
        old.bias is not None,
        old.padding_mode,
    )


def _linear(old: nn.Linear, weight: torch.Tensor) -> nn.Module:
    return nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None)


def _batch_norm(old: nn.Module, vector: torch.Tensor) -> nn.Module:
    return type(old)(len(vector), old.eps, old.momentum, old.affine, old.track_running_stats)


def _layer_norm(old: nn.LayerNorm, weight: torch.Tensor) -> nn.Module:
    return nn.LayerNorm(len(weight), old.eps, old.elementwise_affine, bias=old.bias is not None)


# How to rebuild each module type from its pruned tensors (per-type knowledge as data), and the
# tensor whose shape gives the new sizes (a BatchNorm without affine parameters still has its
# running statistics).
REBUILD = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.BatchNorm3d: _batch_norm,
    nn.LayerNorm: _layer_norm,
}
SIZED_BY = {nn.BatchNorm1d: "running_mean", nn.BatchNorm2d: "running_mean"}
SIZED_BY |= {nn.BatchNorm3d: "running_mean"}
