from synground.extras import require

require("models", "synground.models (BLIP, ALBEF, Grad-CAM, the losses)")

from synground.models.albef import AlbefGroundingModel
from synground.models.base import GradCamOutput, GroundingModel
from synground.models.blip import BlipGroundingModel
from synground.models.module import GroundingModule

__all__ = ["AlbefGroundingModel", "BlipGroundingModel", "GradCamOutput", "GroundingModel", "GroundingModule"]
