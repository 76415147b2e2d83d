"""Fault injections on the inference side (ground.py, the Grounder's image reading, the web demo): torn results files,
paths spelt another way, bad settings, 16-bit and oversized images, oversized requests. Each must end in a complete,
readable result or a clear refusal, never in a lost pair or a crash."""

import json
import logging
import struct
import sys
import zlib
from pathlib import Path
from unittest.mock import Mock

import gradio as gr
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from support import ROOT
from support.checkpoints import tiny_checkpoint
from synground.conf import CONFIG_DIR
from synground.inference import app
from synground.inference.batch import ground, ground_files, image_files, pairs_of
from synground.inference.grounder import Grounder, open_image

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
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("ground", overrides=[*overrides, f"output_dir={tmp_path}/out", f"batch_size={batch_size}"])
    with pytest.raises(ValueError, match=rf"batch_size={batch_size}: .*1 or more"):
        ground(cfg)
    assert not (tmp_path / "out").exists()


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG file that declares `width` x `height` RGB pixels and holds none: opening it reads the size, decoding fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_16_bit_images_are_scaled_to_8_bit_not_clipped_to_white(tmp_path):
    values = np.linspace(0, 65535, 48 * 64).round().astype(np.uint16).reshape(48, 64)
    Image.fromarray(values).save(tmp_path / "depth.png")  # a 16-bit greyscale PNG: Pillow opens it as mode I;16
    grey = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, to the nearest level
    expected = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "depth.png", "depth.png")), expected)
    # Pillow before 11 opens such a PNG as mode I (32-bit integers) with the same values
    np.testing.assert_array_equal(np.asarray(open_image(Image.fromarray(values.astype(np.int32)), "image 0")), expected)
    with pytest.raises(ValueError, match=r"image 0: .*mode I .*70000"):
        open_image(Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)), "image 0")
    with pytest.raises(ValueError, match=r"image 0: .*mode F"):
        open_image(Image.fromarray(np.zeros((4, 4), dtype=np.float32)), "image 0")


def test_an_image_above_max_image_pixels_is_refused_naming_it_its_size_and_the_key(tiny_blip, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (8000, 8000)).save(big)
    with pytest.raises(ValueError, match=r"image 0: .*big\.png is 8000 x 8000 pixels.*max_image_pixels=40000000"):
        Grounder(tiny_blip)(big, PHRASE)
    # refused from the file's header, before decoding: this one has no pixel data at all
    with pytest.raises(ValueError, match=r"header\.png is 7000 x 6000 pixels.*max_image_pixels=40000000"):
        open_image(png_header(tmp_path / "header.png", 7000, 6000), "header.png")
    # the limit is the Grounder's setting, and holds for images given as PIL images or arrays too
    small_limit = Grounder(tiny_blip, max_image_pixels=48 * 40 - 1)
    for image in (Image.new("RGB", (48, 40)), np.zeros((40, 48, 3), dtype=np.uint8)):
        with pytest.raises(ValueError, match=r"image 0 is 48 x 40 pixels, .*max_image_pixels=1919"):
            small_limit(image, PHRASE)
    with pytest.raises(ValueError, match=r"max_image_pixels=0: "):
        Grounder(tiny_blip, max_image_pixels=0)


def test_pils_decompression_bomb_error_becomes_the_same_clear_refusal(tmp_path):
    bomb = png_header(tmp_path / "bomb.png", 20000, 10000)  # 200 megapixels: more than PIL opens at all
    with pytest.raises(ValueError, match=r"bomb\.png: .*200000000 pixels.*max_image_pixels=40000000"):
        open_image(bomb, "bomb.png")


def test_ground_py_takes_max_image_pixels_from_its_config(tmp_path):
    write_images(tmp_path / "photos", 1)
    overrides = ["model=albef_tiny", "data.image_size=64", f"images={tmp_path}/photos", f"phrases={PHRASE}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        assert compose("ground", overrides=overrides).max_image_pixels == 40_000_000
        cfg = compose("ground", overrides=[*overrides, f"output_dir={tmp_path}/out", "max_image_pixels=1000"])
    with pytest.raises(ValueError, match=r"image0\.png is 48 x 40 pixels.*max_image_pixels=1000"):
        ground(cfg)


def upload(path: Path) -> dict:
    """An image as the page sends it to ground(): its file in gradio's upload folder and the name it was uploaded as."""
    return {"path": str(path), "orig_name": path.name}


def test_the_app_refuses_more_phrases_than_max_phrases_with_a_message_in_the_page(tiny_blip, tmp_path):
    [image] = write_images(tmp_path, 1)
    models = {"tiny": Grounder(tiny_blip)}
    text = "\n".join(f"{PHRASE} {index}" for index in range(33))
    with pytest.raises(gr.Error, match=r"33 phrases: .*at most 32 .*max_phrases"):
        app.ground(models, upload(image), text, ["tiny"])
    with pytest.raises(gr.Error, match=r"3 phrases: .*at most 2 "):
        app.ground(models, upload(image), "a; b; c", ["tiny"], max_phrases=2)


def test_the_app_refuses_an_image_above_max_image_pixels_with_a_message_in_the_page(tiny_blip, tmp_path):
    [image] = write_images(tmp_path, 1)
    models = {"tiny": Grounder(tiny_blip, max_image_pixels=1000)}
    with pytest.raises(gr.Error, match=r"image0\.png is 48 x 40 pixels, .*1000 .*max_image_pixels"):
        app.ground(models, upload(image), PHRASE, ["tiny"])
    with pytest.raises(gr.Error, match=r"bomb\.png is .*200000000 pixels"):
        app.ground({"tiny": Grounder(tiny_blip)}, upload(png_header(tmp_path / "bomb.png", 20000, 10000)), PHRASE, ["tiny"])


def test_the_app_draws_a_large_images_overlays_at_display_size_with_points_in_its_pixels(tiny_blip, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    image = tmp_path / "large.png"
    Image.new("RGB", (1600, 1200), "red").save(image)
    grounder = Grounder(tiny_blip)
    gallery, rows = app.ground({"tiny": grounder}, upload(image), PHRASE, ["tiny"])
    [expected] = grounder(image, PHRASE)
    assert rows == [[PHRASE, "tiny", *expected.point, round(expected.score, 4)]]
    [shown] = gallery.value
    assert Image.open(shown["image"]["path"]).size == (1024, 768)


def test_the_apps_config_sets_its_limits(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "run", seed=0)
    served = {}
    monkeypatch.setattr(app, "build_app", lambda models, examples, max_phrases: served.update(locals()) or Mock())
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        defaults = compose("app")
        cfg = compose("app", overrides=[f"ckpt_path={checkpoint}", "max_image_pixels=1000", "max_phrases=2"])
    assert (defaults.max_image_pixels, defaults.max_phrases) == (40_000_000, 32)
    cfg.paths.output_dir = str(tmp_path / "out")
    app.serve(cfg, train_command=[sys.executable, str(ROOT / "train.py")])
    assert served["max_phrases"] == 2 and [m.max_image_pixels for m in served["models"].values()] == [1000]
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"max_phrases=0: "):
        app.build_app(served["models"], max_phrases=0)
