"""Fault injections on the inference side (ground.py, the Grounder's image reading, the web demo): torn results files,
paths spelt another way, bad settings, 16-bit and oversized images, oversized requests. Each must end in a complete,
readable result or a clear refusal, never in a lost pair or a crash."""

import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from synground.grounding import Grounder
from synground.inference import ground, ground_files, image_files, pairs_of
from test_experiments import ROOT

PHRASE = "the red circle"


def write_images(folder: Path, count: int) -> list[Path]:
    """`count` small PNGs of different colours in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"image{index}.png" for index in range(count)]
    for index, path in enumerate(paths):
        Image.new("RGB", (48, 40), (60 * index, 200, 255 - 60 * index)).save(path)
    return paths


def grounded_pairs(results: Path) -> list[tuple[str, str]]:
    """(absolute image path, phrase) of every line of a results.jsonl; each line must parse."""
    return [
        (str(Path(record["image"]).absolute()), record["phrase"]) for record in map(json.loads, results.read_text().splitlines())
    ]


def test_a_torn_last_line_is_cut_off_and_its_pair_grounded_again(tiny_blip, tmp_path, caplog):
    pairs = pairs_of(write_images(tmp_path / "photos", 3), [PHRASE, "the blue square"])
    grounder = Grounder(tiny_blip, batch_size=4)
    results = ground_files(grounder, pairs, tmp_path / "out", overlays=False)
    lines = results.read_text().splitlines(keepends=True)
    torn = lines[-1][:30]  # a full disk stopped the last record here
    results.write_text("".join(lines[:-1]) + torn)

    with caplog.at_level(logging.WARNING):
        ground_files(grounder, pairs, tmp_path / "out", overlays=False)
    assert sorted(grounded_pairs(results)) == sorted((str(image.absolute()), phrase) for image, phrase in pairs)
    assert torn in caplog.text and "results.jsonl" in caplog.text


def test_an_unreadable_line_before_the_last_is_named_not_skipped(tiny_blip, tmp_path):
    pairs = pairs_of(write_images(tmp_path / "photos", 2), [PHRASE])
    grounder = Grounder(tiny_blip)
    results = ground_files(grounder, pairs, tmp_path / "out", overlays=False)
    first, second = results.read_text().splitlines(keepends=True)
    results.write_text(first[:20] + first + second)  # what the earlier resume left: a torn line with a record glued on
    with pytest.raises(ValueError, match=r"results\.jsonl:1: .*delete"):
        ground_files(grounder, pairs, tmp_path / "out", overlays=False)


def test_a_rerun_with_the_images_spelt_another_way_grounds_nothing_again(tiny_blip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "photos", 3)
    grounder = Grounder(tiny_blip)
    out = tmp_path / "out"
    for images in ("photos", str(tmp_path / "photos"), "./photos/../photos/*.png", f"{tmp_path}/photos/image1.png"):
        results = ground_files(grounder, pairs_of(image_files(images), [PHRASE]), out, overlays=False)
    assert len(grounded_pairs(results)) == 3

    # results.jsonl of an earlier version holds the paths as they were spelt, relative to where it ran: it resumes too
    old = tmp_path / "old"
    old.mkdir()
    record = {"image": "photos/image0.png", "phrase": PHRASE, "image_size": [48, 40], "point": [1, 2], "score": 0.5}
    (old / "results.jsonl").write_text(json.dumps(record) + "\n")
    ground_files(grounder, pairs_of(image_files(str(tmp_path / "photos")), [PHRASE]), old, overlays=False)
    assert sorted(grounded_pairs(old / "results.jsonl")) == sorted(grounded_pairs(results))


@pytest.mark.parametrize("batch_size", [-1, 0, 1.5])
def test_a_batch_size_below_one_is_refused_naming_the_key(tmp_path, batch_size):
    write_images(tmp_path / "photos", 1)
    overrides = ["model=albef_tiny", "data.image_size=64", f"images={tmp_path}/photos", f"phrases={PHRASE}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("ground", overrides=[*overrides, f"output_dir={tmp_path}/out", f"batch_size={batch_size}"])
    with pytest.raises(ValueError, match=rf"batch_size={batch_size}: .*1 or more"):
        ground(cfg)
    assert not (tmp_path / "out").exists()
