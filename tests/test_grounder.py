"""Grounder (synground.inference.grounder) and ground.py: any image and phrase, with the maps the pointing game scored."""

import json
import shutil
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from support import run, run_ok
from support.checkpoints import tiny_checkpoint
from synground import Grounder
from synground.data.streams import _split_samples
from synground.data.transforms import clean_regions
from synground.inference.grounder import box_from_heatmap
from synground.runs import CHECKPOINT_CONFIG, run_config
from synground.shapes import ShapesGenerator


def split_samples(run_dir: Path, split: str) -> list:
    """The samples of one test split of a run, as its config defines it."""
    source = OmegaConf.load(run_dir / ".hydra" / "config.yaml").data.test[split]  # a shard directory or a generator
    return list(_split_samples(source if isinstance(source, str) else hydra.utils.instantiate(source), 0, 1, Counter()))


@pytest.mark.slow
@pytest.mark.parametrize("model, split", [("blip", "held_out"), ("albef", "shapes_clean"), ("albef", "shapes_textured")])
def test_the_grounders_points_score_the_runs_own_pointing_game_on_its_test_split(trained_runs, model, split):
    # the whole path a user takes (checkpoint + run config, own preprocessing, dropout off) against what train.py's
    # test scored on the same split: the same points, so the same pointing game, to the item
    run_dir, checkpoint = trained_runs[model]
    grounder = Grounder.load(checkpoint)
    assert not any(module.training for module in grounder.net.modules())
    hits, items = 0, 0
    for sample in split_samples(run_dir, split):
        regions = clean_regions(sample, Counter())
        results = grounder(sample.image, [region.phrase for region in regions])
        for region, result in zip(regions, results):
            x, y = result.point
            assert 0 <= x < sample.image.width and 0 <= y < sample.image.height
            hits += any(x0 < x < x1 and y0 < y < y1 for x0, y0, x1, y1 in region.boxes)
            items += 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert items == metrics[f"test/items/{split}"]
    assert hits / items == pytest.approx(metrics[f"test/pointing_game/{split}"], abs=1e-6)


@pytest.mark.slow
def test_results_do_not_depend_on_batching_or_on_the_other_pairs(trained_runs):
    grounder = Grounder.load(trained_runs["albef"][1], batch_size=16)
    one_by_one = Grounder.load(trained_runs["albef"][1], batch_size=1)
    scenes = [ShapesGenerator("textured", image_size=96).scene(str(i), 50 + i) for i in range(3)]
    images = [scene.image for scene in scenes for _ in scene.regions]
    phrases = [region.phrase for scene in scenes for region in scene.regions]
    together, alone = grounder(images, phrases), one_by_one(images, phrases)
    assert [r.point for r in together] == [r.point for r in alone]
    for a, b in zip(together, alone):
        assert a.phrase == b.phrase and a.score == pytest.approx(b.score, abs=1e-5)
        torch.testing.assert_close(a.cam, b.cam, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_one_image_many_phrases_many_images_one_phrase_and_the_maps_of_a_non_square_image(trained_runs):
    grounder = Grounder.load(trained_runs["blip"][1])
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 200, 3), dtype=np.uint8))
    results = grounder(wide, ["the red circle", "a blue square"], boxes=True)
    assert [r.phrase for r in results] == ["the red circle", "a blue square"]
    for result in results:
        assert result.image_size == (200, 90) and result.heatmap.shape == (90, 200)
        assert float(result.heatmap.min()) == 0.0 and float(result.heatmap.max()) == pytest.approx(1.0)
        # the point is the map's maximum, and the box holds it
        assert float(result.heatmap[result.point[1], result.point[0]]) == pytest.approx(1.0)
        x0, y0, x1, y1 = result.box
        assert x0 <= result.point[0] < x1 and y0 <= result.point[1] < y1
        assert 0 < result.score < 1
    assert len(grounder([wide, np.asarray(wide)], "the red circle")) == 2


@pytest.mark.slow
def test_bad_inputs_are_named(trained_runs, tmp_path):
    grounder = Grounder.load(trained_runs["blip"][1])
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="phrase 1 is empty"):
        grounder(image, ["the dog", "  "])
    with pytest.raises(ValueError, match="3 images and 2 phrases"):
        grounder([image] * 3, ["a", "b"])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match=r"image 0: .*notes.png is not an image"):
        grounder(not_an_image, "the dog")
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        grounder(tmp_path / "missing.jpg", "the dog")
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(trained_runs["blip"][1].read_bytes())
    with pytest.raises(FileNotFoundError, match=r"no run config found for .*lonely.ckpt"):
        run_config(lonely)
    # a checkpoint moved out of its run still loads: with the config it carries, or with the run's given explicitly
    config = trained_runs["blip"][0] / ".hydra" / "config.yaml"
    assert Grounder.load(lonely)(image, "the dog")[0].point == grounder(image, "the dog")[0].point
    assert Grounder.from_checkpoint(lonely, config=config)(image, "the dog")[0].point == grounder(image, "the dog")[0].point


def test_the_box_is_the_thresholded_region_around_the_point_not_every_hot_pixel():
    heat = torch.zeros(100, 200)
    heat[10:30, 20:60] = 1.0  # the maximum's blob
    heat[60:90, 150:190] = 0.8  # another hot blob, not connected
    heat[30:40, 20:30] = 0.6  # a tail attached to the first
    assert box_from_heatmap(heat, (40, 20), threshold=0.5) == pytest.approx((20, 10, 60, 40), abs=1.5)
    assert box_from_heatmap(heat, (40, 20), threshold=0.7) == pytest.approx((20, 10, 60, 30), abs=1.5)
    with pytest.raises(ValueError, match="box_threshold"):
        box_from_heatmap(heat, (40, 20), threshold=0)


@pytest.mark.slow
def test_ground_py_grounds_a_folder_with_a_phrase_file_and_a_rerun_skips_what_is_done(trained_runs, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    scenes = [ShapesGenerator("textured", image_size=80).scene(str(i), 7 + i) for i in range(3)]
    for index, scene in enumerate(scenes):
        scene.image.save(folder / f"scene{index}.png")
    (folder / "notes.txt").write_text("not an image: left out of the folder's images")
    phrases = tmp_path / "phrases.txt"
    phrases.write_text(f"the red circle\n\nscene1.png\t{scenes[1].regions[0].phrase}\n")
    checkpoint = trained_runs["albef"][1]
    args = [f"ckpt_path={checkpoint}", f"images={folder}", f"phrases={phrases}", "boxes=true", f"hydra.run.dir={tmp_path}/out"]
    result = run_ok("ground.py", *args, cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(Path(r["image"]).name, r["phrase"]) for r in records] == [
        ("scene0.png", "the red circle"),
        ("scene1.png", "the red circle"),
        ("scene1.png", scenes[1].regions[0].phrase),
        ("scene2.png", "the red circle"),
    ]
    expected = Grounder.load(checkpoint)([scenes[1].image], [scenes[1].regions[0].phrase], boxes=True)[0]
    assert tuple(records[2]["point"]) == expected.point and records[2]["score"] == pytest.approx(expected.score, abs=1e-5)
    overlay = Image.open(tmp_path / "out" / records[2]["overlay"])
    x, y = expected.point
    assert overlay.getpixel((x + (overlay.width - 80) // 2, y))[:3] == (255, 255, 255)  # the cross at the point

    result = run_ok("ground.py", *args, cwd=tmp_path)
    assert "4 of 4 pairs already in" in result.stdout
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_ground_py_names_a_phrase_line_for_an_image_it_was_not_given(trained_runs, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "phrases.txt").write_text("b.png\tthe dog\n")
    result = run(
        "ground.py",
        f"ckpt_path={trained_runs['albef'][1]}",
        f"images={tmp_path}/*.png",
        f"phrases={tmp_path}/phrases.txt",
        f"hydra.run.dir={tmp_path}/out",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "phrases.txt:1: no image named 'b.png'" in result.stderr


def test_a_checkpoint_carries_its_model_config_and_loads_out_of_its_run(tmp_path):
    """train.py's checkpoints carry the model and input settings (ConfigInCheckpoints), which torch.load reads with
    weights_only=True: copied out of its run alone, one grounds as it does in its run."""
    checkpoint = tiny_checkpoint(tmp_path / "run", seed=0, carry_config=True)
    lonely = tmp_path / "elsewhere" / "model.ckpt"
    lonely.parent.mkdir()
    shutil.copy(checkpoint, lonely)
    carried = torch.load(lonely, map_location="cpu", weights_only=True)[CHECKPOINT_CONFIG]
    assert carried["data"]["image_size"] == 64 and carried["model"]["net"]["vision_width"] == 32
    assert carried["model"]["net"]["image_size"] == 64  # resolved: ${data.image_size} in the run config
    sample = ShapesGenerator(image_size=64).scene("scene", 3)
    phrases = [region.phrase for region in sample.regions]
    in_run = Grounder.from_checkpoint(checkpoint, config=tmp_path / "run" / ".hydra" / "config.yaml")
    assert [g.point for g in Grounder.load(lonely)(sample.image, phrases)] == [g.point for g in in_run(sample.image, phrases)]


@pytest.mark.slow
def test_ground_py_with_a_model_config_and_without_any_model(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "red.png")
    result = run_ok(
        "ground.py",
        "model=albef_tiny",
        "data.image_size=64",
        f"images={tmp_path}/red.png",
        "phrases=[a red square,the sky]",
        f"hydra.run.dir={tmp_path}/out",
        cwd=tmp_path,
    )
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["phrase"] for r in records] == ["a red square", "the sky"]
    assert all(r["model"] == "synground.models.AlbefGroundingModel.tiny" and r["image_size"] == [40, 30] for r in records)

    result = run("ground.py", f"images={tmp_path}/red.png", "phrases=a dog", f"paths.log_dir={tmp_path}/logs", cwd=tmp_path)
    assert result.returncode != 0
    assert "no model given and no offline demo model" in result.stderr and "make demo" in result.stderr
