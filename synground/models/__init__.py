from synground.models.albef import AlbefGroundingModel
from synground.models.base import GradCamOutput, GroundingModel
from synground.models.blip import BlipGroundingModel
from synground.models.module import GroundingModule

__all__ = ["AlbefGroundingModel", "BlipGroundingModel", "GradCamOutput", "GroundingModel", "GroundingModule"]
