"""Candidate boxes for box accuracy from proposals (AMC's box evaluation): per evaluation split, a proposals file or
the sample's own annotated boxes.

A proposals file is JSON, `{"<sample key>": [[x0, y0, x1, y1], ...], ...}`, boxes in the pixels of the stored image
(the image the sample key names, as `convert.py` and `generate.py` write it). `synground-amc-proposals`
writes one from AMC's detections file (`{"<COCO image id>": [[x, y, w, h, ...], ...]}`, the MAttNet detections its
RefCOCO+ evaluation reads); `synground-detector-proposals` from the open-vocabulary detector.
`annotations` takes every annotated box of the sample (every region's), the "ground-truth proposals" setting.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from synground.data.shards import ShardStore

ANNOTATIONS = "annotations"

Proposals = dict[str, list[list[float]]]


def check_boxes(boxes: object, where: str) -> list[list[float]]:
    """A list of finite xyxy boxes with x0 <= x1 and y0 <= y1; an error names `where` and what is wrong."""
    if not isinstance(boxes, list):
        raise ValueError(f"{where}: expected a list of [x0, y0, x1, y1] boxes, got {type(boxes).__name__}")
    checked = []
    for index, box in enumerate(boxes):
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            raise ValueError(f"{where}, box {index}: expected 4 finite numbers [x0, y0, x1, y1], got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{where}, box {index}: {box} has x1 < x0 or y1 < y0 (boxes are xyxy, not xywh)")
        checked.append([float(v) for v in box])
    return checked


def load_proposals(path: str | Path) -> Proposals:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"proposals file {path}: no such file (JSON {{sample key: [[x0, y0, x1, y1], ...]}}; "
            "synground-amc-proposals converts AMC's detections)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"proposals file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"proposals file {path}: expected an object {{sample key: boxes}}, got {type(data).__name__}")
    return {key: check_boxes(boxes, f"proposals file {path}, key {key!r}") for key, boxes in data.items()}


def from_amc_detections(detections: dict[str, list], key_prefix: str = "coco-") -> Proposals:
    """AMC's detections ({image id: [[x, y, w, h, ...], ...]}) keyed as our samples (`coco-<id>` for RefCOCO+)."""
    return {
        f"{key_prefix}{image_id}": check_boxes([[x, y, x + w, y + h] for x, y, w, h, *_ in boxes], f"image {image_id}")
        for image_id, boxes in detections.items()
    }


def write_proposals(proposals: Proposals, path: Path) -> None:
    """Writes the file whole or not at all (ShardStore's writes): a stopped run leaves no half-written file."""
    ShardStore(path.parent).write_bytes(path.name, json.dumps(proposals).encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a proposals file from AMC's detections file (xywh per COCO id).")
    parser.add_argument("detections", type=Path, help="AMC's det_file, e.g. dets/refcoco+_dets.json")
    parser.add_argument("output", type=Path, help="the proposals JSON to write (data.proposals.<split>=<it>)")
    parser.add_argument("--key-prefix", default="coco-", help="sample keys are <prefix><image id> (convert.py: coco-)")
    args = parser.parse_args(argv)
    proposals = from_amc_detections(json.loads(args.detections.read_text()), args.key_prefix)
    write_proposals(proposals, args.output)
    print(f"{args.output}: candidate boxes for {len(proposals)} images")


if __name__ == "__main__":
    main()
