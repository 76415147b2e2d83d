"""Fault injections for loading what others made: a shared run folder or export must run nothing and load nothing
damaged. Each test is one case of the adversarial report (issue 25) and failed before its fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from support import ROOT
from support.raw_datasets import write_visual_genome
from synground import Grounder
from synground.callbacks.map_metrics import GroundingMetrics, GroundingMetricsCallback
from synground.data.convert import convert_records
from synground.data.readers import visual_genome_records
from synground.data.shards import IncompleteShardSet, resolve_shards
from synground.inference.app import load_models
from synground.inference.export import export_model
from synground.models.builders import UnsafeConfigError, build_net
from synground.models.checkpoints import CheckpointError

TINY_NET = {
    "_target_": "synground.models.BlipGroundingModel.tiny",
    "vocabulary": ["the", "red", "circle"],
    "image_size": 32,
    "patch_size": 16,
    "vision_width": 16,
    "vision_layers": 2,
    "text_width": 16,
    "text_layers": 2,
    "heads": 2,
    "gradcam_layer": 0,
}


def write_run(run_dir: Path, net: dict, weights_of: dict = TINY_NET) -> Path:
    """A train.py run directory as someone might share it: .hydra/config.yaml and checkpoints/last.ckpt (the weights
    of the tiny model, whatever the config says)."""
    (run_dir / ".hydra").mkdir(parents=True)
    config = {"model": {"_target_": "synground.models.GroundingModule", "net": net}, "data": {"image_size": 32}}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    weights = build_net(weights_of, "test").state_dict()
    (run_dir / "checkpoints").mkdir()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {f"net.{key}": value for key, value in weights.items()}, "global_step": 3}, checkpoint)
    return checkpoint


def malicious_nets(canary: Path, marker: Path) -> dict[str, dict]:
    """Configs that, instantiated by Hydra, empty `canary` or create `marker` through a shell."""
    return {
        "open for writing": {"_target_": "builtins.open", "file": str(canary), "mode": "w"},
        "a shell pipe": {"_target_": "webdataset.gopen", "url": f"pipe:touch {marker}"},
        "the project's own shard opener": {"_target_": "synground.data.shards.open_shard", "url": f"pipe:touch {marker}"},
        "an unsafe torch.load": {"_target_": "torch.load", "f": str(canary), "weights_only": False},
        "an allowed builder with a nested target": {
            **TINY_NET,
            "vocabulary": {"_target_": "builtins.open", "file": str(canary), "mode": "w"},
        },
        "an allowed builder with a keyword it lacks": {**TINY_NET, "_args_": [str(canary)]},
        "a _partial_ builder": {**TINY_NET, "_partial_": True},
    }


@pytest.mark.parametrize("case", list(malicious_nets(Path("c"), Path("m"))))
def test_a_shared_runs_config_naming_any_other_callable_runs_nothing_on_every_loading_path(tmp_path, case):
    canary, marker = tmp_path / "canary.txt", tmp_path / "marker"
    canary.write_text("precious")
    checkpoint = write_run(tmp_path / "run", malicious_nets(canary, marker)[case])
    loaders = {
        "Grounder.load": lambda: Grounder.load(checkpoint),
        "export": lambda: export_model(checkpoint, tmp_path / "export"),
        "app": lambda: load_models([checkpoint]),
    }
    for name, load in loaders.items():
        with pytest.raises(UnsafeConfigError, match=r"config\.yaml: model\.net") as refused:
            load()
        assert "model.net" in str(refused.value), name
    assert canary.read_text() == "precious" and not marker.exists()


@pytest.mark.slow
def test_ground_py_refuses_a_shared_run_whose_config_runs_a_shell_command(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = write_run(tmp_path / "run", {"_target_": "webdataset.gopen", "url": f"pipe:touch {marker}"})
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), "white").save(tmp_path / "images" / "photo.png")
    ground = subprocess.run(
        [
            sys.executable,
            "ground.py",
            f"ckpt_path={checkpoint}",
            f"images={tmp_path / 'images'}",
            "phrases=[x]",
            f"hydra.run.dir={tmp_path / 'g'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ground.returncode != 0 and "UnsafeConfigError" in ground.stderr, ground.stderr[-2000:]
    assert not marker.exists()


def test_the_allowed_builders_still_load_a_shared_run_and_its_arguments_are_type_checked(tmp_path):
    checkpoint = write_run(tmp_path / "run", {**TINY_NET, "_target_": "synground.models.blip.BlipGroundingModel.tiny"})
    grounder = Grounder.load(checkpoint)
    assert grounder.global_step == 3 and grounder.image_size == 32
    with pytest.raises(UnsafeConfigError, match=r"model\.net\.text_layers = '2; rm -rf' is not of type <class 'int'>"):
        build_net({**TINY_NET, "text_layers": "2; rm -rf"}, "config.yaml")
    with pytest.raises(UnsafeConfigError, match=r"model\.net\.heads = True is not of type"):
        build_net({**TINY_NET, "heads": True}, "config.yaml")


@pytest.mark.parametrize(
    "data,message",
    [
        ({"image_size": 32, "std": [0, 0, 0]}, r"std \[0, 0, 0\] has a value that is not positive"),
        ({"image_size": 32, "mean": [0.5, 0.5]}, r"mean \[0\.5, 0\.5\] is not three finite numbers"),
        ({"image_size": -4}, r"image_size -4 is not a positive whole number"),
    ],
)
def test_a_run_config_with_unusable_normalisation_or_size_is_refused_naming_it(tmp_path, data, message):
    checkpoint = write_run(tmp_path / "run", TINY_NET)
    config = tmp_path / "run" / ".hydra" / "config.yaml"
    config.write_text(OmegaConf.to_yaml({**OmegaConf.to_container(OmegaConf.load(config)), "data": data}))
    with pytest.raises(ValueError, match=rf"config\.yaml: data\.{message}"):
        Grounder.load(checkpoint)


TINY_ALBEF = {
    **{key: value for key, value in TINY_NET.items() if key != "_target_"},
    "_target_": "synground.models.AlbefGroundingModel.tiny",
    "text_layers": 3,
    "fusion_layer": 1,
    "gradcam_layer": 1,
    "embed_dim": 16,
}


@pytest.fixture(scope="module")
def shared_exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {
        name: export_model(write_run(root / f"run-{name}", net, weights_of=net), root / name)
        for name, net in (("blip", TINY_NET), ("albef", TINY_ALBEF))
    }


def damaged_copy(export: Path, tmp_path: Path) -> Path:
    copy = tmp_path / export.name
    shutil.copytree(export, copy)
    return copy


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "model,damage,message",
    [
        ("blip", lambda d: flip_a_byte(d / "model.safetensors"), r"model\.safetensors differs from the sha256"),
        ("albef", lambda d: flip_a_byte(d / "model.safetensors"), r"model\.safetensors differs from the sha256"),
        (
            "blip",
            lambda d: edit_json(d / "config.json", lambda c: c["text_config"].update(num_hidden_layers=1)),
            r"config\.json differs from the sha256",
        ),
        (
            "albef",
            lambda d: (d / "vocab.txt").write_text("\n".join((d / "vocab.txt").read_text().split("\n")[:10])),
            r"vocab\.txt differs",
        ),
        ("blip", lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors is missing"),
        (
            "blip",
            lambda d: edit_json(d / "synground.json", lambda s: s.update(std=[0, 0, 0])),
            r"std \[0, 0, 0\] has a value that is not positive",
        ),
    ],
)
def test_a_damaged_export_is_refused_naming_the_file(shared_exports, tmp_path, model, damage, message):
    copy = damaged_copy(shared_exports[model], tmp_path)
    assert Grounder.load(copy).image_size == 32  # undamaged, it loads
    damage(copy)
    with pytest.raises((CheckpointError, ValueError), match=message):
        Grounder.load(copy)


def test_an_export_from_before_checksums_still_has_its_vocabulary_size_checked(shared_exports, tmp_path):
    copy = damaged_copy(shared_exports["albef"], tmp_path)
    edit_json(copy / "synground.json", lambda s: s.pop("files"))
    Grounder.load(copy)  # loads, with a warning that its files are not verified
    (copy / "vocab.txt").write_text("\n".join((copy / "vocab.txt").read_text().split("\n")[:10]))
    with pytest.raises(CheckpointError, match=r"vocab\.txt has 10 tokens for the model's \d+ word embeddings"):
        Grounder.load(copy)


def test_export_overwrite_replaces_only_an_earlier_export_never_the_training_run(tmp_path):
    checkpoint = write_run(tmp_path / "run", TINY_NET)
    before = sorted(path.relative_to(tmp_path) for path in (tmp_path / "run").rglob("*"))
    for target in (tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path):
        with pytest.raises(FileExistsError, match="holds the checkpoint's training run"):
            export_model(checkpoint, target, overwrite=True)
    assert sorted(path.relative_to(tmp_path) for path in (tmp_path / "run").rglob("*")) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="is not a synground export"):
        export_model(checkpoint, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    export_model(checkpoint, tmp_path / "export")
    export_model(checkpoint, tmp_path / "export", overwrite=True)  # an earlier export is replaced
    assert json.loads((tmp_path / "export" / "synground.json").read_text())["global_step"] == 3


def test_an_evaluation_split_with_no_items_reports_no_score_and_stays_out_of_the_mean():
    """A converted set whose images were all missing once scored pointing game 0.0 (items 0) and dragged the mean."""
    logged = {}
    module = type("Module", (), {"log_dict": lambda self, values, **options: logged.update(values)})()
    callback = GroundingMetricsCallback()
    scored, empty = GroundingMetrics(), GroundingMetrics()
    maps = torch.zeros(1, 10, 10)
    maps[0, 4, 4] = 1.0
    scored.update(maps, [torch.tensor([[3.0, 3.0, 6.0, 6.0]])], torch.tensor([[10, 10]]))
    callback.metrics["test"] = {"refcoco_plus_testA": scored, "visual_genome_empty": empty}
    with pytest.warns(UserWarning, match="test split visual_genome_empty: no item was scored"):
        callback._end(module, "test")
    assert logged["test/pointing_game/mean"] == logged["test/pointing_game/refcoco_plus_testA"] == 1.0
    assert "test/pointing_game/visual_genome_empty" not in logged
    assert logged["test/items/visual_genome_empty"] == 0


def test_a_conversion_whose_images_are_all_missing_is_an_error_not_a_complete_empty_set(tmp_path):
    write_visual_genome(tmp_path / "vg", count=4)
    for folder in ("VG_100K", "VG_100K_2"):
        shutil.rmtree(tmp_path / "vg" / folder)
    with pytest.raises(ValueError, match=r"every one of the 4 records was skipped \(\{'missing_image': 4\}\).*VG_100K"):
        convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "shards", "vg")
    with pytest.raises(IncompleteShardSet):  # evaluation refuses the set instead of scoring 0.0 on 0 items
        resolve_shards(str(tmp_path / "shards"))
