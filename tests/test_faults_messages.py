"""Fault injections for error messages: each bad input is refused with a message naming the file, key or sample that
is wrong and what to do, not a raw library error or an index relative to a batch (issue 25, case 12)."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from support.checkpoints import tiny_checkpoint
from synground import results
from synground.conf import CONFIG_DIR
from synground.evaluation import evaluate
from synground.inference.batch import ground_files, pairs_of
from synground.inference.export import export_model
from synground.inference.export_format import SETTINGS_FILE
from synground.inference.grounder import Grounder
from synground.models.encoders import load_vision_weights
from synground.models.module import GroundingModule


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30), "red").save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("messages") / "run", seed=0)


# the Grounder's inputs


def test_a_phrase_that_is_not_text_is_named_with_its_index_in_the_whole_list_not_called_empty(tiny_blip, image):
    phrases: list = ["the red circle"] * 50
    phrases[40] = 5
    with pytest.raises(ValueError, match=r"phrase 40 is 5 \(int\), not text"):
        Grounder(tiny_blip, batch_size=4)(image, phrases)


@pytest.mark.parametrize("bad", [5, None])
def test_an_image_of_another_type_is_named_with_its_index_and_type(tiny_blip, image, bad):
    with pytest.raises(TypeError, match=rf"image 1 is {type(bad).__name__}: give an image file's path, a PIL image"):
        Grounder(tiny_blip)([image, bad], "the red circle")


def test_a_folder_given_as_an_image_is_called_a_folder_not_missing(tiny_blip, tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"image 0: {tmp_path} is a folder, not an image file"):
        Grounder(tiny_blip)(tmp_path, "the red circle")


def test_an_empty_phrase_in_a_phrase_file_is_named_by_its_line_not_its_place_in_a_batch(tiny_blip, image, tmp_path):
    phrase_file = tmp_path / "phrases.tsv"
    phrase_file.write_text("a.png\tthe red circle\n" * 39 + "a.png\t \n" + "a.png\tthe red circle\n" * 10)
    with pytest.raises(ValueError, match=rf"{phrase_file}:40: the phrase for a.png is empty"):
        ground_files(Grounder(tiny_blip, batch_size=4), pairs_of([image], str(phrase_file)), tmp_path / "out")


# checkpoints, run configs and exports


@pytest.mark.parametrize("damage", ["empty", "truncated", "not a dict"])
def test_a_damaged_checkpoint_is_named_not_a_raw_torch_error(checkpoint, tmp_path, damage):
    broken = checkpoint.parent / f"broken-{damage.replace(' ', '-')}.ckpt"
    if damage == "not a dict":
        torch.save([1, 2], broken)
    else:
        broken.write_bytes(b"" if damage == "empty" else checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{broken} is not a whole train.py checkpoint"):
        Grounder.load(broken)


def test_a_run_directory_given_as_a_checkpoint_is_called_a_directory_not_missing(checkpoint, tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"{checkpoint.parent.parent} is a directory.*checkpoints/<name>.ckpt"):
        export_model(checkpoint.parent.parent, tmp_path / "export")


def test_a_run_configs_mean_that_is_not_a_list_is_named_by_its_key(checkpoint):
    config = OmegaConf.load(checkpoint.parent.parent / ".hydra" / "config.yaml")
    config.data.mean = 0.5
    with pytest.raises(ValueError, match=r"the given config: data.mean 0.5 is not three finite numbers"):
        Grounder.from_checkpoint(checkpoint, config=config)


@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory) -> Path:
    return export_model(checkpoint, tmp_path_factory.mktemp("export") / "export")


@pytest.mark.parametrize("text", ["", "[1]", "{not json"])
def test_an_unreadable_settings_file_of_an_export_is_named(export, tmp_path, text):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in export.iterdir():
        if path.is_file():
            (broken / path.name).write_bytes(path.read_bytes())
    (broken / SETTINGS_FILE).write_text(text)
    with pytest.raises(ValueError, match=rf"{broken / SETTINGS_FILE} is not a JSON object.*export the checkpoint again"):
        Grounder.load(broken)


@pytest.mark.parametrize(
    "key, value, message",
    [("gradcam_layer", None, " has no 'gradcam_layer'"), ("files", ["config.json"], ": files is a list, not the sha256")],
)
def test_a_setting_missing_or_misshapen_in_an_export_is_named_by_its_key_and_file(export, tmp_path, key, value, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in export.iterdir():
        if path.is_file():
            (broken / path.name).write_bytes(path.read_bytes())
    settings = json.loads((export / SETTINGS_FILE).read_text())
    if value is None:
        del settings[key]
    else:
        settings[key] = value
    (broken / SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=rf"{broken / SETTINGS_FILE}{message}"):
        Grounder.load(broken)


def test_eval_names_a_damaged_ckpt_path_before_building_anything(tmp_path):
    broken = tmp_path / "last.ckpt"
    broken.write_bytes(b"")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={broken}", f"paths.output_dir={tmp_path}", "logger=none"])
    with pytest.raises(ValueError, match=rf"ckpt_path={broken} is not a whole checkpoint"):
        evaluate(cfg)


# model settings


@pytest.mark.parametrize("key, value", [("amc_weight", "x"), ("itc_weight", -1.0), ("lr", 0)])
def test_a_loss_weight_or_learning_rate_of_the_wrong_type_or_sign_is_named_by_its_key(tiny_blip, key, value):
    with pytest.raises(ValueError, match=rf"model.{key}={value!r}"):
        GroundingModule(tiny_blip, **{key: value})


def test_a_folder_given_as_vision_weights_is_called_a_folder_not_missing(tiny_blip, tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"vision_weights='{tmp_path}': {tmp_path} is a folder, not a weights file"):
        load_vision_weights(tiny_blip, str(tmp_path))


def test_an_empty_vision_weights_file_is_named_not_a_raw_safetensors_error(tiny_blip, tmp_path):
    empty = tmp_path / "vision.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"vision_weights='{empty}': {empty} is not a whole safetensors file"):
        load_vision_weights(tiny_blip, str(empty))


# synground-results


def sweep_run(root: Path, name: str, ratio: float, metrics: str | None = None, failed: str | None = None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"seed: 0\ndata:\n  synthetic_ratio: {ratio}\n")
    (run / ".hydra" / "overrides.yaml").write_text(f"- data.synthetic_ratio={ratio}\n")
    if metrics is not None:
        (run / "metrics.json").write_text(metrics)
    if failed is not None:
        (run / "failed.json").write_text(failed)
    return run


def two_runs(root: Path) -> list[Path]:
    return [
        sweep_run(root, "0", 0.0, json.dumps({"test/pointing_game/mean": 0.5})),
        sweep_run(root, "1", 0.5, json.dumps({"test/pointing_game/mean": 0.6})),
    ]


def test_a_misspelt_swept_key_is_refused_naming_it_and_the_runs_overrides(tmp_path):
    with pytest.raises(ValueError, match=r"--x data.synthetic_ration is in no run's .hydra/config.yaml.*data.synthetic_ratio"):
        results.summarize(two_runs(tmp_path), "data.synthetic_ration", tmp_path / "out")


def test_a_misspelt_metric_is_refused_naming_the_metrics_there_are_not_a_run_to_redo(tmp_path):
    with pytest.raises(ValueError, match=r"--metric test/pointing_game/meen is in no finished run's metrics.json.*mean"):
        results.summarize(two_runs(tmp_path), "data.synthetic_ratio", tmp_path / "out", 0.0, "test/pointing_game/meen")


@pytest.mark.parametrize(
    "name, metrics, failed",
    [("metrics.json", "", None), ("metrics.json", "[1, 2]", None), ("failed.json", None, "{}"), ("failed.json", None, "")],
)
def test_an_unreadable_metrics_or_failed_file_is_named(tmp_path, name, metrics, failed):
    runs = [*two_runs(tmp_path), sweep_run(tmp_path, "2", 1.0, metrics, failed)]
    with pytest.raises(ValueError, match=rf"{tmp_path / '2' / name}: "):
        results.summarize(runs, "data.synthetic_ratio", tmp_path / "out")


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"synthetic_ratio": "half"}, r"synthetic_ratio \(data\.synthetic_ratio\) must be a number in \[0, 1\], got 'half'"),
        ({"batch_size": 0}, r"batch_size \(data\.batch_size\) must be a whole number, 1 or more; got 0"),
        ({"eval_batch_size": -2}, r"eval_batch_size \(data\.eval_batch_size\) must be a whole number, 1 or more; got -2"),
        ({"num_workers": -1}, r"num_workers \(data\.num_workers\) must be a whole number, 0 or more"),
    ],
)
def test_a_datamodule_setting_of_the_wrong_type_or_range_is_named(setting, message):
    from synground.data import GroundingDataModule

    with pytest.raises(ValueError, match=message):
        GroundingDataModule(**setting)


def test_a_shard_set_output_that_is_a_file_is_named_as_such(tmp_path):
    from synground.data.convert import convert_records
    from synground.generation.report import dataset_report

    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"notes\.txt is a file, not a directory"):
        convert_records(iter(["record"]), taken, "vg")
    with pytest.raises(NotADirectoryError, match=r"notes\.txt is a file, not a directory"):
        dataset_report(taken)
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("builder", ["blip", "albef"])
@pytest.mark.parametrize(
    "setting,message",
    [
        ({"heads": 3}, r"model\.net: vision_width 64 does not split into heads=3 attention heads"),
        ({"dropout": 2.0}, r"model\.net: dropout 2\.0 is not a probability"),
        ({"image_size": 100}, r"model\.net: image_size 100 is not a whole number of patch_size 16 patches"),
        ({"max_text_length": 0}, r"model\.net: max_text_length 0 leaves no room"),
    ],
)
def test_a_tiny_models_impossible_sizes_are_named_before_torch_fails_on_them(builder, setting, message):
    from synground.models import AlbefGroundingModel, BlipGroundingModel

    build = {"blip": BlipGroundingModel.tiny, "albef": AlbefGroundingModel.tiny}[builder]
    with pytest.raises(ValueError, match=message):
        build(["the", "red"], **setting)
