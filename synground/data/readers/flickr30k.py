"""Flickr30k Entities: `Sentences/<id>.txt`, `Annotations/<id>.xml`, split lists, and the images.

One record per image; its regions are every (sentence, phrase) whose phrase has boxes, in sentence order, each with
all the boxes of that phrase (the pointing game's any-box rule). Phrases without boxes are skipped and counted.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

from synground.data.readers.record import Record, require
from synground.data.schema import Region

log = logging.getLogger(__name__)

PHRASE = re.compile(r"\[/EN#(\d+)/(\S+) ([^\]]+)\]")  # [/EN#18/people A man]


def parse_sentence(line: str) -> tuple[str, list[tuple[str, str]]]:
    """'[/EN#18/people A man] sleeps' -> ('A man sleeps', [('18', 'A man')])."""
    phrases = [(match.group(1), match.group(3).strip()) for match in PHRASE.finditer(line)]
    return PHRASE.sub(lambda match: match.group(3), line).strip(), phrases


def parse_boxes(xml_text: str) -> dict[str, list[list[float]]]:
    """Phrase id -> boxes, as 0-based xyxy: the file's 1-based inclusive pixel indices [xmin, xmax] span xmin-1 .. xmax."""
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    for element in ElementTree.fromstring(xml_text).iter("object"):
        box = element.find("bndbox")
        if box is None:  # <nobndbox> or <scene>: the phrase has no box
            continue
        xmin, ymin, xmax, ymax = (float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        for name in element.iter("name"):
            boxes[name.text.strip()].append([xmin - 1, ymin - 1, xmax, ymax])
    return boxes


def flickr30k_records(root: str | Path, split: str = "test", image_dir: str | Path | None = None,
                      issues: Counter[str] | None = None) -> Iterator[Record]:
    """Records of one split, in the order of `<root>/<split>.txt`; images in `image_dir` (default root/flickr30k-images)."""
    root = Path(root)
    issues = Counter() if issues is None else issues
    ids = require(root / f"{split}.txt", f"Flickr30k Entities split list '{split}'").read_text().split()
    sentences_dir = require(root / "Sentences", "Flickr30k Entities Sentences folder")
    annotations_dir = require(root / "Annotations", "Flickr30k Entities Annotations folder")
    images = require(Path(image_dir) if image_dir else root / "flickr30k-images", "Flickr30k image folder")
    for image_id in ids:
        try:
            boxes = parse_boxes(require(annotations_dir / f"{image_id}.xml", "annotation").read_text())
            lines = require(sentences_dir / f"{image_id}.txt", "sentences").read_text().splitlines()
        except FileNotFoundError as error:
            issues["missing_annotation"] += 1
            log.warning("flickr30k %s: %s; skipped", image_id, error)
            continue
        except (ElementTree.ParseError, TypeError, ValueError) as error:  # bad XML, a missing or non-numeric coordinate
            issues["malformed_annotation"] += 1
            log.warning("flickr30k %s: malformed %s (%s); skipped", image_id, annotations_dir / f"{image_id}.xml", error)
            continue
        sentences, regions = [], []
        for line in filter(str.strip, lines):
            text, phrases = parse_sentence(line)
            sentences.append(text)
            for phrase_id, phrase in phrases:
                if phrase_id in boxes:
                    regions.append(Region(phrase, boxes[phrase_id]))
                else:
                    issues["phrase_without_boxes"] += 1
        yield Record(key=f"flickr30k-{image_id}", image_path=images / f"{image_id}.jpg", caption=sentences[0] if sentences else "",
                     regions=regions, source=f"flickr30k/{split}",
                     provenance={"dataset": "flickr30k", "split": split, "image_ids": [f"flickr:{image_id}"], "sentences": sentences})
