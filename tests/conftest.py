import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch

from synground.models import AlbefGroundingModel, BlipGroundingModel

WORDS = ["the", "red", "blue", "circle", "square", "on", "left", "right"]


@pytest.fixture
def tiny_blip() -> BlipGroundingModel:
    torch.manual_seed(0)
    return BlipGroundingModel.tiny(WORDS, image_size=64, vision_width=32, text_width=32, heads=2, vision_layers=2, text_layers=3)


@pytest.fixture
def tiny_albef() -> AlbefGroundingModel:
    torch.manual_seed(0)
    return AlbefGroundingModel.tiny(
        WORDS,
        image_size=64,
        vision_width=32,
        text_width=32,
        heads=2,
        vision_layers=2,
        text_layers=4,
        fusion_layer=1,
        gradcam_layer=2,
    )


@pytest.fixture(params=["blip", "albef"])
def tiny_model(request):
    """Each tiny grounding model in turn: tests using it hold for every GroundingModel."""
    return request.getfixturevalue(f"tiny_{request.param}")
