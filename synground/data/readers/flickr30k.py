"""Flickr30k Entities: `Sentences/<id>.txt`, `Annotations/<id>.xml`, split lists, and the images.

One record per image; its regions are every (sentence, phrase) whose phrase has boxes, in sentence order, each with
all the boxes of that phrase (the pointing game's any-box rule). Boxes follow the official flickr30k_entities
utility (get_annotations subtracts 1 from all four coordinates), which published pointing-game numbers use.
Phrases without boxes are skipped and counted by kind: notvisual, scene, or no box; so is a malformed object.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from synground.data.readers.record import Record, require
from synground.data.schema import Region

log = logging.getLogger(__name__)

PHRASE = re.compile(r"\[/EN#(\d+)/(\S+) ([^\]]+)\]")  # [/EN#18/people A man], [/EN#0/notvisual it]


def parse_sentence(line: str) -> tuple[str, list[tuple[str, str, str]]]:
    """'[/EN#18/people A man] sleeps' -> ('A man sleeps', [('18', 'people', 'A man')])."""
    phrases = [(match.group(1), match.group(2), match.group(3).strip()) for match in PHRASE.finditer(line)]
    return PHRASE.sub(lambda match: match.group(3), line).strip(), phrases


def parse_boxes(xml_text: str, issues: Counter[str]) -> tuple[dict[str, list[list[float]]], set[str]]:
    """(phrase id -> boxes, ids of phrases marked as the scene). Boxes are the official utility's: xmin-1, ymin-1,
    xmax-1, ymax-1 of the file's 1-based values, so the strict inside rule leaves out the right and bottom rows.
    An object without a phrase id or with a missing or non-numeric coordinate is skipped and counted."""
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    scene: set[str] = set()
    for element in ElementTree.fromstring(xml_text).iter("object"):
        names = [name.text.strip() for name in element.iter("name") if name.text and name.text.strip()]
        if not names:
            issues["malformed_object"] += 1
            continue
        box = element.find("bndbox")
        if box is None:  # <nobndbox>1</nobndbox>, or <scene>1</scene> for the whole picture
            if (element.findtext("scene") or "").strip() == "1":
                scene.update(names)
            continue
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(tag)) - 1 for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            issues["malformed_object"] += 1
            continue
        for name in names:
            boxes[name].append([xmin, ymin, xmax, ymax])
    return boxes, scene


def flickr30k_records(
    root: str | Path, split: str = "test", image_dir: str | Path | None = None, issues: Counter[str] | None = None
) -> Iterator[Record]:
    """Records of one split, in the order of `<root>/<split>.txt`; images in `image_dir` (default root/flickr30k-images)."""
    root = Path(root)
    issues = Counter() if issues is None else issues
    split_list = require(root / f"{split}.txt", f"Flickr30k Entities split list '{split}'")
    ids = split_list.read_text().split()
    if not ids:
        raise ValueError(f"the Flickr30k Entities split '{split}' is empty: {split_list} lists no image ids")
    sentences_dir = require(root / "Sentences", "Flickr30k Entities Sentences folder")
    annotations_dir = require(root / "Annotations", "Flickr30k Entities Annotations folder")
    images = require(Path(image_dir) if image_dir else root / "flickr30k-images", "Flickr30k image folder")
    for image_id in ids:
        try:
            boxes, scene = parse_boxes(require(annotations_dir / f"{image_id}.xml", "annotation").read_text(), issues)
            lines = require(sentences_dir / f"{image_id}.txt", "sentences").read_text().splitlines()
        except FileNotFoundError as error:
            issues["missing_annotation"] += 1
            log.warning("flickr30k %s: %s; skipped", image_id, error)
            continue
        except ElementTree.ParseError as error:
            issues["malformed_annotation"] += 1
            log.warning("flickr30k %s: malformed %s (%s); skipped", image_id, annotations_dir / f"{image_id}.xml", error)
            continue
        sentences, regions = [], []
        for line in filter(str.strip, lines):
            text, phrases = parse_sentence(line)
            sentences.append(text)
            for phrase_id, kinds, phrase in phrases:
                if phrase_id in boxes:
                    regions.append(Region(phrase, boxes[phrase_id]))
                elif "notvisual" in kinds.split("/"):
                    issues["phrase_notvisual"] += 1
                elif phrase_id in scene:
                    issues["phrase_scene"] += 1
                else:
                    issues["phrase_without_box"] += 1
        yield Record(
            key=f"flickr30k-{image_id}",
            image_path=images / f"{image_id}.jpg",
            caption=sentences[0] if sentences else "",
            regions=regions,
            source=f"flickr30k/{split}",
            provenance={"dataset": "flickr30k", "split": split, "image_ids": [f"flickr:{image_id}"], "sentences": sentences},
        )
