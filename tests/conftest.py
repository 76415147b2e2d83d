import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch

from synground.models import BlipGroundingModel


@pytest.fixture
def tiny_blip() -> BlipGroundingModel:
    torch.manual_seed(0)
    return BlipGroundingModel.tiny(["the", "red", "blue", "circle", "square", "on", "left", "right"], image_size=64,
                                   vision_width=32, text_width=32, heads=2, vision_layers=2, text_layers=2)
