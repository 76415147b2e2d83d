"""Candidate boxes from the generation pipeline's open-vocabulary detector, for box accuracy from proposals:

    synground-detector-proposals data/refcoco_plus-testA proposals/refcoco_plus-testA.json
    python eval.py ... +data.proposals.refcoco_plus_testA=proposals/refcoco_plus-testA.json

Each image of the shard set is asked for all of its phrases at once, as the pipeline's detector stage asks a
synthetic image (`OpenVocabularyDetector`: thresholds, non-maximum suppression, size limits, at most
`--max-boxes-per-phrase` per phrase); every box kept for any phrase is a candidate of that image, so a phrase's
candidates include the other phrases' objects. An image with no box kept gets an empty list (its items are misses).
The file is written once, whole, at the end (synground.data.proposals has the format).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from synground.data.proposals import Proposals, write_proposals
from synground.data.schema import GroundingSample
from synground.data.shards import iterate_shard, resolve_shards
from synground.generation.detection import OpenVocabularyDetector
from synground.generation.runtime import StageClock


def detect_proposals(
    samples: Iterable[GroundingSample], detector: OpenVocabularyDetector, batch_size: int = 16, lost: list[str] | None = None
) -> Proposals:
    """{sample key: every box the detector keeps for any of the sample's phrases}; the keys of images the detector
    lost to an error go to `lost` instead."""
    proposals: Proposals = {}
    lost = [] if lost is None else lost
    clock = StageClock()
    batch: list[GroundingSample] = []

    def flush() -> None:
        images = [torch.from_numpy(np.array(sample.image.convert("RGB"))).permute(2, 0, 1) for sample in batch]
        phrases = [list(dict.fromkeys(region.phrase for region in sample.regions)) for sample in batch]
        for sample, regions in zip(batch, detector.detect(images, phrases, clock)):
            if regions is None:  # lost to an error the detector counted (out of memory): no entry, eval refuses the file
                lost.append(sample.key)
                continue
            boxes = [box for region in regions for box in region.boxes]
            proposals[sample.key] = list(map(list, dict.fromkeys(tuple(box) for box in boxes)))
        batch.clear()

    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return proposals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shards", help="a shard set: a directory with a manifest, a manifest file or a glob of .tar files")
    parser.add_argument("output", type=Path, help="the proposals JSON to write")
    parser.add_argument("--detector", default="IDEA-Research/grounding-dino-base", help="hub id or local directory")
    parser.add_argument("--box-threshold", type=float, default=0.35)
    parser.add_argument("--text-threshold", type=float, default=0.25)
    parser.add_argument("--max-boxes-per-phrase", type=int, default=3)
    parser.add_argument("--min-box-size", type=float, default=8.0, help="pixels: thinner boxes are dropped")
    parser.add_argument("--max-box-area", type=float, default=0.9, help="share of the image: larger boxes are dropped")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    detector = OpenVocabularyDetector(
        args.detector,
        box_threshold=args.box_threshold,
        text_threshold=args.text_threshold,
        max_boxes_per_phrase=args.max_boxes_per_phrase,
        min_box_size=args.min_box_size,
        max_box_area=args.max_box_area,
        device=args.device,
        batch_size=args.batch_size,
    )
    issues: Counter[str] = Counter()
    samples = (sample for shard in resolve_shards(args.shards) for sample in iterate_shard(shard, issues))
    lost: list[str] = []
    proposals = detect_proposals(tqdm(samples, desc="detecting", unit="image"), detector, args.batch_size, lost)
    write_proposals(proposals, args.output)
    empty = sum(not boxes for boxes in proposals.values())
    print(f"{args.output}: candidate boxes for {len(proposals)} images, {empty} of them without any")
    if issues:
        print(f"skipped while reading the shards: {dict(issues)}")
    if lost:
        print(f"{len(lost)} images lost to detector errors have no entry (e.g. {lost[0]}): rerun with a smaller --batch-size")


if __name__ == "__main__":
    main()
