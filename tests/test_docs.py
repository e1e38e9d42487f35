"""The README and docs/ stay navigable and true to the tree: every relative link and #anchor
resolves, every module path docs/architecture.md names exists, and every ``from sparsec...
import`` in their Python examples imports."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
    ROOT / "models" / "README.md",
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def run_python_blocks(page: Path, folder: Path, links: tuple[str, ...], minimum: int) -> None:
    """Run every ```python block of ``page`` in order, in one namespace, from ``folder``
    (the caller's temp working directory) holding links to the repository's ``links``
    folders, as a user's working copy would; a failing block is named."""
    for name in links:
        (folder / name).symlink_to(ROOT / name)
    blocks = _code_blocks(page.read_text(encoding="utf-8"), "python")
    assert len(blocks) >= minimum
    namespace: dict = {"__name__": page.stem.replace("-", "_")}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{page.name} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"block {number} of {page.name} fails: {error!r}") from error


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _links(path: Path) -> list[str]:
    return [
        target for line in _prose(path.read_text(encoding="utf-8")) for target in LINK.findall(line)
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert broken == []


def test_the_anchor_rule_matches_githubs():
    page = ROOT / "README.md"
    assert {
        "guarantees-what-sparsec-reads-refuses-and-writes",
        "sparsec-compress-model--o-out",
        "quickstart",
    } <= anchors(page)


def test_module_paths_named_in_the_architecture_exist():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "sparsec"
    missing = []
    for path in set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*(?:\.py|/))`", text)):
        if not (
            (package / path).exists() or (ROOT / path).exists() or any(package.glob(f"**/{path}"))
        ):
            missing.append(path)
    # the layer table: every module a row lists after its colon is in (a subfolder of) its folders
    for folders_cell, description in re.findall(r"^\| \d \| (.*?) \| (.*?) \|$", text, flags=re.M):
        folders = [package / f.rstrip("/") for f in re.findall(r"`([a-z_]+/)`", folders_cell)]
        for name in re.findall(r"`([a-z_]+)`", description.partition(": ")[2]):
            if not any(
                next(folder.glob(f"**/{name}.py"), None) or next(folder.glob(f"**/{name}/"), None)
                for folder in folders
            ):
                missing.append(f"{name} (in {', '.join(f.name for f in folders)})")
    assert sorted(missing) == []


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_python_examples_import_what_they_name(page):
    missing = []
    for block in _code_blocks(page.read_text(encoding="utf-8"), "python"):
        compile(block, str(page), "exec")
        for module, names in re.findall(
            r"^from (sparsec[\w.]*) import ([\w, ]+)$", block, flags=re.M
        ):
            imported = importlib.import_module(module)
            missing += [
                f"{module}.{n.strip()}"
                for n in names.split(",")
                if not hasattr(imported, n.strip())
            ]
        for name in re.findall(r"\bsparsec\.([A-Za-z_]\w*)\(", block):
            if not hasattr(importlib.import_module("sparsec"), name):
                missing.append(f"sparsec.{name}")
    assert missing == []


def test_the_pass_example_is_the_example_pass_file():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    example = next(
        block for block in _code_blocks(text, "python") if "class DoubleReluPass" in block
    )
    assert example.strip() in (ROOT / "passes" / "drop_relu_before_relu.py").read_text(
        encoding="utf-8"
    )
