"""RefCOCO / RefCOCO+ / RefCOCOg: `refs(<split_by>).p` with COCO's `instances.json` and the COCO images.

One record per image of the split; one region per referring expression (sentence) with its object's box.
The refs file is a Python pickle: it is read by an unpickler that builds only plain containers and numbers.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synground.data.readers.record import Record, require
from synground.data.schema import Region

log = logging.getLogger(__name__)


class PlainDataUnpickler(pickle.Unpickler):
    """Lists, dicts, tuples, strings, numbers, booleans and None only: any class or function is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: only plain data is accepted")


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    path = require(Path(path), "refs pickle")
    with open(path, "rb") as file:
        try:
            refs = PlainDataUnpickler(file, encoding="latin1").load()  # latin1: the files were pickled by Python 2
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise ValueError(f"{path} is not a plain-data refs pickle: {error}") from error
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"{path}: expected a list of refs (dicts), got {type(refs).__name__}")
    return refs


def refcoco_records(
    root: str | Path | None = None,
    split: str = "testA",
    dataset: str = "refcoco+",
    split_by: str = "unc",
    refs_file: str | Path | None = None,
    instances_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    issues: Counter[str] | None = None,
) -> Iterator[Record]:
    """Records of one split ('val', 'testA', 'testB', ...) in image-id order.

    `root` is laid out as the refer API's data folder (github.com/lichengunc/refer): `<root>/<dataset>/refs(<split_by>).p`
    and `<root>/<dataset>/instances.json` (from <dataset>.zip), the COCO train2014 images in
    `<root>/images/mscoco/images/train2014`. `refs_file`, `instances_file` and `image_dir` override single paths.
    """
    issues = Counter() if issues is None else issues
    if root is None and None in (refs_file, instances_file, image_dir):
        raise ValueError("give root (the refer API's data folder) or all of refs_file, instances_file and image_dir")
    root = Path(root) if root is not None else None
    refs_file = Path(refs_file) if refs_file else root / dataset / f"refs({split_by}).p"
    instances_file = Path(instances_file) if instances_file else root / dataset / "instances.json"
    image_dir = Path(image_dir) if image_dir else root / "images" / "mscoco" / "images" / "train2014"
    refs = load_refs(refs_file)
    try:
        instances = json.loads(require(instances_file, "COCO instances.json").read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{instances_file} is not valid JSON: {error}") from error
    image_dir = require(image_dir, "COCO train2014 image folder")
    images = {image["id"]: image for image in instances["images"]}
    boxes = {annotation["id"]: annotation["bbox"] for annotation in instances["annotations"]}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ref in refs:
        if ref.get("split") == split:
            by_image[ref["image_id"]].append(ref)
    if not by_image:
        splits = sorted({str(ref.get("split")) for ref in refs})
        raise ValueError(f"{refs_file} has no refs in split {split!r}; its splits are {splits}")
    for image_id in sorted(by_image):
        regions = []
        for ref in sorted(by_image[image_id], key=lambda ref: ref["ref_id"]):
            box = boxes.get(ref.get("ann_id"))
            if box is None or len(box) != 4:
                issues["malformed_annotation"] += 1
                log.warning("%s ref %s: no box for annotation %s; skipped", dataset, ref.get("ref_id"), ref.get("ann_id"))
                continue
            x, y, width, height = box
            regions += [Region(sentence["sent"], [[x, y, x + width, y + height]]) for sentence in ref["sentences"]]
        if image_id not in images:
            issues["malformed_annotation"] += 1
            log.warning("%s image %s is not in %s; skipped", dataset, image_id, instances_file)
            continue
        yield Record(
            key=f"coco-{image_id}",
            image_path=image_dir / images[image_id]["file_name"],
            caption="",
            regions=regions,
            source=f"{dataset}/{split}",
            provenance={"dataset": dataset, "split": split, "image_ids": [f"coco:{image_id}"]},
        )
