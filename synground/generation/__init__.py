from synground.generation.shapes import ShapesGenerator

__all__ = ["ShapesGenerator"]
