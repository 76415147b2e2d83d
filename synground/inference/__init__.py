"""Using a trained model: the Grounder (load a checkpoint or an export, ground phrases in images), grounding files in
bulk (batch, what ground.py runs), exports and their model cards (export), pictures of the results (overlays) and the
web demo's logic (app)."""

from synground.extras import require

require("models", "synground.inference (the Grounder)")

from synground.inference.grounder import Grounder, Grounding

__all__ = ["Grounder", "Grounding"]
