"""One image's annotations as a reader found them, and turning it into a GroundingSample (image opened, boxes checked)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synground.data.schema import GroundingSample, Region, decode_image
from synground.data.transforms import clean_regions

log = logging.getLogger(__name__)


@dataclass
class Record:
    """Annotations only: cheap to hold, so a conversion can skip finished shards without opening their images.

    `provenance["image_ids"]` names the image in every dataset it is known in ("coco:139", "vg:1", "flickr:36979"),
    which the leakage report compares across training and evaluation sets.
    """

    key: str
    image_path: Path
    caption: str
    regions: list[Region]
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)


def require(path: Path, what: str) -> Path:
    """The path if it exists, else an error naming what is missing and where it was looked for."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: looked for {path}")
    return path


def load_record(record: Record, issues: Counter[str]) -> GroundingSample | None:
    """Open and fully decode the image, clip boxes to it; None (counted by reason) if nothing usable is left."""
    if not record.image_path.is_file():
        issues["missing_image"] += 1
        log.warning("%s: image %s not found; skipped", record.key, record.image_path)
        return None
    try:
        image = decode_image(record.image_path)  # decodes now: a truncated, corrupt or bomb file fails here, not in training
    except ValueError as error:
        issues["unreadable_image"] += 1
        log.warning("%s: cannot read image %s (%s); skipped", record.key, record.image_path, error)
        return None
    sample = GroundingSample(record.key, image, record.caption, record.regions, record.source, record.provenance)
    sample.regions = clean_regions(sample, issues)
    if not sample.regions:
        issues["image_without_regions"] += 1
        return None
    return sample
