"""The pretrained vision encoder: its targets, its file, and that the packaged one knows the shapes world's objects."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from support import ONE_EPOCH, ROOT, run_ok
from synground.conf import CONFIG_DIR
from synground.models import AlbefGroundingModel, BlipGroundingModel
from synground.models.encoders import save_vision_weights, vision_weights_path
from synground.shapes import ShapesGenerator
from synground.shapes.pretraining import (
    PretrainingBatches,
    dense_targets,
    patch_features,
    pretrain,
    pretrain_vision,
)
from synground.shapes.world import COLOURS, SHAPES, scene_shapes, shape_mask

WORDS = ["the", "red", "circle"]


def small(cls, **overrides):
    torch.manual_seed(0)
    settings = dict(image_size=64, patch_size=8, vision_width=32, text_width=32, heads=2, vision_layers=2)
    return cls.tiny(WORDS, **{**settings, **overrides})


def test_dense_targets_label_the_pixels_each_shape_covers():
    sample = ShapesGenerator("clean", image_size=64).scene("k", 7)
    shapes = [(kind, box, colour) for colour, kind, box in scene_shapes(sample)]
    kinds, colours = dense_targets([shapes], image_size=64, grid=8)
    pixels = np.asarray(sample.image).reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(64, 64, 3)  # per patch
    labelled = 0
    for patch in range(64):
        if kinds[0, patch] == 0:
            for colour, _, _ in scene_shapes(sample):  # no background patch is mostly one shape's colour
                assert (np.all(pixels[patch] == COLOURS[colour], axis=1)).mean() < 0.3 + 1e-6
            continue
        labelled += 1
        colour = list(COLOURS)[colours[0, patch] - 1]
        assert (np.all(pixels[patch] == COLOURS[colour], axis=1)).mean() >= 0.3
    kinds_named = {SHAPES[k - 1] for k in kinds[0].tolist() if k}
    assert labelled >= len(sample.regions) and kinds_named <= {kind for _, kind, _ in scene_shapes(sample)}


@pytest.mark.parametrize("cls", [BlipGroundingModel, AlbefGroundingModel])
def test_vision_weights_round_trip_and_load_at_another_image_size(tmp_path, cls):
    trained = small(cls)
    with torch.no_grad():
        for parameter in trained.vision_encoder.parameters():
            parameter.add_(torch.randn_like(parameter))  # unlike any fresh initialisation
    path = tmp_path / "vision.safetensors"
    save_vision_weights(trained, path, {"steps": 0})
    fresh = small(cls, vision_weights=str(path)).eval()
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(fresh.encode_images(images), trained.eval().encode_images(images))
    with safe_open(str(path), framework="pt") as file:
        assert json.loads(file.metadata()["about"]) == {"steps": 0}

    larger = small(cls, image_size=96, vision_weights=str(path))  # a 12x12 grid from an 8x8 one
    for name, value in larger.vision_encoder.state_dict().items():
        if value.shape == trained.vision_encoder.state_dict()[name].shape:
            torch.testing.assert_close(value, trained.vision_encoder.state_dict()[name])
    assert larger.encode_images(torch.randn(1, 3, 96, 96)).shape[1] == 1 + 12 * 12


def test_vision_weights_that_do_not_fit_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "vision.safetensors"
    save_vision_weights(small(BlipGroundingModel), path, {})
    with pytest.raises(ValueError, match=r"vision.safetensors was pretrained for another vision encoder.*vision_weights=null"):
        small(BlipGroundingModel, vision_width=64, vision_weights=str(path))
    with pytest.raises(ValueError, match="holds a BlipGroundingModel vision encoder, not a AlbefGroundingModel"):
        small(AlbefGroundingModel, vision_weights=str(path))
    with pytest.raises(FileNotFoundError, match=r"missing.safetensors does not exist; make it with `synground-pretrain-encoder"):
        small(BlipGroundingModel, vision_weights=str(tmp_path / "missing.safetensors"))
    assert vision_weights_path("synground:disjoint_image", "albef").name == "disjoint_image_albef.safetensors"
    assert vision_weights_path("synground:shapes", "blip").name == "both_dense_blip.safetensors"  # its former name


@pytest.mark.parametrize("world, labels", [("disjoint", "image"), ("disjoint", "dense"), ("both", "dense")])
def test_pretraining_trains_the_vision_encoder_alone(world, labels):
    """Only the image side learns: text encoder, fusion layers and ITM head keep their weights."""
    net = small(BlipGroundingModel)
    before = {name: value.clone() for name, value in net.state_dict().items()}
    vision = {f"model.vision_model.{name}" for name in net.vision_encoder.state_dict()}
    history = pretrain_vision(net, world, labels, steps=3, batch_size=4, eval_every=2)
    assert [entry["step"] for entry in history] == [2, 3]
    expected = {"image": {"present_accuracy"}, "dense": {"kind_accuracy"} | ({"colour_accuracy"} if world == "both" else set())}
    assert set(history[-1]) == {"step", "loss"} | expected[labels]
    changed = {name for name, value in net.state_dict().items() if not torch.equal(value, before[name])}
    assert changed and changed <= vision


def test_the_disjoint_world_shares_neither_study_style():
    """Its scenes have neither study style's background (clean: flat (235, 235, 235)) nor its palette: both study
    styles fill shapes with the six named colours (textured ones jittered by about 25 levels); here few shapes come
    within 30 levels of one (random fills would, 6 * (61/256)^3 = 8% of the time)."""
    batches = PretrainingBatches("disjoint", 64, 8, 16)
    named = np.array(list(COLOURS.values()), dtype=float)
    fills = []
    for index in range(40):
        image, shapes = batches.scene(index)
        pixels = np.asarray(image, dtype=float)
        assert (np.abs(pixels - 235).max(axis=2) <= 2).mean() < 0.2, f"scene {index} has a clean-style background"
        for kind, box, colour in shapes:
            assert colour is None and kind in SHAPES  # no colour names to learn
            fills.append(np.median(pixels[shape_mask(kind, box, 64)], axis=0))
    near_named = (np.abs(np.array(fills)[:, None] - named[None]).max(axis=2) <= 30).any(axis=1)
    assert len(fills) >= 60 and near_named.mean() < 0.2, f"{near_named.mean():.0%} of {len(fills)} shapes"


@pytest.mark.parametrize(
    "architecture, packaged",
    [
        ("blip", "both_dense"),
        ("albef", "both_dense"),
        ("blip", "disjoint_dense"),
    ],  # the sketch-world one: BLIP's, the study's model
)
def test_the_packaged_encoders_know_shape_kinds_and_a_random_one_does_not(architecture, packaged):
    """A linear probe on held-out patches of both study styles reads the shape kind off a packaged encoder's features
    (what the grounding losses could not teach a random ViT in make demo's budget), and not off a random encoder's:
    well off the one pretrained on both styles (make demo's), less well but far better than chance off the one
    pretrained on the sketch world, which saw neither style."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = ["experiment=shapes", f"model={architecture}_tiny"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=overrides)
    accuracy = {}
    for name, weights in (("packaged", f"synground:{packaged}"), ("random", None)):
        torch.manual_seed(0)
        net = instantiate(config.model.net, vision_weights=weights).eval()
        batches = PretrainingBatches("both", net.image_size, 16, 48)  # scenes of the two study styles
        features, kinds = [], []
        for first in (-(10**6), -(2 * 10**6)):  # scenes no pretraining step drew
            batch = batches.batch(first)
            with torch.no_grad():
                features.append(patch_features(net, batch.images).flatten(0, 1))
            kinds.append(batch.kinds.flatten())
        (train_x, test_x), (train_y, test_y) = features, kinds
        train_x, train_y, test_x, test_y = train_x[train_y > 0], train_y[train_y > 0], test_x[test_y > 0], test_y[test_y > 0]
        probe = torch.nn.Linear(train_x.shape[1], len(SHAPES) + 1)
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(probe(train_x), train_y).backward()
            optimizer.step()
        accuracy[name] = float((probe(test_x).argmax(1) == test_y).float().mean())
    assert accuracy["random"] < 0.55, accuracy
    if packaged == "both_dense":
        assert config.model.net.vision_weights == "synground:both_dense" and accuracy["packaged"] > 0.75, accuracy
    else:
        assert accuracy["packaged"] > accuracy["random"] + 0.2, accuracy


@pytest.mark.slow
def test_pretraining_command_writes_a_file_train_py_loads(tmp_path):
    output = tmp_path / "vision.safetensors"
    small_model = ["data.image_size=64", "model.net.vision_width=32", "model.net.vision_layers=2", "model.net.heads=2"]
    run_ok(
        "synground/shapes/pretraining.py",
        *small_model,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    with safe_open(str(output), framework="pt") as file:
        about = json.loads(file.metadata()["about"])
    assert about["steps"] == 2 and about["history"][-1]["step"] == 2 and "experiment=shapes" in about["overrides"]
    run_ok(
        "train.py",
        "experiment=shapes",
        *small_model,
        "model.net.text_width=32",
        f"model.net.vision_weights={output}",
        "data.batches_per_epoch=1",
        "data.batch_size=4",
        *ONE_EPOCH,
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )


def test_two_pretraining_runs_of_one_command_write_the_same_file(tmp_path, monkeypatch):
    """Seeded before the model is built, deterministic kernels, no clock in the metadata: the same command gives the
    same file byte for byte (so the shipped encoders can be checked against the command that made them)."""
    command = [
        *["data.image_size=64", "model.net.vision_width=32", "model.net.vision_layers=2", "model.net.heads=2"],
        *["--steps", "3", "--batch-size", "2", "--seed", "5", "--output", "vision.safetensors"],
    ]
    digests = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        torch.manual_seed(len(name))  # whatever the caller's random state was
        digests.append(hashlib.sha256((pretrain(command)).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    other_seed = [*command[:-4], "--seed", "6", *command[-2:]]
    (tmp_path / "third").mkdir()
    monkeypatch.chdir(tmp_path / "third")
    with (
        safe_open(str(pretrain(other_seed)), framework="pt") as changed,
        safe_open(str(tmp_path / "first" / "vision.safetensors"), framework="pt") as first,
    ):
        assert any(not torch.equal(changed.get_tensor(name), first.get_tensor(name)) for name in first.keys())  # noqa: SIM118


def test_the_shipped_encoders_are_the_files_their_recorded_commands_made():
    """synground/assets/manifest.json names every shipped encoder with its sha256 and the pretraining command that made
    it (embedded in the file too); `python tools/assets.py --rebuild` reruns the commands (deterministic) to check."""
    result = subprocess.run([sys.executable, "tools/assets.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((ROOT / "synground" / "assets" / "manifest.json").read_text())
    assert {"both_dense_blip.safetensors", "both_dense_albef.safetensors"} <= set(manifest)
    for name, entry in manifest.items():
        # the files were made before the module moved from synground.models to synground.shapes; tools/assets.py
        # reruns their arguments with the module where it is now
        assert entry["command"].split(" ", 3)[:3] == ["python", "-m", "synground.models.pretraining"], name
        assert "--output" not in entry["command"], f"{name}: a shipped encoder is written where its name says"


def test_a_rebuilt_encoder_is_judged_by_its_tensors_and_metadata_not_by_the_output_path_its_command_names(tmp_path):
    """tools/assets.py --rebuild writes each encoder elsewhere, so the embedded command (and the digest) differ by
    `--output <path>`; any other difference, in a tensor or in the metadata, must still be reported."""
    sys.path.insert(0, str(ROOT / "tools"))
    from assets import content_difference
    from safetensors.torch import save_file

    shipped = ROOT / "synground" / "assets" / "both_dense_blip.safetensors"
    with safe_open(str(shipped), framework="pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
        metadata = file.metadata()
    about = json.loads(metadata["about"])
    command = f"{about['command']} --output {tmp_path / 'rebuilt.safetensors'}"

    def rebuilt(tensors: dict, **changes) -> Path:
        path = tmp_path / "rebuilt.safetensors"
        save_file(tensors, str(path), {**metadata, "about": json.dumps({**about, "command": command, **changes})})
        return path

    assert content_difference(rebuilt(tensors), shipped, command) is None
    assert "seed" in content_difference(rebuilt(tensors, seed=1), shipped, command)
    assert "embedded command" in content_difference(rebuilt(tensors), shipped, about["command"] + " --seed 1")
    name = sorted(tensors)[0]
    nudged = {**tensors, name: tensors[name] + 1e-6}
    assert name in content_difference(rebuilt(nudged), shipped, command)
