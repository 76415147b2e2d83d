"""Visual Genome (`region_descriptions.json`, `image_data.json`, `VG_100K*/`) and AMC's training JSON.

Both files are streamed (ijson), so reading does not hold the whole (700 MB for VG) annotation file in memory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

from synground.data.readers.record import Record, require
from synground.data.schema import Region

log = logging.getLogger(__name__)


def stream_json_list(path: Path, what: str) -> Iterator[dict[str, Any]]:
    """The items of a top-level JSON array, one at a time; a malformed file is an error naming it."""
    with open(require(path, what), "rb") as file:
        try:
            yield from ijson.items(file, "item", use_float=True)
        except ijson.JSONError as error:
            raise ValueError(
                f"{path} is not a valid JSON list ({' '.join(str(error).split())}): is it truncated? Fix or download it again, then "
                "rerun the same command: finished shards are kept and the rest is converted"
            ) from error


def visual_genome_records(
    root: str | Path,
    region_descriptions: str | Path | None = None,
    image_data: str | Path | None = None,
    issues: Counter[str] | None = None,
) -> Iterator[Record]:
    """One record per image, in the order of region_descriptions.json; each region phrase with its one box."""
    root = Path(root)
    issues = Counter() if issues is None else issues
    images = {}  # image id -> (relative path, coco id, flickr id): small next to the region file
    for entry in stream_json_list(Path(image_data) if image_data else root / "image_data.json", "Visual Genome image_data.json"):
        image_id = entry.get("image_id", entry.get("id"))
        folder = (entry.get("url") or "").rstrip("/").split("/")[-2:-1] or ["VG_100K"]
        images[image_id] = (f"{folder[0]}/{image_id}.jpg", entry.get("coco_id"), entry.get("flickr_id"))
    path = Path(region_descriptions) if region_descriptions else root / "region_descriptions.json"
    for entry in stream_json_list(path, "Visual Genome region_descriptions.json"):
        image_id = entry.get("id", entry.get("image_id"))
        if image_id not in images:
            issues["malformed_annotation"] += 1
            log.warning("visual genome image %s is not in image_data.json; skipped", image_id)
            continue
        regions = []
        for region in entry.get("regions", []):
            try:
                x, y, width, height = (float(region[k]) for k in ("x", "y", "width", "height"))
                regions.append(Region(str(region["phrase"]).strip(), [[x, y, x + width, y + height]]))
            except (KeyError, TypeError, ValueError):
                issues["malformed_annotation"] += 1
        relative, coco_id, flickr_id = images[image_id]
        ids = [f"vg:{image_id}"] + [f"{name}:{value}" for name, value in (("coco", coco_id), ("flickr", flickr_id)) if value]
        yield Record(
            key=f"vg-{image_id}",
            image_path=root / relative,
            caption="",
            regions=regions,
            source="visual_genome",
            provenance={"dataset": "visual_genome", "image_ids": ids},
        )


def amc_json_records(
    json_file: str | Path, image_root: str | Path, name: str = "amc", issues: Counter[str] | None = None
) -> Iterator[Record]:
    """AMC's training list of {"image", "caption": str | [str], "bbox": [[x0, y0, x1, y1], ...]}.

    Every caption of an entry describes the same object, so each becomes a region with all the entry's boxes
    (the reference draws one caption and one box at random). Consecutive entries of one image make one record.
    """
    issues = Counter() if issues is None else issues
    image_root = require(Path(image_root), "AMC image root")
    current: Record | None = None
    for index, entry in enumerate(stream_json_list(Path(json_file), "AMC training JSON")):
        try:
            captions = [entry["caption"]] if isinstance(entry["caption"], str) else list(entry["caption"])
            boxes = entry["bbox"]
            if boxes and isinstance(boxes[0][0], list):  # boxes grouped per phrase: any box counts
                boxes = [box for group in boxes for box in group]
            boxes = [[float(v) for v in box] for box in boxes]
            image = str(entry["image"])
        except (KeyError, TypeError, ValueError, IndexError):
            issues["malformed_annotation"] += 1
            log.warning("%s entry %d is malformed: %s; skipped", json_file, index, json.dumps(entry)[:200])
            continue
        if not boxes:
            issues["phrase_without_box"] += len(captions)
            continue
        regions = [Region(caption.strip(), boxes) for caption in captions]
        if current is not None and current.provenance["image"] == image:
            current.regions += regions
            continue
        if current is not None:
            yield current
        current = Record(
            key=f"{name}-{index:09d}",
            image_path=image_root / image,
            caption=captions[0],
            regions=regions,
            source=name,
            provenance={"dataset": name, "image": image, "image_ids": []},
        )
    if current is not None:
        yield current
