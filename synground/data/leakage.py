"""Leakage between training data and evaluation splits: shared image ids and near-duplicate images.

    synground-leakage --train data/visual_genome data/synthetic \\
        --eval data/refcoco_plus-testA data/refcoco_plus-testB data/flickr30k-test --exclude-file data/leaked_keys.txt

A training sample leaks when it names an image an evaluation sample also names (`provenance["image_ids"]`, e.g.
"coco:139": Visual Genome and RefCOCO+ share COCO images; synthetic samples name the image their description came
from) or when its image is a near duplicate of an evaluation image (64-bit difference hashes at most
`max_distance` bits apart). Counts are printed per (training set, evaluation split); the leaked training keys can be
written to a file that `GroundingDataModule(exclude_keys=...)` (`data.exclude_keys=...`) drops from training.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from synground.data.shards import iterate_shard, listed_shards
from synground.files import write_atomic


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: is each pixel of a 9x8 greyscale thumbnail brighter than its right neighbour?"""
    pixels = list(image.convert("L").resize((9, 8), Image.BILINEAR).getdata())
    bits = [pixels[row * 9 + col] > pixels[row * 9 + col + 1] for row in range(8) for col in range(8)]
    return sum(bit << index for index, bit in enumerate(bits))


@dataclass
class ImageIndex:
    """Image ids and hashes of one evaluation split, with hash bands for near-duplicate lookup."""

    name: str
    ids: set[str]
    hashes: list[int]
    max_distance: int
    slices: list[tuple[int, int]]  # the bit ranges of the bands
    bands: list[dict[int, list[int]]]  # band -> band value -> positions in hashes


def band_slices(max_distance: int) -> list[tuple[int, int]]:
    """max_distance + 1 bit ranges covering 64 bits: two hashes within max_distance agree exactly on at least one."""
    count = max_distance + 1
    edges = [round(64 * i / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def index_split(name: str, source: str, max_distance: int, skipped: Counter[str]) -> ImageIndex:
    """The split's index; what its shards could not give (corrupt samples, unreadable shards) is counted in `skipped`."""
    ids, hashes, seen = set(), [], set()
    for shard, entry in listed_shards(source).items():
        for sample in iterate_shard(shard, skipped, entry):
            ids.update(sample.provenance.get("image_ids", []))
            value = difference_hash(sample.image)
            if value not in seen:
                seen.add(value)
                hashes.append(value)
    slices, bands = band_slices(max_distance), []
    for start, end in slices:
        table: dict[int, list[int]] = defaultdict(list)
        for position, value in enumerate(hashes):
            table[band_value(value, start, end)].append(position)
        bands.append(table)
    return ImageIndex(name, ids, hashes, max_distance, slices, bands)


def band_value(value: int, start: int, end: int) -> int:
    return (value >> start) & ((1 << (end - start)) - 1)


def is_near_duplicate(value: int, index: ImageIndex) -> bool:
    for (start, end), table in zip(index.slices, index.bands):
        for position in table.get(band_value(value, start, end), ()):
            if (value ^ index.hashes[position]).bit_count() <= index.max_distance:
                return True
    return False


def leakage_report(
    train: dict[str, str], evaluation: dict[str, str], max_distance: int = 4
) -> tuple[dict, set[str], dict[str, dict[str, int]]]:
    """({training set: {eval split: {"shared_image_id": n, "near_duplicate": n}, "samples": n}}, leaked training keys,
    {set: {reason: n}} what reading each set skipped: a sample that cannot be read is not compared, so it is counted)."""
    skipped = {name: Counter() for name in [*evaluation, *train]}
    indexes = [index_split(name, source, max_distance, skipped[name]) for name, source in evaluation.items()]
    report: dict[str, dict] = {}
    leaked: set[str] = set()
    for train_name, source in train.items():
        counts: dict[str, Counter] = {index.name: Counter() for index in indexes}
        samples = 0
        for shard, entry in tqdm(listed_shards(source).items(), desc=f"leakage {train_name}", unit="shard"):
            for sample in iterate_shard(shard, skipped[train_name], entry):
                samples += 1
                ids, value = set(sample.provenance.get("image_ids", [])), difference_hash(sample.image)
                for index in indexes:
                    shared = bool(ids & index.ids)
                    near = is_near_duplicate(value, index)
                    counts[index.name].update(shared_image_id=shared, near_duplicate=near, leaked=shared or near)
                    if shared or near:
                        leaked.add(sample.key)
        report[train_name] = {"samples": samples, **{name: dict(count) for name, count in counts.items()}}
    return report, leaked, {name: dict(counts) for name, counts in skipped.items() if counts}


def format_report(report: dict) -> str:
    lines = [
        "| training set | samples | evaluation split | shared image id | near duplicate | leaked |",
        "|---|---|---|---|---|---|",
    ]
    for train_name, result in report.items():
        for split, counts in result.items():
            if split != "samples":
                lines.append(
                    f"| {train_name} | {result['samples']} | {split} | {counts.get('shared_image_id', 0)} | "
                    f"{counts.get('near_duplicate', 0)} | {counts.get('leaked', 0)} |"
                )
    return "\n".join(lines)


def named_sources(paths: list[str]) -> dict[str, str]:
    return {Path(path.split("{")[0].rstrip("/*")).name or path: path for path in paths}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Leakage between training shards and evaluation shards.")
    parser.add_argument("--train", nargs="+", required=True, help="training shard sets (directories, manifests, globs)")
    parser.add_argument("--eval", nargs="+", required=True, help="evaluation shard sets")
    parser.add_argument("--max-distance", type=int, default=4, help="Hamming distance of hashes that counts as a near duplicate")
    parser.add_argument("--exclude-file", help="write the leaked training keys here, one per line (for data.exclude_keys)")
    parser.add_argument("--output", help="write the report as JSON here")
    args = parser.parse_args(argv)
    report, leaked, skipped = leakage_report(named_sources(args.train), named_sources(args.eval), args.max_distance)
    print(format_report(report))
    print(f"{len(leaked)} training samples leak into the evaluation splits")
    for name, counts in skipped.items():
        print(f"{name}: skipped while reading (not compared): {counts}")
    if args.exclude_file:
        write_atomic(args.exclude_file, "".join(f"{key}\n" for key in sorted(leaked)))
        print(f"their keys: {args.exclude_file} (train with data.exclude_keys={args.exclude_file})")
    if args.output:
        write_atomic(args.output, json.dumps({"report": report, "leaked": len(leaked), "skipped": skipped}, indent=2) + "\n")


if __name__ == "__main__":
    main()
