"""The API reference: every public name (the ``__all__`` of ``docs/api.py``'s
``PUBLIC_MODULES``, and each public method or property of a public class) has a docstring,
and ``python docs/api.py`` builds the HTML reference from them."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys

import pytest
from conftest import ROOT


def _docs_script():
    spec = importlib.util.spec_from_file_location("docs_api", ROOT / "docs" / "api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PUBLIC_MODULES = _docs_script().PUBLIC_MODULES


def _public_names(module) -> list[str]:
    """``__all__``, or the functions and classes the module defines itself."""
    if hasattr(module, "__all__"):
        return [name for name in module.__all__ if not name.startswith("__")]
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    ]


def _undocumented_members(path: str, cls: type) -> list[str]:
    missing = []
    for attr, member in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(member, property):
            function = member.fget
        elif isinstance(member, (classmethod, staticmethod)):
            function = member.__func__
        elif inspect.isfunction(member):
            function = member
        else:
            continue
        if not inspect.getdoc(getattr(cls, attr)) and not (function.__doc__ or "").strip():
            missing.append(f"{path}.{attr}")
    return missing


def _own_doc(value) -> str:
    """``value``'s docstring, not the signature text ``dataclasses`` writes when it has none."""
    doc = (value.__doc__ or "").strip()
    return "" if inspect.isclass(value) and doc.startswith(f"{value.__name__}(") else doc


def undocumented(module_name: str) -> list[str]:
    """Public names of ``module_name`` (and their public methods) without a docstring."""
    module = importlib.import_module(module_name)
    missing = []
    for name in _public_names(module):
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if not _own_doc(value):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(value):
            missing += _undocumented_members(f"{module_name}.{name}", value)
    return missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name):
    assert undocumented(module_name) == []


def test_the_check_finds_an_undocumented_function_and_method(tmp_path, monkeypatch):
    (tmp_path / "halfdone.py").write_text(
        '__all__ = ["Thing", "helper"]\n'
        'class Thing:\n    """Documented."""\n    def method(self):\n        return 1\n'
        "def helper():\n    return 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undocumented("halfdone") == ["halfdone.Thing.method", "halfdone.helper"]


def test_one_command_builds_the_reference(tmp_path):
    pytest.importorskip("pdoc")
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "api.py"), str(tmp_path / "api")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    for module_name in PUBLIC_MODULES:
        page = tmp_path / "api" / (module_name.replace(".", "/") + ".html")
        assert page.is_file(), page
    top = (tmp_path / "api" / "sparsec.html").read_text()
    assert "find_channel_groups" in top and "Model" in top


def test_the_python_api_pages_blocks_run_in_order(tmp_path, monkeypatch):
    """Every ```python block of docs/python-api.md, in one namespace, in a temp folder that sees
    the repository's models/ (as a user's working copy does)."""
    from test_docs import run_python_blocks

    monkeypatch.chdir(tmp_path)
    run_python_blocks(ROOT / "docs" / "python-api.md", tmp_path, ("models",), minimum=4)
