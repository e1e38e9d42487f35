"""The static pass catalogue: it equals the real built-in classes, ``summaries()`` lists what
``available()`` lists without importing a pass module, and plugins still appear in it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sparsec.passes import registry
from sparsec.passes.base import InPlacePass
from sparsec.passes.builtin import BUILTIN_PASSES
from sparsec.passes.catalog import BUILTIN


def test_catalog_rows_equal_the_builtin_classes():
    real = {cls.name: (cls.__module__, cls.__qualname__, cls.summary) for cls in BUILTIN_PASSES}
    assert real == BUILTIN


def test_catalog_is_sorted_and_names_load_as_classes():
    assert list(BUILTIN) == sorted(BUILTIN)
    for name, (module, class_name, _) in BUILTIN.items():
        cls = getattr(sys.modules[module], class_name)
        assert cls.name == name and registry.available()[name] is cls


def test_summaries_match_available():
    expected = {name: cls.summary for name, cls in registry.available().items()}
    assert registry.summaries() == expected
    assert list(registry.summaries()) == sorted(expected)


def _light(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_summaries_import_no_pass_module_nor_onnx_ir():
    printed = _light(
        "import sys; import sparsec.passes.registry as r; s = r.summaries(); "
        "heavy = [m for m in ('onnx_ir', 'onnx', 'numpy') if m in sys.modules]; "
        "mods = {m for m, _, _ in r.BUILTIN.values()} & set(sys.modules); "
        "print(len(s), 'onnx_ir' in sys.modules, heavy or '-', sorted(mods) or '-')"
    )
    assert printed == [str(len(BUILTIN)), "False", "-", "-"]


def test_the_passes_command_imports_no_pass_module_nor_onnx():
    printed = _light(
        "import sys, io, contextlib; from sparsec.cli import main; "
        "out = io.StringIO(); ctx = contextlib.redirect_stdout(out); ctx.__enter__(); "
        "codes = [main(['passes']), main(['passes', '--json'])]; ctx.__exit__(None, None, None); "
        "heavy = [m for m in ('onnx_ir', 'onnx', 'numpy', 'onnxruntime') if m in sys.modules]; "
        "mods = {m for m, _, _ in __import__('sparsec.passes.catalog').passes.catalog.BUILTIN.values()}; "
        "print(codes == [0, 0], heavy or '-', sorted(mods & set(sys.modules)) or '-', "
        "len(out.getvalue().splitlines()) > 10)"
    )
    assert printed == ["True", "-", "-", "True"]


class _FakePoint:
    """An entry point as ``importlib.metadata`` yields it."""

    def __init__(self, name: str, loaded) -> None:
        self.name, self.value, self._loaded = name, f"plugin:{name}", loaded

    def load(self):
        return self._loaded


class _PluginPass(InPlacePass):
    name = "plugin-pass"
    summary = "A pass from a plugin."


@pytest.fixture
def plugin(monkeypatch):
    """One ``sparsec.passes`` entry point, and a registry of its own for the test."""
    import importlib.metadata

    points = [_FakePoint("plugin-pass", _PluginPass), _FakePoint("bn-fold", _PluginPass)]
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: points if group == registry.ENTRY_POINT_GROUP else [],
    )
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.usefixtures("plugin")
def test_summaries_list_entry_points_and_builtins_win():
    found = registry.summaries()
    assert found["plugin-pass"] == "A pass from a plugin."
    assert found["bn-fold"] == BUILTIN["bn-fold"][2]  # a plugin does not shadow a built-in
    assert registry.available()["plugin-pass"] is _PluginPass
    assert registry.available()["bn-fold"].__name__ == "BatchNormFoldPass"


@pytest.mark.usefixtures("plugin")
def test_a_broken_entry_point_is_an_input_error(monkeypatch):
    import importlib.metadata

    from sparsec.errors import InputError

    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [_FakePoint("not-a-pass", object)]
    )
    with pytest.raises(InputError, match=r"not-a-pass.*not a pass class \(sparsec or onnx-ir\)"):
        registry.summaries()


def test_registered_user_pass_appears(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class UserPass(InPlacePass):
        name = "user-pass"
        summary = "A user's pass."

    registry.register(UserPass)
    assert registry.summaries()["user-pass"] == "A user's pass."
