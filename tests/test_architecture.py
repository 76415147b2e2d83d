"""The layers of docs/architecture.md hold in the code: every import in synground/ goes to its own package or to one its
row of the table allows, and no chain of imports comes back to where it started."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from support import ROOT

PACKAGE = ROOT / "synground"
RULES = ROOT / "docs" / "architecture.md"


def layer_rules(text: str) -> dict[str, set[str]]:
    """The table of docs/architecture.md: package -> the packages it may import."""
    rules = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `synground") and len(cells) == 2:
            rules[cells[0].strip("`")] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return rules


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The synground modules `path` imports, anywhere in the file (a function-level import is a dependency too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module
            # `from synground import runs` imports the module synground.runs; `from synground.models import X`, a name
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module)
    return {module for module in found if module in MODULES and module != name}


def layer_of(module: str, rules: dict[str, set[str]]) -> str | None:
    if module == "synground":
        return "synground"
    owners = [package for package in rules if package != "synground" and (module + ".").startswith(package + ".")]
    return max(owners, key=len) if owners else None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_rules_table_is_read():
    rules = layer_rules(RULES.read_text())
    assert {"synground.data", "synground.models", "synground.inference", "synground.shapes"} <= set(rules)
    assert rules["synground.data"] == {"synground.files", "synground.extras"}
    assert "synground.callbacks" not in rules["synground.inference"]


def test_every_import_follows_the_layers(graph):
    rules = layer_rules(RULES.read_text())
    problems = []
    for module, imports in graph.items():
        layer = layer_of(module, rules)
        if layer is None:
            problems.append(f"{module} belongs to no package of {RULES.name}: add a row for it")
            continue
        for target in sorted(imports):
            target_layer = layer_of(target, rules)
            if target_layer != layer and target_layer not in rules[layer]:
                problems.append(f"{module} imports {target}: {layer} may not import {target_layer}")
    assert not problems, "\n".join(problems)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as the list of its modules."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle(graph):
    assert cycles(graph) == []


def test_the_checks_catch_what_they_guard():
    """The checks themselves: a circle and an upward import, planted in a copy of the graph, are both reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    rules = layer_rules(RULES.read_text())
    assert layer_of("synground.models.blip", rules) == "synground.models"
    assert layer_of("synground.evaluation", rules) == "synground.evaluation"
    assert layer_of("synground.inference", rules) not in rules[layer_of("synground.models.base", rules)]
