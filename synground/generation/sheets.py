"""Sample sheets of a shard set: samples drawn at random (seeded), and the rejected candidates generation kept, each
drawn as a PNG grid of images with their boxes (one colour per phrase) and their phrases below.

A sheet reads only what it draws: the positions are drawn from the manifest's per-shard counts, and only the shards
that hold them are opened, each read up to its last drawn sample; a set on object storage may hold millions.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import logging
import math
import random
import tarfile
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from synground.data.schema import GroundingSample, Region, region_from_record, sample_from_metadata
from synground.data.shards import open_shard
from synground.generation.writing import REJECTED_DIR

log = logging.getLogger(__name__)

COLUMNS = 8
PANEL_INCHES = 2.3  # the width of a cell; its image is a square of IMAGE_INCHES with the panel's title above
IMAGE_INCHES = 2.0
TITLE_INCHES = 0.6  # the sheet's title
LINE_POINTS = 10  # a line of text below an image
PHRASE_LINES = 6
THUMBNAIL = 256  # pixels: larger images are shrunk before drawing, their boxes stay in the image's own pixels
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
# what each reason's score and threshold are, for the title of its grid (reasons not listed show their name only)
REJECTION_CHECKS = {
    "no_description": "the description source gave nothing",
    "nan_image": "non-finite pixel values (score: their fraction)",
    "black_image": "a black image (score: its brightest pixel value, threshold: the most a black image has)",
    "no_phrases": "the LLM's answer held no phrase, also when asked again",
    "no_detection": "no box passed the detector (boxes: each phrase's best, score: the best of them, threshold: "
    "what a box needs to pass both score thresholds; a box may also fail the size limits)",
    "low_clip_score": "the CLIP image-description score (score) below min_score (threshold)",
    "near_duplicate": "within max_distance (threshold) bits of an earlier image of its shard (score: the dHash distance)",
    "no_layout": "the LLM's answer held no usable layout",
}


@dataclass
class Panel:
    """One cell of a sheet: a title, the image (None: there was none) with its regions, and lines of text below."""

    title: str
    image: Image.Image | None
    regions: list[Region]
    notes: list[str]


def draw_positions(counts: list[int], count: int, seed: int) -> list[tuple[int, int]]:
    """(shard index, position in the shard) of `count` samples (all, if there are fewer) drawn without replacement by
    `seed` from shards holding `counts` samples, in the order of the set. The same counts and seed draw the same."""
    starts = list(itertools.accumulate(counts, initial=0))
    total = starts[-1]
    positions = []
    for position in sorted(random.Random(seed).sample(range(total), min(count, total))):
        shard = bisect.bisect_right(starts, position) - 1
        positions.append((shard, position - starts[shard]))
    return positions


def drawn_samples(base: str, shards: list[dict[str, Any]], count: int, seed: int) -> list[GroundingSample]:
    """The samples at `draw_positions` of a set whose manifest lists `shards` (`base`: the set's directory or prefix,
    ending in its separator). Only the shards holding them are opened; an unreadable sample is skipped with a warning."""
    wanted: dict[int, set[int]] = {}
    for shard, position in draw_positions([entry["samples"] for entry in shards], count, seed):
        wanted.setdefault(shard, set()).add(position)
    samples = []
    for shard, positions in sorted(wanted.items()):
        url = f"{base}{shards[shard]['name']}"
        for key, members in _members_at(url, positions):
            try:
                samples.append(_decoded(key, members))
            except (OSError, ValueError, SyntaxError, KeyError) as error:
                log.warning("shard %s, sample %r left off the sample sheet: %s", url, key, error)
    return samples


def _members_at(url: str, positions: set[int]) -> Iterable[tuple[str, dict[str, bytes]]]:
    """(key, extension -> bytes) of the samples at `positions` (their order in the shard), read up to the last one."""
    found: dict[str, dict[str, bytes]] = {}
    order, previous, last = -1, None, max(positions)
    try:
        with open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if key != previous:  # the files of a sample are consecutive (WebDataset)
                    order, previous = order + 1, key
                    if order > last:
                        break
                if order in positions and member.isfile():
                    found.setdefault(key, {})[extension] = tar.extractfile(member).read()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"the manifest lists {url}, which does not exist") from error
    except tarfile.TarError as error:
        raise ValueError(f"shard {url} is unreadable: {error}") from error
    return found.items()


def _decoded(key: str, members: dict[str, bytes]) -> GroundingSample:
    image = Image.open(io.BytesIO(members["jpg"]))
    image.load()
    return sample_from_metadata(key, image.convert("RGB"), members["json"])


def sample_panel(sample: GroundingSample) -> Panel:
    return Panel(sample.key, sample.image, sample.regions, [textwrap.shorten(sample.caption, 40)] if sample.caption else [])


def rejected_panels(base: str, shards: list[dict[str, Any]], count: int, seed: int) -> dict[str, list[Panel]]:
    """Per rejection reason, `count` of the candidates kept while generating (all, if fewer), drawn by `seed` from the
    keys the manifest entries list (`kept_rejected`); a candidate whose files are missing is skipped with a warning."""
    keys: dict[str, list[str]] = {}
    for entry in shards:
        for reason, kept in entry.get("kept_rejected", {}).items():
            keys.setdefault(reason, []).extend(kept)
    panels = {}
    for reason, kept in sorted(keys.items()):
        panels[reason] = []
        for key in sorted(random.Random(seed).sample(sorted(kept), min(count, len(kept)))):
            url = f"{base}{REJECTED_DIR}/{reason}/{key}.json"
            try:
                panels[reason].append(_rejected_panel(url))
            except (OSError, ValueError, SyntaxError, KeyError) as error:
                log.warning("rejected candidate %s left off its sheet: %s", url, error)
    return {reason: found for reason, found in panels.items() if found}


def _rejected_panel(url: str) -> Panel:
    with open_shard(url) as file:
        record = json.loads(file.read())
    image = None
    if record["image"]:
        with open_shard(f"{url.rpartition('/')[0]}/{record['image']}") as file:
            image = Image.open(file)
            image.load()
    regions = [region_from_record(r) for r in record["regions"]]
    score, threshold = record["score"], record["threshold"]
    notes = [] if score is None else [f"score {score:.4g}" + ("" if threshold is None else f", threshold {threshold:.4g}")]
    if record["caption"]:
        notes.append(textwrap.shorten(record["caption"], 40))
    return Panel(record["key"], image, regions, notes)


def sheet(panels: list[Panel], title: str) -> Figure:
    """The panels in a grid of up to `COLUMNS` columns, each image with its boxes in its phrases' colours, the phrases
    (with their scores) below it in the same colours, then the panel's notes."""
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    text_inches = (max(min(len(p.regions), PHRASE_LINES + 1) + len(p.notes) for p in panels) + 1) * LINE_POINTS / 72
    cell = PANEL_INCHES + text_inches
    width, height = columns * PANEL_INCHES, rows * cell + TITLE_INCHES
    figure = Figure(figsize=(width, height), dpi=100)
    figure.suptitle(title, fontsize=10, wrap=True)
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        left = column * PANEL_INCHES + (PANEL_INCHES - IMAGE_INCHES) / 2
        bottom = height - TITLE_INCHES - (row + 1) * cell + text_inches
        _draw_panel(figure.add_axes((left / width, bottom / height, IMAGE_INCHES / width, IMAGE_INCHES / height)), panel)
    return figure


def _draw_panel(axes: Any, panel: Panel) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(panel.title, fontsize=7)
    if panel.image is None:
        axes.set_facecolor("#dddddd")
        axes.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, transform=axes.transAxes)
    else:
        width, height = panel.image.size
        thumbnail = panel.image.copy()
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        axes.imshow(thumbnail, extent=(0, width, height, 0))
        axes.set_aspect("equal")
    lines = []
    for index, region in enumerate(panel.regions[:PHRASE_LINES]):
        colour = COLOURS[index % len(COLOURS)]
        for x0, y0, x1, y1 in region.boxes:
            axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
        score = "" if region.score is None else f" {region.score:.2f}"
        no_box = "" if region.boxes else " (no box)"
        lines.append((textwrap.shorten(region.phrase, 34) + score + no_box, colour))
    if len(panel.regions) > PHRASE_LINES:
        lines.append((f"+{len(panel.regions) - PHRASE_LINES} more phrases", "#444444"))
    lines += [(note, "#444444") for note in panel.notes]
    for row, (text, colour) in enumerate(lines):
        axes.annotate(
            text,
            (0, 0),
            xycoords="axes fraction",
            xytext=(0, -3 - row * LINE_POINTS),
            textcoords="offset points",
            color=colour,
            fontsize=7,
            va="top",
        )
