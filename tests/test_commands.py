"""Every command is reachable one way and says what it does: each console script of pyproject.toml answers --help with
its purpose, the README's command table lists them all, and so does every benchmark and tool script."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from support import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
HYDRA_COMMANDS = ("train", "eval", "generate", "convert", "ground", "app")
REPOSITORY_SCRIPTS = sorted(
    path.relative_to(ROOT).as_posix()
    for folder in ("benchmarks", "tools")
    for path in (ROOT / folder).glob("*.py")
    if '__name__ == "__main__"' in path.read_text()
)


def help_text(entry_point: str, name: str, monkeypatch) -> str:
    module, function = entry_point.split(":")
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as stopped:
        getattr(importlib.import_module(module), function)()
    assert stopped.value.code in (0, None), f"{name} --help exited with {stopped.value.code}"
    return output.getvalue()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_says_what_it_does(name, monkeypatch):
    text = help_text(SCRIPTS[name], name, monkeypatch)
    if name.removeprefix("synground-") in HYDRA_COMMANDS:
        # Hydra's help: our header (what it does, where its config is), then the config groups
        header = text.splitlines()[0]
        assert header.startswith(f"{name} (python {name.removeprefix('synground-')}.py in a checkout): "), header
        assert "== Configuration groups ==" in text
    else:
        usage, description = text.split("\n\n")[:2]
        assert usage.startswith(f"usage: {name}") and len(description.split()) >= 4, text[:500]


def test_the_hydra_commands_are_the_top_level_scripts():
    """python train.py and synground-train run one function: the scripts at the top of a checkout stay thin."""
    for command in HYDRA_COMMANDS:
        assert SCRIPTS[f"synground-{command}"].startswith("synground.cli:")
        script = (ROOT / f"{command}.py").read_text()
        assert f"from synground.cli import {SCRIPTS[f'synground-{command}'].split(':')[1]} as main" in script
        assert len(script.splitlines()) <= 10, f"{command}.py holds logic; it belongs in synground/"


def test_the_readme_command_table_lists_every_command():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Commands") :]
    table = table[: table.index("\n## ")]
    missing = [name for name in [*SCRIPTS, *REPOSITORY_SCRIPTS] if f"`{name}" not in table]
    assert not missing, f"README's Commands table lacks {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("script", REPOSITORY_SCRIPTS)
def test_every_benchmark_and_tool_says_what_it_does(script):
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    usage, description = done.stdout.split("\n\n")[:2]
    assert usage.startswith("usage: ") and len(description.split()) >= 4, done.stdout[:500]


@pytest.mark.slow
def test_the_commands_run_from_an_installed_wheel_outside_any_checkout(tmp_path):
    """The wheel carries the configs and the shipped encoders: from a directory that is not a checkout, with only the
    installed package on the path, a Hydra command composes its config, pretraining builds its model from the packaged
    configs, and the demo's model config finds its packaged vision encoder."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "synground", source / "synground", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True)
    (wheel,) = (tmp_path / "dist").glob("synground-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True)
    packaged = tmp_path / "site" / "synground"
    assert (packaged / "assets" / "both_dense_blip.safetensors").is_file() and (
        packaged / "conf" / "model" / "blip.yaml"
    ).is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}

    def python(*arguments: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, *arguments], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    located = python("-c", "import synground.cli, synground.conf; print(synground.cli.__file__, synground.conf.CONFIG_DIR)")
    assert all(path.startswith(str(tmp_path / "site")) for path in located.stdout.split()), located.stdout
    config = python("-m", "synground.cli", "train", "experiment=shapes", "--cfg", "job").stdout
    assert "vision_weights: synground:both_dense" in config and "task_name: shapes" in config
    small = ["data.image_size=64", "model.net.vision_width=32", "model.net.vision_layers=2", "model.net.heads=2"]
    python("-m", "synground.shapes.pretraining", *small, "--steps", "1", "--batch-size", "2", "--output", "encoder.safetensors")
    assert (elsewhere / "encoder.safetensors").stat().st_size > 0
    python(
        "-m",
        "synground.cli",
        "train",
        "experiment=shapes",
        *small,
        "model.net.text_width=32",
        "model.net.vision_weights=encoder.safetensors",
        "data.batches_per_epoch=1",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.num_workers=0",
        "hydra.run.dir=run",
    )
    assert (elsewhere / "run" / "metrics.json").is_file() and (elsewhere / "run" / "train.log").is_file()
