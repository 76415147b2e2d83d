"""The core and the extras: every package synground imports is declared, in the core or in the extra of the part
that imports it, and a part whose extra is missing says which to install.

That the core works with no extra installed, and what each part says then, is checked for real in a fresh venv with
the wheel and the core only (benchmarks/consumer_install.py, run by tests/test_consumer.py): hiding installed modules
from one interpreter is not the same, since Lightning and torchmetrics import what the installed metadata lists.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import ROOT
from synground.extras import EXTRAS, MissingExtra, modules_of, require

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = {canonicalize_name(Requirement(text).name) for text in PROJECT["dependencies"]}
DISTRIBUTIONS = importlib.metadata.packages_distributions()  # top-level import name -> the distributions that install it


def declared(extra: str) -> tuple[set[str], set[str]]:
    """(the extras `extra` includes, the distributions it names itself) as pyproject.toml declares them."""
    includes, names = set(), set()
    for text in PROJECT["optional-dependencies"][extra]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "synground":
            includes |= requirement.extras
        else:
            names.add(canonicalize_name(requirement.name))
    return includes, names


def closure(extra: str) -> set[str]:
    """The distributions `extra` installs by name, with those of the extras it includes."""
    includes, names = declared(extra)
    return names.union(*(closure(name) for name in includes))


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(name) for name in DISTRIBUTIONS.get(module.split(".")[0], [])}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def required_extras(tree: ast.Module) -> set[str]:
    """The extras a module asks for at its top level: require("<extra>", ...)."""
    return {
        node.value.args[0].value
        for node in tree.body
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", None) == "require"
        and isinstance(node.value.args[0], ast.Constant)
    }


def third_party_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "synground"}


def package_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text()) for path in sorted((ROOT / "synground").rglob("*.py"))}


def test_the_extras_table_is_what_pyproject_declares():
    """synground.extras.EXTRAS (what `require` checks) and pyproject.toml's extras name the same packages, and
    `all` installs every extra."""
    for extra, (includes, modules) in EXTRAS.items():
        declared_includes, names = declared(extra)
        assert set(includes) == declared_includes, extra
        provided = set().union(*(distributions_of(module) for module in modules))
        assert provided == names, f"extra {extra!r}: EXTRAS's modules come from {provided}, pyproject declares {names}"
    assert declared("all")[0] == set(EXTRAS)
    assert "all" in declared("dev")[0]


def test_every_import_is_declared_in_the_core_or_in_the_extra_its_module_requires():
    """A module imports only the core's packages and those of the extras that it or its packages require; so a
    user without an extra meets MissingExtra, not a ModuleNotFoundError from inside. Imports in functions count."""
    modules = package_modules()
    problems = []
    for name, tree in modules.items():
        packages = [".".join(name.split(".")[:end]) for end in range(1, name.count(".") + 2)]
        extras = set().union(*(required_extras(modules[package]) for package in packages if package in modules))
        allowed = CORE.union(*(closure(extra) for extra in extras))
        for imported in sorted(third_party_imports(tree)):
            found = distributions_of(imported)
            assert found, f"{name} imports {imported}, which no installed distribution provides"
            if not found & allowed:
                problems.append(f"{name} imports {imported} ({', '.join(sorted(found))}), not in the core or extras {extras}")
    assert not problems, "\n".join(problems)


def test_every_core_dependency_is_used_by_the_core():
    """The core is what synground.data and the shapes world import, and nothing more."""
    modules = package_modules()
    core_modules = [name for name in modules if name.startswith("synground.data") or name == "synground.shapes.world"]
    used = set().union(*(distributions_of(imported) for name in core_modules for imported in third_party_imports(modules[name])))
    assert used == CORE


def test_require_names_the_missing_module_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as Python marks a module that cannot be imported
    with pytest.raises(
        MissingExtra, match=r"the demo needs gradio, which synground's 'app' extra installs: pip install 'synground\[app\]'"
    ):
        require("app", "the demo")
    require("models", "the models")  # installed here: nothing raised
    assert modules_of("generation")[: len(modules_of("train"))] == modules_of("train")
    with pytest.raises(ValueError, match="unknown extra 'model'; synground's extras are models, train"):
        require("model", "x")


def test_an_object_store_location_names_its_extra(monkeypatch):
    from synground.data.shards import object_store

    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(MissingExtra, match=r"the shard location s3://bucket/shards needs s3fs.*'synground\[s3\]'"):
        object_store("s3://bucket/shards")
    assert object_store("https://example.org/shards").__name__ == "fsspec"  # http(s) needs no extra
