"""The Grounder of an installed synground (`pip install 'synground[models]'`), as someone else's project calls it:
load each checkpoint or export named on the command line and ground every phrase of one shapes scene. Prints one JSON
line: {source: [[x, y], ...]}, the predicted points in the scene's pixels.

Run by benchmarks/consumer_install.py inside a fresh venv; the checkout computes the same points to compare.
"""

from __future__ import annotations

import json
import sys

from synground import Grounder
from synground.data import GenerationRequest
from synground.shapes import ShapesGenerator


def scene():
    """A shapes scene (seed 3, 64 px) and its phrases: the same on both sides of the comparison."""
    sample = ShapesGenerator(image_size=64).generate([GenerationRequest(key="consumer", seed=3)])[0]
    return sample.image, [region.phrase for region in sample.regions]


def points(source: str) -> list[list[float]]:
    image, phrases = scene()
    return [[float(value) for value in grounding.point] for grounding in Grounder.load(source)(image, phrases)]


if __name__ == "__main__":
    print(json.dumps({source: points(source) for source in sys.argv[1:]}))
