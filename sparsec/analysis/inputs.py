"""Concrete inputs for running a model: bound shapes, seeded random feeds, user ``.npz`` data.

Shape binding: a user's ``--input-shape NAME:1x3x224x224`` wins; otherwise a symbolic dim at
axis 0 (the batch) becomes 1 and any other symbolic dim becomes ``DEFAULT_SYMBOLIC_DIM``.
Random feeds are reproducible from the seed: floats are standard normal, integer inputs that
index a ``Gather`` table draw from ``[0, table size)``, mask-like inputs are ones, other
integers draw from ``[0, 2)``, booleans are random. A non-tensor input gets a value of its type
built from such tensors: a sequence of ``SEQUENCE_LENGTH`` of them (its bound shape is its
elements'), an optional holding one, a map from keys 0, 1, ... (or '0', '1', ...) to scalars.
``.npz`` data holds tensors only, so a model with a non-tensor input runs on generated inputs.
A float array of many samples may be drawn lazily (``DrawnRows``: its rows drawn when read), with
exactly the values drawing it at once gives, so that a quality check's random images are never
all held at once.
"""

from __future__ import annotations

import copy
import math
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from sparsec.errors import InputError

DEFAULT_SYMBOLIC_DIM = 128
SEQUENCE_LENGTH = 2  # elements of a generated sequence input
MAP_SIZE = 4  # keys of a generated map input
_SHAPE_SPEC = re.compile(r"^(?P<name>.+):(?P<dims>[1-9]\d*(x[1-9]\d*)*)$")


def parse_input_shapes(specs: Iterable[str], model) -> dict[str, tuple[int, ...]]:
    """``["name:1x3x224x224", ...]`` → {name: dims}; names must be model inputs, ranks must match."""
    known = {v.name: v for v in model.inputs}
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        match = _SHAPE_SPEC.match(spec.strip())
        if match is None:
            raise InputError(
                f"--input-shape '{spec}': expected NAME:DxDxD with positive dims, e.g. input:1x3x224x224"
            )
        name = match["name"]
        if name in shapes:
            raise InputError(f"--input-shape '{spec}': input '{name}' is given a shape twice")
        if name not in known:
            raise InputError(
                f"--input-shape '{spec}': the model has no input '{name}' (inputs: {', '.join(known)})"
            )
        dims = tuple(int(d) for d in match["dims"].split("x"))
        declared = model.shape_dims(known[name])
        if declared is not None and len(declared) != len(dims):
            raise InputError(
                f"--input-shape '{spec}': input '{name}' has rank {len(declared)}, not {len(dims)}"
            )
        clashes = [
            f"axis {i} is {d}"
            for i, (d, n) in enumerate(zip(declared or [], dims))
            if isinstance(d, int) and d != n
        ]
        if clashes:
            raise InputError(
                f"--input-shape '{spec}': input '{name}' has fixed dims ({', '.join(clashes)})"
            )
        shapes[name] = dims
    return shapes


def bind_shapes(
    model, overrides: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
    """A concrete shape for every model input: overrides, then the shapes of the run's inputs
    (``Model.input_shapes``: ``--input-shape`` or the data's, so that passes analyse the model
    at the shapes it is validated on), then declared dims, then defaults."""
    overrides = {**getattr(model, "input_shapes", {}), **(overrides or {})}
    bound: dict[str, tuple[int, ...]] = {}
    for value in model.inputs:
        if value.name in overrides:
            bound[value.name] = tuple(overrides[value.name])
            continue
        dims = model.shape_dims(value) or []
        bound[value.name] = tuple(_default_dim(d, axis) for axis, d in enumerate(dims))
    return bound


def _default_dim(dim, axis: int) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    return 1 if axis == 0 else DEFAULT_SYMBOLIC_DIM


def _refuse_huge_feeds(model, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Random inputs are made as float64 first: refuse shapes whose arrays would take more than
    a quarter of this machine's memory (a declared dim of 2^40, an --input-shape typo)."""
    budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    total = 0
    for name, shape in ((v.name, shapes[v.name]) for v in model.inputs):
        total += math.prod(shape) * 8
        if total > budget:
            dims = "x".join(map(str, shape))
            raise InputError(
                f"input '{name}' at shape {dims} would need {total / 2**30:.3g} GiB of random data, "
                f"more than a quarter of this machine's memory ({budget / 2**30:.3g} GiB); "
                "give smaller dims with --input-shape, or --inputs"
            )


def random_inputs(
    model, shapes: Mapping[str, tuple[int, ...]], seed: int = 0, *, lazy: bool = False
) -> dict[str, np.ndarray]:
    """Seeded feeds for every input, in valid ranges for integer inputs. With ``lazy``, a
    floating tensor input is a ``DrawnRows`` (the same values, drawn when its rows are read)."""
    _refuse_huge_feeds(model, shapes)
    rng = np.random.default_rng(seed)
    feeds, last = {}, model.inputs[-1] if model.inputs else None
    for value in model.inputs:
        dtype = model.elem_type(value) or np.dtype(
            np.float32
        )  # a sequence's, optional's or map's elements'
        kind = "tensor()" if model.is_tensor(value) else model.type_name(value)
        shape = shapes[value.name]
        if lazy and kind == "tensor()" and np.issubdtype(dtype, np.floating):
            feeds[value.name] = DrawnRows(rng, shape, dtype, advance=value is not last)
        else:
            feeds[value.name] = _random_value(model, value, kind, shape, dtype, rng)
    return feeds


def _random_value(model, value, kind: str, shape, dtype: np.dtype, rng: np.random.Generator):
    """A random value of onnxruntime type ``kind`` ('tensor(float)', 'seq(tensor(float))',
    'optional(...)', 'map(int64,tensor(float))'), its tensors of ``shape`` and ``dtype``."""
    outer, inner = kind[: kind.index("(")], kind[kind.index("(") + 1 : -1]
    if outer == "seq":
        return [
            _random_value(model, value, inner, shape, dtype, rng) for _ in range(SEQUENCE_LENGTH)
        ]
    if outer == "optional":
        return _random_value(model, value, inner, shape, dtype, rng)
    if outer == "map":
        keys = [str(k) if inner.startswith("string,") else k for k in range(MAP_SIZE)]
        return {key: _random_array(model, value, (), dtype, rng).item() for key in keys}
    return _random_array(model, value, shape, dtype, rng)


def _random_array(model, value, shape, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return _standard_normal(shape, dtype, rng)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if "mask" in value.name.lower():
        return np.ones(shape, dtype)
    return rng.integers(0, _index_bound(model, value), shape).astype(dtype)


RANDOM_CHUNK = 1 << 16  # float64 draws held at once while filling a random array


def _standard_normal(shape, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """``rng.standard_normal(shape).astype(dtype)`` drawn in chunks: the same values (the
    generator's stream does not depend on how it is split), without a float64 copy of the whole
    array beside it (64 random 3x224x224 images: 77 MB more at the peak)."""
    array = np.empty(shape, dtype)
    flat = array.reshape(-1)
    for start in range(0, flat.size, RANDOM_CHUNK):
        flat[start : start + RANDOM_CHUNK] = rng.standard_normal(
            min(RANDOM_CHUNK, flat.size - start)
        )
    return array


class DrawnRows:
    """A seeded standard-normal array (``_standard_normal``'s, from ``rng`` as it stands) whose
    rows along axis 0 are drawn only when read: ``rows[i:j]`` (or an index array) gives the
    same values as the whole array would, while only the rows read are held (64 random
    3x224x224 images read one at a time: 0.6 MB instead of 38 MB). Rows read in order cost one
    draw each; reading backwards draws again from the start. ``advance``: ``rng`` is moved past
    the whole array (drawn in chunks, dropped), as drawing it at once would have."""

    def __init__(self, rng: np.random.Generator, shape, dtype, *, advance: bool = True) -> None:
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim, self.size = len(self.shape), math.prod(self.shape)
        self._start = copy.deepcopy(rng.bit_generator.state)
        self._bits = type(rng.bit_generator)
        self._row = math.prod(self.shape[1:])
        self._rng, self._next = None, 0  # the generator and the row it draws next
        if advance:
            _skip(rng, self.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        index = np.arange(self.shape[0])[rows]
        if index.ndim == 0:
            return self._draw(int(index), 1)[0]
        if isinstance(rows, tuple) or index.ndim != 1:
            return np.asarray(self)[rows]
        if not index.size:
            return np.empty((0, *self.shape[1:]), self.dtype)
        first, last = int(index.min()), int(index.max())
        block = self._draw(first, last + 1 - first)
        return block[index - first]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def _draw(self, first: int, count: int) -> np.ndarray:
        """Rows ``first`` .. ``first + count`` (exclusive), drawn from where the stream is."""
        if self._rng is None or first < self._next:
            bits = self._bits()
            bits.state = self._start
            self._rng, self._next = np.random.Generator(bits), 0
        _skip(self._rng, (first - self._next) * self._row)
        self._next = first + count
        return _standard_normal((count, *self.shape[1:]), self.dtype, self._rng)


def _skip(rng: np.random.Generator, count: int) -> None:
    """Move ``rng`` past ``count`` standard-normal draws (in chunks, dropped)."""
    for start in range(0, count, RANDOM_CHUNK):
        rng.standard_normal(min(RANDOM_CHUNK, count - start))


def _index_bound(model, value) -> int:
    """The smallest table size among ``Gather``/``GatherElements`` nodes this value indexes."""
    bounds = []
    for node in model.consumers(value):
        if node.op_type == "Gather" and len(node.inputs) > 1 and node.inputs[1] is value:
            table = model.constant_shape(node.inputs[0]) or model.static_shape(node.inputs[0])
            if table:
                bounds.append(table[model.attr(node, "axis", 0)])
    return max(1, min(bounds)) if bounds else 2


def load_npz(path: str | Path, model) -> dict[str, np.ndarray]:
    """User data keyed by input name; every model input must be present, conforming (``conform``)."""
    path = Path(path)
    data = read_arrays(path, "inputs")
    feeds = {}
    for value in model.inputs:
        if not model.is_tensor(value):
            raise InputError(
                f"{path}: model input '{value.name}' is a {model.type_name(value)}, which an .npz "
                "cannot hold; leave out --inputs to run this model on generated inputs"
            )
        if value.name not in data:
            raise InputError(
                f"{path}: no array for model input '{value.name}' (arrays: {', '.join(data) or 'none'})"
            )
        feeds[value.name] = conform(data[value.name], value, model, str(path), batched=False)
    return feeds


def read_arrays(path: Path, what: str, *, npy: bool = False) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` file (with ``npy``, ``NAME.npy`` is one array called
    NAME); one clear ``InputError`` naming ``what`` (``inputs``, ``calibration data``) when it
    cannot be read."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            if npy and path.suffix == ".npy":
                return {path.stem: archive}
            raise InputError(
                f"{path}: not an .npz archive (save one with numpy.savez(path, input_name=array))"
            )
        with archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
    ) as error:  # an empty file is an EOFError
        detail = (
            "" if "pickle" in str(error) else f" ({error or type(error).__name__})"
        )  # numpy's guess: a pickle
        raise InputError(f"{what} {path}: not a readable .npz/.npy file{detail}") from None


def conform(array: np.ndarray, value, model, label: str, *, batched: bool) -> np.ndarray:
    """``array`` as a feed of model input ``value``: the input's rank, not empty, its fixed dims
    (but axis 0 when ``batched``: calibration samples, fed in batches, which must also be finite:
    a model may take NaN inputs on purpose, but a NaN activation fits nothing), numeric data
    cast to the input's dtype. Anything else is an ``InputError`` naming ``label`` and the array."""
    where = f"{label}: array '{value.name}'"
    if not model.is_tensor(value):
        raise InputError(
            f"{where}: the model input is a {model.type_name(value)}, which an array cannot feed"
        )
    declared = model.shape_dims(value)
    if declared is not None and len(declared) != array.ndim:
        raise InputError(
            f"{where} has rank {array.ndim}, the model input has rank {len(declared)}"
            + (" (samples go along the input's first axis)" if batched else "")
        )
    if array.size == 0:
        raise InputError(f"{where} is empty; at least one sample is needed")
    fixed = [
        (axis, dim)
        for axis, dim in enumerate(declared or [])
        if isinstance(dim, int) and dim > 0 and not (batched and axis == 0)
    ]
    if any(array.shape[axis] != dim for axis, dim in fixed):
        raise InputError(f"{where} has shape {list(array.shape)}, the model input is {declared}")
    dtype = model.elem_type(value)
    if dtype is not None and array.dtype != dtype and array.dtype.kind not in "biuf":
        raise InputError(f"{where} has dtype {array.dtype}; the model input is {dtype}")
    if batched and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{where} holds NaN or infinite values")
    return array if dtype is None or array.dtype == dtype else array.astype(dtype)


def feed_shapes(feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The shapes of tensor feeds, and of a sequence's elements when they all share one (the
    binding of a sequence input); maps and mixed sequences are left to the defaults."""
    shapes = {}
    for name, feed in feeds.items():
        value = feed
        if isinstance(feed, list):
            same = feed and all(
                getattr(v, "shape", None) == getattr(feed[0], "shape", 0) for v in feed
            )
            value = feed[0] if same else None
        if isinstance(value, np.ndarray):
            shapes[name] = tuple(value.shape)
    return shapes
