"""A train.py run as it is left on disk, made in-process from a tiny random model (no training)."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from synground.conf import CONFIG_DIR
from synground.training import ConfigInCheckpoints

# a tiny BLIP of the offline demo's architecture and vocabulary (experiment=shapes), small enough to build in a second
TINY = [
    "experiment=shapes",
    "data.image_size=64",
    "model.net.vision_width=32",
    "model.net.vision_layers=2",
    "model.net.text_width=32",
    "model.net.heads=2",
    "model.net.vision_weights=null",  # the packaged encoder is the full-size one
]


def tiny_checkpoint(run_dir: Path, seed: int, carry_config: bool = False) -> Path:
    """A train.py checkpoint of a tiny random BLIP as a run leaves it: <run>/checkpoints/epoch000.ckpt with the run's
    config in <run>/.hydra/config.yaml, which is what Grounder.load reads. `carry_config`: the checkpoint carries the
    model's config too, as train.py's do (ConfigInCheckpoints); without, it is like one of an older version."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=TINY)
    torch.manual_seed(seed)
    net = hydra.utils.instantiate(cfg.model.net)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    checkpoint = run_dir / "checkpoints" / "epoch000.ckpt"
    checkpoint.parent.mkdir()
    content = {"state_dict": {f"net.{key}": value for key, value in net.state_dict().items()}, "global_step": 0}
    if carry_config:
        ConfigInCheckpoints(cfg).on_save_checkpoint(None, None, content)
    torch.save(content, checkpoint)
    return checkpoint
