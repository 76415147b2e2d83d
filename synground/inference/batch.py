"""What `python ground.py` does: ground every (image, phrase) pair of files, writing overlay PNGs and results.jsonl.

Pairs: `images` is a file, a folder (its images, sorted) or a glob; `phrases` is one phrase or a list (each grounded
in every image), or a .txt file whose lines are either a phrase (for every image) or `<image file name><TAB><phrase>`
(for that image only). results.jsonl gets one line per pair as it is done, so a stopped run keeps its results, and a
rerun into the same output directory skips the pairs already there: an image is known by its absolute path, however
it was spelt (a file of an earlier version, with the paths as given, resumes when run from the same directory).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from glob import glob
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from tqdm import tqdm

from synground.inference.grounder import Grounder, open_image
from synground.inference.overlays import render_overlay
from synground.runs import demo_checkpoint

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
RESULTS_NAME = "results.jsonl"


def image_files(images: str) -> list[Path]:
    """The image files `images` names: a file, a folder (its files with an image suffix, sorted) or a glob."""
    path = Path(images).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(file for file in path.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"images={images}: the folder has no files ending in {', '.join(sorted(IMAGE_SUFFIXES))}")
        return found
    found = sorted(Path(name) for name in glob(str(path)) if Path(name).is_file())
    if not found:
        raise FileNotFoundError(f"images={images}: no such file or folder, and no file matches it as a glob")
    return found


def pairs_of(images: list[Path], phrases: str | Sequence[str]) -> list[tuple[Path, str]]:
    """(image, phrase) pairs, image by image, in the order of `images` (see the module's docstring for `phrases`)."""
    every: list[str] = []
    by_name: dict[str, list[str]] = {}
    if isinstance(phrases, str) and phrases.endswith((".txt", ".tsv")):
        phrase_file = Path(phrases).expanduser()
        if not phrase_file.is_file():
            raise FileNotFoundError(f"phrases={phrases}: no such file")
        names = {image.name for image in images}
        for number, line in enumerate(phrase_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if "\t" in line:
                name, phrase = (part.strip() for part in line.split("\t", 1))
                if Path(name).name not in names:
                    raise ValueError(f"{phrase_file}:{number}: no image named {name!r} among the {len(images)} images given")
                if not phrase:
                    raise ValueError(f"{phrase_file}:{number}: the phrase for {name} is empty: write it after the tab")
                by_name.setdefault(Path(name).name, []).append(phrase)
            else:
                every.append(line.strip())
    else:
        every = [phrases] if isinstance(phrases, str) else [str(phrase) for phrase in phrases]
    for index, phrase in enumerate(every):
        if not phrase.strip():
            raise ValueError(f"phrases: phrase {index} is empty")
    pairs = [(image, phrase) for image in images for phrase in [*every, *by_name.get(image.name, [])]]
    if not pairs:
        raise ValueError("no (image, phrase) pairs: give phrases=<phrase>, a list, or a .txt file of phrases")
    return pairs


def ground_files(
    grounder: Grounder,
    pairs: list[tuple[Path, str]],
    output_dir: Path,
    boxes: bool = False,
    box_threshold: float = 0.5,
    overlays: bool = True,
) -> Path:
    """Ground `pairs` batch by batch; append each result to output_dir/results.jsonl and write its overlay PNG."""
    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / RESULTS_NAME
    done = _done_pairs(results_path)
    todo = [(index, image, phrase) for index, (image, phrase) in enumerate(pairs) if (_identity(image), phrase) not in done]
    if done:
        log.info("%d of %d pairs already in %s: skipped", len(pairs) - len(todo), len(pairs), results_path)
    if overlays:
        (output_dir / "overlays").mkdir(exist_ok=True)
    with results_path.open("a", encoding="utf-8") as results, tqdm(total=len(todo), desc="grounding", unit="pair") as bar:
        for batch in _batches(todo, grounder.batch_size):
            opened = {image: open_image(image, str(image), grounder.max_image_pixels) for _, image, _ in batch}
            found = grounder([opened[image] for _, image, _ in batch], [phrase for _, _, phrase in batch], boxes, box_threshold)
            for (index, image, phrase), result in zip(batch, found):
                record = {**result.to_dict(), "image": _identity(image), "model": grounder.name}
                if overlays:
                    overlay = output_dir / "overlays" / f"{index:06d}_{image.stem}_{_slug(phrase)}.png"
                    render_overlay(opened[image], result).save(overlay)
                    record["overlay"] = str(overlay.relative_to(output_dir))
                result.__dict__.pop("heatmap", None)  # its full-size map, cached by drawing it: 4 bytes a pixel per pair
                results.write(json.dumps(record) + "\n")
            results.flush()
            bar.update(len(batch))
    return results_path


def _done_pairs(results_path: Path) -> set[tuple[str, str]]:
    """The (image, phrase) pairs results_path holds. A last line without its newline (a run stopped or a disk filled
    while writing it) is cut off, so its pair is grounded again and the next record starts a line of its own."""
    if not results_path.is_file():
        return set()
    text = results_path.read_bytes()
    complete = text.rfind(b"\n") + 1
    if complete < len(text):
        log.warning(
            "%s: its last line is torn (%d bytes without a newline, a run stopped while writing it): cut off, its pair "
            "is grounded again: %s",
            results_path,
            len(text) - complete,
            text[complete:].decode("utf-8", "replace"),
        )
        with results_path.open("r+b") as results:
            results.truncate(complete)
    done = set()
    for number, line in enumerate(text[:complete].split(b"\n")[:-1], 1):
        try:
            record = json.loads(line)
            done.add((_identity(record["image"]), record["phrase"]))
        except (ValueError, TypeError, KeyError) as error:  # not JSON, not UTF-8, not a record
            raise ValueError(
                f"{results_path}:{number}: not a result record with an image and a phrase ({error}): delete that line "
                "(its pair is grounded again) or give another output directory"
            ) from error
    return done


def _identity(image: str | Path) -> str:
    """An image's name in results.jsonl: its absolute path, so a rerun finds it however the path was spelt (not
    resolved: two links to one file, as git-annex or DVC make, stay two images)."""
    return os.path.abspath(Path(image).expanduser())


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length] or "phrase"


def load_grounder(cfg: DictConfig) -> Grounder:
    """ckpt_path (a .ckpt or an export directory), else model=<name> with its own weights, else the offline demo's."""
    settings: dict[str, Any] = {
        "device": cfg.get("device"),
        "batch_size": cfg.batch_size,
        "max_image_pixels": cfg.max_image_pixels,
    }
    if cfg.get("ckpt_path"):
        return Grounder.load(cfg.ckpt_path, **settings)
    if cfg.get("model"):
        net = cfg.model.net
        return Grounder.from_config(cfg, name=str(net.get("model_id") or net.get("checkpoint") or net._target_), **settings)
    found = demo_checkpoint(cfg.paths.log_dir)
    if found is None:
        raise FileNotFoundError(
            f"no model given and no offline demo model under {cfg.paths.log_dir}/shapes: pass ckpt_path=<.ckpt or export "
            "directory> or model=<name>, or train the demo first (make demo)"
        )
    log.info("no ckpt_path: using the offline demo's model %s", found)
    return Grounder.load(found, **settings)


def ground(cfg: DictConfig) -> Path:
    phrases = list(cfg.phrases) if isinstance(cfg.phrases, ListConfig) else str(cfg.phrases)
    pairs = pairs_of(image_files(str(cfg.images)), phrases)
    grounder = load_grounder(cfg)
    log.info("%s on %s: %d pairs", grounder.name, grounder.device, len(pairs))
    output_dir = Path(cfg.output_dir)
    results = ground_files(grounder, pairs, output_dir, cfg.boxes, cfg.box_threshold, cfg.overlays)
    print(f"{len(pairs)} pairs: {results}" + (f", overlays in {output_dir / 'overlays'}" if cfg.overlays else ""))
    return results
