"""The one sample format used everywhere: in memory, in shards, and between pipeline stages."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

from PIL import Image

Box = list[float]  # absolute pixel [x0, y0, x1, y1] in the coordinates of the stored image


@dataclass
class Region:
    phrase: str
    boxes: list[Box]
    score: float | None = None
    paraphrase: str | None = None  # the phrase with its object noun replaced by a synonym (SelfEQ's training pairs)


@dataclass
class GroundingSample:
    key: str
    image: Image.Image
    caption: str
    regions: list[Region]
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationRequest:
    """What a generator is asked to turn into one sample; generators use the fields they need."""

    key: str
    seed: int
    index: int | None = None  # position in a numbered set (shard writing); None for endless on-the-fly requests
    description: str | None = None
    concepts: list[str] | None = None
    image: Image.Image | None = None


@runtime_checkable
class TripletGenerator(Protocol):
    """Anything that turns requests into samples: the SynGround pipeline, GLIGEN layouts, procedural shapes."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GroundingSample]: ...


def box_problem(box: Sequence[float]) -> str | None:
    """What makes a stored box unusable, or None: it must be 4 finite numbers. NaN compares false with every bound and
    inf clips to an edge, so no later check (clipping, degenerate size) would catch either."""
    try:
        if len(box) != 4:
            return f"{len(box)} numbers instead of 4"
        if not all(math.isfinite(value) for value in box):
            return "not finite"
    except TypeError:
        return "not numbers"
    return None


def validate_key(key: str) -> str:
    # WebDataset groups the files of one sample by the name before the first dot.
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
    return key


def decode_image(file: str | os.PathLike | BinaryIO) -> Image.Image:
    """A sample's image, opened and decoded now; ValueError for anything else: a truncated or corrupt file, or a
    decompression bomb. PIL's bomb warning (an image between MAX_IMAGE_PIXELS and twice that) counts as a bomb too:
    PIL would decode it anyway, gigabytes for one sample of a dataset of photos."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"unreadable image ({type(error).__name__}: {error})") from error
    return image


def sample_metadata(sample: GroundingSample) -> dict[str, Any]:
    """The `<key>.json` record of a sample in a shard; ValueError naming the key for a box that is not 4 finite numbers."""
    for index, region in enumerate(sample.regions):
        for box in region.boxes:
            problem = box_problem(box)
            if problem:
                raise ValueError(
                    f"sample {sample.key!r}, region {index} ({region.phrase!r}): box {box} is {problem}; a box is 4 finite "
                    "pixel coordinates x0, y0, x1, y1: drop or mend it where the sample is made (clean_regions drops it)"
                )
    return {
        "caption": sample.caption,
        "regions": [region_record(region) for region in sample.regions],
        "width": sample.image.width,
        "height": sample.image.height,
        "source": sample.source,
        "provenance": sample.provenance,
    }


def region_record(region: Region) -> dict[str, Any]:
    """A region as the JSON record stores it; "paraphrase" only where there is one, so records without stay as they were."""
    record = {"phrase": region.phrase, "boxes": region.boxes, "score": region.score}
    if region.paraphrase is not None:
        record["paraphrase"] = region.paraphrase
    return record


def add_paraphrases(
    items: Sequence[Any], seeds: Sequence[int], paraphrase: Callable[[Sequence[str], Sequence[int]], list[str | None]]
) -> None:
    """Set the paraphrase of every region of `items` (samples, or readers' records: anything with `regions`) in place,
    asking `paraphrase(phrases, seeds)` once for all of them, each phrase with its item's seed."""
    regions = [region for item in items for region in item.regions]
    found = paraphrase([region.phrase for region in regions], [seed for item, seed in zip(items, seeds) for _ in item.regions])
    for region, text in zip(regions, found):
        region.paraphrase = text


def region_from_record(record: dict[str, Any]) -> Region:
    paraphrase = record.get("paraphrase")
    if paraphrase is not None and not isinstance(paraphrase, str):
        raise TypeError(f"the paraphrase of {record.get('phrase')!r} is {paraphrase!r}, not text")
    boxes = [list(map(float, box)) for box in record["boxes"]]
    return Region(str(record["phrase"]), boxes, record.get("score"), paraphrase or None)


def sample_from_metadata(key: str, image: Image.Image, raw_json: bytes) -> GroundingSample:
    """Inverse of `sample_metadata`; raises ValueError naming the key when the record is malformed."""
    try:
        record = json.loads(raw_json)
        regions = [region_from_record(region) for region in record["regions"]]
        for index, region in enumerate(regions):  # a box of another length is the reader's to count (box_malformed)
            for box in region.boxes:
                if not all(math.isfinite(value) for value in box):
                    raise ValueError(f"region {index} ({region.phrase!r}) has a box that is not finite: {box}")
        stated = (record.get("width"), record.get("height"))
        if stated != (None, None) and stated != image.size:  # its boxes are in the coordinates of another image
            raise ValueError(f"the record is of a {stated[0]} x {stated[1]} image, the image is {image.width} x {image.height}")
        return GroundingSample(
            key=key,
            image=image,
            caption=str(record.get("caption", "")),
            regions=regions,
            source=str(record.get("source", "")),
            provenance=dict(record.get("provenance", {})),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"sample {key!r}: malformed JSON record ({type(error).__name__}: {error})") from error


class SkipCounts(Counter):
    """What reading skipped, by reason, that also knows WHICH sample or shard each skip was (`faults`: one
    "<reason> <where>" string per fault). Training meets a bad sample in every pass of its endless stream, and with
    more workers in more passes; its faults, gathered from every worker and rank, count each bad sample once per
    epoch. A plain Counter counts every skip (an evaluation split reads each sample once)."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: set[str] = set()

    def clear(self) -> None:
        super().clear()
        self.faults.clear()


def count_skip(issues: Counter[str], reason: str, *where: object) -> None:
    """One skip of `reason` at `where` (shard, key, region and box index...): named in `issues.faults` when it keeps
    them (SkipCounts), else counted."""
    faults = getattr(issues, "faults", None)
    if faults is not None and where:
        faults.add(" ".join([reason, *map(str, where)]))
    else:
        issues[reason] += 1
