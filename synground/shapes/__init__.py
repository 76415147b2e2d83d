"""The procedural shapes world, the offline stand-in for real data: its scenes and triplet generator (world) and the
pretraining of vision encoders on it (pretraining)."""

from synground.shapes.world import ShapesGenerator

__all__ = ["ShapesGenerator"]
