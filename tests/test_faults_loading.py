"""Fault injections for loading what others made: a shared run folder or export must run nothing and load nothing
damaged. Each test is one case of the adversarial report (issue 25) and failed before its fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from synground import Grounder
from synground.app import load_models
from synground.export import export_model
from synground.models.builders import UnsafeConfigError, build_net

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = {
    "_target_": "synground.models.BlipGroundingModel.tiny",
    "vocabulary": ["the", "red", "circle"],
    "image_size": 32,
    "patch_size": 16,
    "vision_width": 16,
    "vision_layers": 2,
    "text_width": 16,
    "text_layers": 2,
    "heads": 2,
    "gradcam_layer": 0,
}


def write_run(run_dir: Path, net: dict) -> Path:
    """A train.py run directory as someone might share it: .hydra/config.yaml and checkpoints/last.ckpt (the weights
    of the tiny model, whatever the config says)."""
    (run_dir / ".hydra").mkdir(parents=True)
    config = {"model": {"_target_": "synground.models.GroundingModule", "net": net}, "data": {"image_size": 32}}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    weights = build_net(TINY_NET, "test").state_dict()
    (run_dir / "checkpoints").mkdir()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {f"net.{key}": value for key, value in weights.items()}, "global_step": 3}, checkpoint)
    return checkpoint


def malicious_nets(canary: Path, marker: Path) -> dict[str, dict]:
    """Configs that, instantiated by Hydra, empty `canary` or create `marker` through a shell."""
    return {
        "open for writing": {"_target_": "builtins.open", "file": str(canary), "mode": "w"},
        "a shell pipe": {"_target_": "webdataset.gopen", "url": f"pipe:touch {marker}"},
        "the project's own shard opener": {"_target_": "synground.data.shards.open_shard", "url": f"pipe:touch {marker}"},
        "an unsafe torch.load": {"_target_": "torch.load", "f": str(canary), "weights_only": False},
        "an allowed builder with a nested target": {
            **TINY_NET,
            "vocabulary": {"_target_": "builtins.open", "file": str(canary), "mode": "w"},
        },
        "an allowed builder with a keyword it lacks": {**TINY_NET, "_args_": [str(canary)]},
        "a _partial_ builder": {**TINY_NET, "_partial_": True},
    }


@pytest.mark.parametrize("case", list(malicious_nets(Path("c"), Path("m"))))
def test_a_shared_runs_config_naming_any_other_callable_runs_nothing_on_every_loading_path(tmp_path, case):
    canary, marker = tmp_path / "canary.txt", tmp_path / "marker"
    canary.write_text("precious")
    checkpoint = write_run(tmp_path / "run", malicious_nets(canary, marker)[case])
    loaders = {
        "Grounder.load": lambda: Grounder.load(checkpoint),
        "export": lambda: export_model(checkpoint, tmp_path / "export"),
        "app": lambda: load_models([checkpoint]),
    }
    for name, load in loaders.items():
        with pytest.raises(UnsafeConfigError, match=r"config\.yaml: model\.net") as refused:
            load()
        assert "model.net" in str(refused.value), name
    assert canary.read_text() == "precious" and not marker.exists()


def test_ground_py_refuses_a_shared_run_whose_config_runs_a_shell_command(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = write_run(tmp_path / "run", {"_target_": "webdataset.gopen", "url": f"pipe:touch {marker}"})
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), "white").save(tmp_path / "images" / "photo.png")
    ground = subprocess.run(
        [
            sys.executable,
            "ground.py",
            f"ckpt_path={checkpoint}",
            f"images={tmp_path / 'images'}",
            "phrases=[x]",
            f"hydra.run.dir={tmp_path / 'g'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ground.returncode != 0 and "UnsafeConfigError" in ground.stderr, ground.stderr[-2000:]
    assert not marker.exists()


def test_the_allowed_builders_still_load_a_shared_run_and_its_arguments_are_type_checked(tmp_path):
    checkpoint = write_run(tmp_path / "run", {**TINY_NET, "_target_": "synground.models.blip.BlipGroundingModel.tiny"})
    grounder = Grounder.load(checkpoint)
    assert grounder.global_step == 3 and grounder.image_size == 32
    with pytest.raises(UnsafeConfigError, match=r"model\.net\.text_layers = '2; rm -rf' is not of type <class 'int'>"):
        build_net({**TINY_NET, "text_layers": "2; rm -rf"}, "config.yaml")
    with pytest.raises(UnsafeConfigError, match=r"model\.net\.heads = True is not of type"):
        build_net({**TINY_NET, "heads": True}, "config.yaml")


@pytest.mark.parametrize(
    "data,message",
    [
        ({"image_size": 32, "std": [0, 0, 0]}, r"std \[0, 0, 0\] has a value that is not positive"),
        ({"image_size": 32, "mean": [0.5, 0.5]}, r"mean \[0\.5, 0\.5\] is not three finite numbers"),
        ({"image_size": -4}, r"image_size -4 is not a positive whole number"),
    ],
)
def test_a_run_config_with_unusable_normalisation_or_size_is_refused_naming_it(tmp_path, data, message):
    checkpoint = write_run(tmp_path / "run", TINY_NET)
    config = tmp_path / "run" / ".hydra" / "config.yaml"
    config.write_text(OmegaConf.to_yaml({**OmegaConf.to_container(OmegaConf.load(config)), "data": data}))
    with pytest.raises(ValueError, match=rf"config\.yaml: {message}"):
        Grounder.load(checkpoint)
