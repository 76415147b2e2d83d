"""The fast tier stays fast: a test that starts a command in a subprocess (support.run, run_ok, generate_shapes) or
needs a trained run (the trained_runs fixture) carries the slow marker, itself or through its module, so that
`make test` leaves it out; and every marker a test uses is one pyproject.toml declares."""

from __future__ import annotations

import ast
import tomllib

from support import ROOT

TESTS = sorted((ROOT / "tests").glob("test_*.py"))
STARTS_A_COMMAND = {"run", "run_ok", "generate_shapes"}
NEEDS_A_TRAINED_RUN = {"trained_runs", "exports"}
SLOW_TIERS = {"slow", "slurm", "browser", "s3"}


def markers(node: ast.AST) -> set[str]:
    """The pytest.mark.<name> markers a decorator list or a `pytestmark = ...` value names."""
    return {
        sub.attr
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) and sub.value.attr == "mark"
    }


def unmarked_slow_tests(source: str) -> list[str]:
    tree = ast.parse(source)
    module = set().union(*(markers(n.value) for n in tree.body if isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n)))
    if module & SLOW_TIERS:
        return []
    helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def slow(function: ast.FunctionDef, seen: set[str]) -> bool:
        calls = {n.func.id for n in ast.walk(function) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        arguments = {a.arg for a in function.args.args}
        if calls & STARTS_A_COMMAND or arguments & NEEDS_A_TRAINED_RUN:
            return True
        # a helper or fixture of this module that starts a command makes its callers slow too
        return any(slow(helpers[name], seen | {name}) for name in (calls | arguments) & set(helpers) - seen)

    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("test_")
        and not set().union(*(markers(d) for d in node.decorator_list)) & SLOW_TIERS
        and slow(node, {node.name})
    ]


def test_every_test_that_starts_a_command_is_out_of_the_fast_tier():
    found = {path.name: names for path in TESTS if (names := unmarked_slow_tests(path.read_text()))}
    assert not found, f"mark these @pytest.mark.slow (they start a command): {found}"


def test_the_check_finds_an_unmarked_subprocess_test_through_a_helper():
    source = (
        "import pytest\n"
        "def helper(tmp_path):\n    return run_ok('train.py', cwd=tmp_path)\n"
        "def test_direct(tmp_path):\n    run('train.py', cwd=tmp_path)\n"
        "def test_through_helper(tmp_path):\n    helper(tmp_path)\n"
        "@pytest.mark.slow\ndef test_marked(tmp_path):\n    run('train.py', cwd=tmp_path)\n"
        "def test_in_process():\n    assert 1 + 1 == 2\n"
    )
    assert unmarked_slow_tests(source) == ["test_direct", "test_through_helper"]
    assert unmarked_slow_tests("import pytest\npytestmark = pytest.mark.slow\n" + source) == []


def test_every_marker_used_is_declared():
    declared = {
        line.split(":")[0]
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    }
    assert declared == SLOW_TIERS
    builtin = {"parametrize", "skipif", "skip", "xfail", "usefixtures", "filterwarnings"}
    used = set().union(*(markers(ast.parse(path.read_text())) for path in TESTS)) - builtin
    assert used <= declared, f"undeclared markers: {used - declared}"
