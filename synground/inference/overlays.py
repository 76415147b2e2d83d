"""Pictures of grounding results: the heat map over the image, the predicted point, the box read off the map."""

from __future__ import annotations

from synground.extras import require

require("train", "synground.inference.overlays (matplotlib pictures)")

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from synground.inference.grounder import Grounding


def render_overlay(image: Image.Image, result: Grounding, alpha: float = 0.7, caption: bool = True) -> Image.Image:
    """`image` (as given to the Grounder) with `result`'s heat map blended in (jet: red is high; each pixel weighs the
    map by alpha times its value, so low values leave the image as it is), a white cross with a
    black outline at the predicted point, the map's box in green when there is one, and the phrase with its match
    score below the picture."""
    image = image.convert("RGB")
    if image.size != tuple(result.image_size):
        raise ValueError(
            f"the image is {image.size} but the result is for an image of {tuple(result.image_size)} (width, height)"
        )
    heat = result.heatmap.numpy()[..., None]
    weight = alpha * heat  # where the map is low the image shows as it is
    blended = (1 - weight) * np.asarray(image, dtype=np.float32) / 255 + weight * colormaps["jet"](heat[..., 0])[..., :3]
    picture = Image.fromarray((blended * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    side = max(image.size)
    width = max(1, round(side / 160))
    if result.box is not None:
        draw.rectangle(result.box, outline=(0, 255, 0), width=width + 1)
    x, y = result.point
    arm = max(4, round(side / 40))
    for colour, extra in (((0, 0, 0), 2), ((255, 255, 255), 0)):
        draw.line([(x - arm, y), (x + arm, y)], fill=colour, width=width + extra)
        draw.line([(x, y - arm), (x, y + arm)], fill=colour, width=width + extra)
    if not caption:
        return picture
    text = f"{result.phrase}  (match {result.score:.2f})"
    width = max(picture.width, round(draw.textlength(text)) + 8)  # a small image still shows the whole phrase
    band = Image.new("RGB", (width, 18 + picture.height), "white")
    band.paste(picture, ((width - picture.width) // 2, 0))
    ImageDraw.Draw(band).text((4, picture.height + 3), text, fill=(0, 0, 0))
    return band
