"""The layers the folders show: every module of ``sparsec`` imports only modules of its own layer
or lower ones (imports inside functions count), and no modules import each other in a cycle.

Layers, lowest first (DESIGN.md, "Where it is heading"): 0 ``errors`` and ``results`` (what
every layer raises and reports) and ``executor`` (where independent work runs), 1 ``ir`` (the
only code touching onnx-ir and protobuf), 2 ``analysis`` (read-only questions) and ``validate``,
3 ``pruning`` (choosing units, cutting, the oracle, schedules, budgets, recovery), 4 ``passes``
(options and one call each), 5 ``report`` and ``api``, 6 ``cli``, ``entry`` and ``testing``;
above them ``sparsec/__init__.py`` (the public names, loaded lazily). A new package or top-level
module needs a row in ``LAYERS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "sparsec.errors": 0,
    "sparsec.results": 0,
    "sparsec.executor": 0,
    "sparsec.ir": 1,
    "sparsec.analysis": 2,
    "sparsec.analysis.lookup": 2,
    "sparsec.validate": 2,
    "sparsec.latency": 2,
    "sparsec.evaluate": 2,
    "sparsec.gates": 2,
    "sparsec.pruning": 3,
    "sparsec.pruning.plans": 3,
    "sparsec.passes": 4,
    "sparsec.spec": 4,
    "sparsec.report": 5,
    "sparsec.plot": 5,
    "sparsec.ci_report": 5,
    "sparsec.api": 5,
    "sparsec.inspection": 5,
    "sparsec.jobs": 5,
    "sparsec.jobs_report": 5,
    "sparsec.verify": 5,
    "sparsec.cli": 6,
    "sparsec.cli_options": 6,
    "sparsec.entry": 6,
    "sparsec.testing": 6,
    "sparsec": 7,
}
NAMES = (
    "errors/results",
    "ir",
    "analysis/validate",
    "pruning",
    "passes",
    "report/api",
    "cli/entry/testing",
    "public API",
)
# Names a lower module may read from the package itself: constants of sparsec/__init__.py, which
# Python runs before any module of the package anyway.
PACKAGE_CONSTANTS = {"__version__"}


def _modules() -> dict[str, Path]:
    """Every module of sparsec by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((ROOT / "sparsec").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def layer(name: str) -> int | None:
    """The layer of a dotted module name: that of its longest prefix in ``LAYERS``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    return None


def _base(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module a ``from`` import reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    return ".".join(
        package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
    )


def imports(name: str) -> list[tuple[int, str]]:
    """(line, sparsec module) of every import in module ``name``, at any depth of the file: a
    ``from m import x`` reads ``m.x`` when that is a module, else ``m``."""
    path, found = MODULES[name], []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, name, path)
            for alias in node.names:
                if base == "sparsec" and alias.name in PACKAGE_CONSTANTS:
                    continue
                found.append(
                    (
                        node.lineno,
                        f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base,
                    )
                )
    return [
        (line, target)
        for line, target in found
        if target == "sparsec" or target.startswith("sparsec.")
    ]


def _graph() -> dict[str, set[str]]:
    return {name: {target for _, target in imports(name) if target != name} for name in MODULES}


def test_every_module_has_a_layer():
    assert [name for name in MODULES if layer(name) is None] == []


def test_no_module_imports_a_higher_layer():
    """Fails naming file, line and imported module of every upward import."""
    upward = []
    for name, path in MODULES.items():
        for line, target in imports(name):
            if (
                layer(target) is not None
                and layer(name) is not None
                and layer(target) > layer(name)
            ):
                upward.append(
                    f"{path.relative_to(ROOT)}:{line}: {name} (layer {layer(name)}, {NAMES[layer(name)]}) "
                    f"imports {target} (layer {layer(target)}, {NAMES[layer(target)]})"
                )
    assert not upward, f"{len(upward)} upward import(s):\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter[0] = counter[0] + 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0] = counter[0] + 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_no_modules_import_each_other_in_a_cycle():
    """No set of modules imports itself round a cycle (imports inside functions count, so a lazy
    import does not hide one); a cycle across layers is an upward import too, one inside a layer
    means two modules that are really one or a third module missing."""
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(
        " <-> ".join(f"{name} (layer {layer(name)})" for name in cycle) for cycle in cycles
    )


def test_the_checks_see_a_function_level_upward_import_and_a_cycle():
    """The checker itself: a nested import is found, and a two-module loop is a cycle."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert "sparsec.cli" in {
        target for _, target in imports("sparsec.entry")
    }  # imported inside main()
