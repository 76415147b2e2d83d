"""The procedural shapes world: scenes of coloured shapes with exact boxes, the offline stand-in for real data.

Each scene has 2-5 shapes; every shape gets the shortest description that is unique in its scene ("the red
circle", "the small red circle", "the red circle on the left"), so phrases are referring expressions. The style
knob gives two domains: `clean` (flat colours on a plain background) and `textured` (noisy, striped
backgrounds, shaded shapes), the offline analogue of synthetic vs real images. Scenes are a pure function of
the request seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from synground.data.schema import GenerationRequest, GroundingSample, Region

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": (0.07, 0.10), "large": (0.14, 0.19)}  # radius as a fraction of the image side
STYLES = ("clean", "textured")
# which phrases a scene keeps: all, or only those whose colour a shape of another kind in the scene shares (where a
# model that grounds the colour word alone is right at most half the time; a scene may then keep none)
PHRASES = ("all", "shared_colour")
# SelfEQ's paraphrases replace a phrase's object noun by a synonym (an LLM does it for real data); here the shape word,
# the colour word or both, from these lists. A model's vocabulary must hold them (experiment=shapes_selfeq lists them).
SYNONYMS = {
    "circle": ("disc", "dot"),
    "square": ("block", "tile"),
    "triangle": ("wedge", "delta"),
    "diamond": ("rhombus", "lozenge"),
    "red": ("scarlet", "crimson"),
    "green": ("emerald", "lime"),
    "blue": ("azure", "cobalt"),
    "yellow": ("golden", "lemon"),
    "purple": ("violet", "plum"),
    "orange": ("amber", "tangerine"),
}
PARAPHRASES = ("shape", "colour", "both")  # which words a paraphrase replaces
VERSION = 1  # bump when rendering changes, so provenance tells old scenes from new


class ShapesGenerator:
    """A `TripletGenerator` that draws scenes of shapes; deterministic per request seed."""

    def __init__(
        self,
        style: str = "clean",
        image_size: int = 128,
        min_shapes: int = 2,
        max_shapes: int = 5,
        colours: Sequence[str] = tuple(COLOURS),
        phrases: str = "all",
        paraphrases: str | None = None,
    ):
        if style not in STYLES:
            raise ValueError(f"unknown shapes style {style!r}; choose one of {STYLES}")
        if not 1 <= min_shapes <= max_shapes:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
        unknown = set(colours) - set(COLOURS)
        if unknown or not colours:
            raise ValueError(f"unknown shape colours {sorted(unknown)}; choose from {list(COLOURS)}")
        if phrases not in PHRASES:
            raise ValueError(f"unknown shapes phrases {phrases!r}; choose one of {PHRASES}")
        if paraphrases is not None and paraphrases not in PARAPHRASES:
            raise ValueError(f"unknown shapes paraphrases {paraphrases!r}; choose one of {PARAPHRASES}, or None for none")
        self.paraphrases = paraphrases
        self.phrases = phrases
        self.style = style
        self.colours = list(colours)
        self.image_size = image_size
        self.min_shapes, self.max_shapes = min_shapes, max_shapes

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GroundingSample]:
        return [self.scene(request.key, request.seed) for request in requests]

    def scene(self, key: str, seed: int) -> GroundingSample:
        rng = np.random.default_rng(seed)
        shapes = self._layout(rng)
        image = self._background(rng)
        draw = ImageDraw.Draw(image)
        for shape in shapes:
            self._draw(draw, shape, rng)
        if self.style == "textured":
            image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.9))))
        phrases = _describe(shapes)
        regions = [Region(phrase, [list(shape["box"])], None) for phrase, shape in zip(phrases, shapes)]
        if self.paraphrases:  # from a stream of its own, so a scene is the same with paraphrases or without
            words = np.random.default_rng([seed, 1])
            for region, shape in zip(regions, shapes):
                region.paraphrase = _paraphrase(region.phrase, shape, self.paraphrases, words)
        caption = "A picture of " + _join([_indefinite(p) for p in phrases]) + "."
        if self.phrases == "shared_colour":
            regions = [region for region, shape in zip(regions, shapes) if _colour_shared(shape, shapes)]
        provenance = {
            "generator": "shapes",
            "version": VERSION,
            "seed": int(seed),
            "style": self.style,
            "image_size": self.image_size,
        }
        if self.phrases != "all":
            provenance["phrases"] = self.phrases
        if self.paraphrases:
            provenance["paraphrases"] = self.paraphrases
        return GroundingSample(key, image, caption, regions, f"shapes-{self.style}", provenance)

    def _layout(self, rng: np.random.Generator) -> list[dict]:
        """Non-overlapping shapes whose (size, colour, shape) triples are unique; at most two share colour+shape."""
        side = self.image_size
        count = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        shapes: list[dict] = []
        for _ in range(200 * count):
            if len(shapes) == count:
                break
            size = str(rng.choice(list(SIZES)))
            colour, kind = str(rng.choice(self.colours)), str(rng.choice(SHAPES))
            same_kind = [s for s in shapes if (s["colour"], s["shape"]) == (colour, kind)]
            if len(same_kind) >= 2 or any(s["size"] == size for s in same_kind):
                continue
            radius = float(rng.uniform(*SIZES[size])) * side
            cx, cy = (float(v) for v in rng.uniform(radius + 1, side - radius - 1, size=2))
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            if any(_overlap(box, s["box"], margin=2) for s in shapes):
                continue
            shapes.append(
                {
                    "size": size,
                    "colour": colour,
                    "shape": kind,
                    "centre": (cx, cy),
                    "radius": radius,
                    "box": box,
                    "say_side": bool(rng.random() < 0.5),
                }
            )
        return shapes

    def _background(self, rng: np.random.Generator) -> Image.Image:
        side = self.image_size
        if self.style == "clean":
            return Image.new("RGB", (side, side), (235, 235, 235))
        base = rng.uniform(60, 200, size=3)
        y, x = np.mgrid[0:side, 0:side]
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
        stripes = 25 * np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period)
        noise = rng.normal(0, 18, size=(side, side, 3))
        pixels = base[None, None, :] + stripes[..., None] + noise
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    def _draw(self, draw: ImageDraw.ImageDraw, shape: dict, rng: np.random.Generator) -> None:
        colour = np.array(COLOURS[shape["colour"]], dtype=float)
        if self.style == "textured":
            colour = np.clip(colour * rng.uniform(0.8, 1.1) + rng.normal(0, 10, 3), 0, 255)
        outline = (30, 30, 30) if self.style == "textured" else None
        draw_shape(draw, shape["shape"], shape["box"], tuple(int(c) for c in colour), outline)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: Sequence[float], fill, outline=None) -> None:
    """A shape of `kind` filling its xyxy `box` (a triangle points up): the one geometry of scenes and of masks."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill, outline=outline)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline)
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill, outline=outline)


SKETCH_RADIUS = (0.08, 0.24)  # the pretraining world's shapes, as a fraction of the image side: a wider range
SKETCH_CONTRAST = 90  # least luminance difference between a shape's fill and the background at its centre


def sketch_scene(seed: int, image_size: int) -> tuple[Image.Image, list[tuple[str, tuple[float, float, float, float]]]]:
    """A scene of the encoder-pretraining world, which shares neither study domain's style: 1-4 shapes of the four
    kinds, filled with a random colour of any hue (the study draws six named ones) that stands out from the
    background, hatched in a darker shade, on a two-colour gradient with speckles. Returns the image and each shape's
    (kind, xyxy box); a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    side = image_size
    ends = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    along = np.clip(0.5 + (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle), 0, 1)[..., None]
    pixels = ends[0] * (1 - along) + ends[1] * along
    background = pixels.copy()
    speckles = rng.random((side, side)) < 0.02
    pixels[speckles] = rng.uniform(0, 255, size=(int(speckles.sum()), 3))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    shapes: list[tuple[str, tuple[float, float, float, float]]] = []
    count = int(rng.integers(1, 5))
    for _ in range(200 * count):
        if len(shapes) == count:
            break
        kind = str(rng.choice(SHAPES))
        radius = float(rng.uniform(*SKETCH_RADIUS)) * side
        cx, cy = (float(v) for v in rng.uniform(radius + 1, side - radius - 1, size=2))
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if any(_overlap(box, other, margin=2) for _, other in shapes):
            continue
        behind = _luminance(background[int(cy), int(cx)])
        fill = rng.uniform(0, 255, size=3)
        while abs(_luminance(fill) - behind) < SKETCH_CONTRAST:
            fill = rng.uniform(0, 255, size=3)
        draw_shape(draw, kind, box, tuple(int(c) for c in fill))
        mask = Image.new("L", (side, side), 0)
        draw_shape(ImageDraw.Draw(mask), kind, box, 255)
        period = int(rng.integers(4, 9))
        lines = Image.new("L", (side, side), 0)
        line_draw = ImageDraw.Draw(lines)
        for offset in range(-side, side, period):  # diagonal hatching, clipped to the shape
            line_draw.line([(offset, 0), (offset + side, side)], fill=255, width=1)
        hatch = Image.new("RGB", (side, side), tuple(int(c) for c in fill * 0.7))
        image.paste(hatch, (0, 0), Image.fromarray(np.minimum(np.asarray(mask), np.asarray(lines))))
        shapes.append((kind, box))
    return image, shapes


def _luminance(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, (0.299, 0.587, 0.114)))


def scene_shapes(sample: GroundingSample) -> list[tuple[str, str, list[float]]]:
    """(colour, kind, box) of each shape of a shapes scene, read off its phrases and boxes."""
    shapes = []
    for region in sample.regions:
        words = region.phrase.split()
        colour = next((w for w in words if w in COLOURS), None)
        kind = next((w for w in words if w in SHAPES), None)
        if colour is None or kind is None:
            raise ValueError(f"sample {sample.key}: phrase {region.phrase!r} names no shapes-world colour and shape")
        shapes.append((colour, kind, list(region.boxes[0])))
    return shapes


def shape_mask(kind: str, box: Sequence[float], image_size: int) -> np.ndarray:
    """[size, size] bool: the pixels the shape covers in its scene (drawn with the scenes' own geometry)."""
    mask = Image.new("L", (image_size, image_size), 0)
    draw_shape(ImageDraw.Draw(mask), kind, box, 255)
    return np.asarray(mask) > 0


def _describe(shapes: list[dict]) -> list[str]:
    phrases = []
    for shape in shapes:
        twins = [s for s in shapes if s is not shape and (s["colour"], s["shape"]) == (shape["colour"], shape["shape"])]
        if not twins:
            phrases.append(f"the {shape['colour']} {shape['shape']}")
        elif shape["say_side"] and abs(twins[0]["centre"][0] - shape["centre"][0]) > twins[0]["radius"] + shape["radius"]:
            side = "left" if shape["centre"][0] < twins[0]["centre"][0] else "right"
            phrases.append(f"the {shape['colour']} {shape['shape']} on the {side}")
        else:
            phrases.append(f"the {shape['size']} {shape['colour']} {shape['shape']}")
    return phrases


def _paraphrase(phrase: str, shape: dict, words: str, rng: np.random.Generator) -> str:
    """`phrase` with its shape word, colour word or both replaced by one of their SYNONYMS."""
    replaced = phrase.split()
    for kind in ("shape", "colour"):
        if words in (kind, "both"):
            word = shape[kind]
            replaced[replaced.index(word)] = str(rng.choice(SYNONYMS[word]))
    return " ".join(replaced)


def _colour_shared(shape: dict, shapes: list[dict]) -> bool:
    """Another shape of the scene has this shape's colour and another kind."""
    return any(other["colour"] == shape["colour"] and other["shape"] != shape["shape"] for other in shapes)


def _overlap(a: tuple, b: tuple, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _indefinite(phrase: str) -> str:
    rest = phrase.removeprefix("the ")
    return ("an " if rest[0] in "aeiou" else "a ") + rest


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
