"""Export (synground.inference.export): self-contained directories others load with transformers, the original ALBEF code's
layout or the Grounder, with a model card; and the Hub upload, up to the upload call."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BlipForImageTextRetrieval

from support.released_checkpoints import released_albef_shapes
from synground import Grounder
from synground.inference.export import export_model, main, push_to_hub
from synground.models.albef import IGNORED_PREFIXES
from synground.shapes import ShapesGenerator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exports(trained_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {name: export_model(checkpoint, root / name) for name, (_, checkpoint) in trained_runs.items()}


def trained_net(checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}


def assert_same_results(a: Grounder, b: Grounder):
    scene = ShapesGenerator("textured", image_size=96).scene("export", 11)
    phrases = [region.phrase for region in scene.regions]
    for x, y in zip(a(scene.image, phrases), b(scene.image, phrases)):
        assert x.point == y.point and x.score == pytest.approx(y.score, abs=1e-6)
        torch.testing.assert_close(x.cam, y.cam)


def test_a_blip_export_loads_in_plain_transformers_and_in_the_grounder(trained_runs, exports):
    directory, checkpoint = exports["blip"], trained_runs["blip"][1]
    model, info = BlipForImageTextRetrieval.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    trained = {key.removeprefix("model."): value for key, value in trained_net(checkpoint).items()}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)

    original = Grounder.load(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.get_vocab() == original.net.tokenizer.get_vocab()  # every word, not just the count
    assert tokenizer.encode("the red circle on the left") == original.net.tokenizer.encode("the red circle on the left")
    assert_same_results(Grounder.load(directory), original)


def test_an_albef_export_has_the_released_layout_and_loads_in_the_grounder(trained_runs, exports):
    directory, checkpoint = exports["albef"], trained_runs["albef"][1]
    original = Grounder.load(checkpoint)
    config = original.net.config
    released = {
        key: shape
        for key, shape in released_albef_shapes(config, grid=config.image_size // config.patch_size, bert="text_encoder.").items()
        if not key.startswith(IGNORED_PREFIXES) and not key.split(".")[0].endswith("_m")
    }
    weights = load_file(directory / "model.safetensors")
    assert {key: tuple(value.shape) for key, value in weights.items()} == released
    for key, value in trained_net(checkpoint).items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)
    # what the original code reads: torch.load(...)["model"], plain tensors (loadable without unpickling objects)
    for key, value in torch.load(directory / "albef.pth", map_location="cpu", weights_only=True)["model"].items():
        assert torch.equal(value, weights[key])
    vocabulary = (directory / "vocab.txt").read_text().splitlines()
    assert vocabulary == sorted(original.net.tokenizer.get_vocab(), key=original.net.tokenizer.get_vocab().get)
    assert_same_results(Grounder.load(directory), original)


def test_the_model_card_traces_the_model_to_its_data_metrics_and_commands(trained_runs, exports):
    run_dir, checkpoint = trained_runs["blip"]
    card = (exports["blip"] / "README.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"| test/pointing_game/held_out | {metrics['test/pointing_game/held_out']:.4f} |" in card
    assert json.loads((exports["blip"] / "metrics.json").read_text()) == metrics
    # the training command (its overrides) and the shard set it read, with the command that generated it
    assert "python train.py data=shards 'data.train.synthetic=[" in card
    manifest = json.loads((run_dir / "data_manifests" / "0-synthetic-clean.json").read_text())
    assert f"`0-synthetic-clean.json`: 16 samples in 2 shards, complete; made by `{manifest['command']}`" in card
    assert (exports["blip"] / "data_manifests" / "0-synthetic-clean.json").is_file()
    assert f"synground-export {checkpoint}" in card
    settings = json.loads((exports["blip"] / "synground.json").read_text())
    assert settings["architecture"] == "blip" and settings["image_size"] == 64 and settings["global_step"] == 2
    albef_card = (exports["albef"] / "README.md").read_text()
    assert "generated on the fly by `synground.shapes.ShapesGenerator`" in albef_card and "albef.pth" in albef_card


def test_an_export_never_replaces_a_directory_silently_and_a_failed_one_leaves_nothing(trained_runs, tmp_path, monkeypatch):
    checkpoint = trained_runs["albef"][1]
    existing = tmp_path / "model"
    existing.mkdir()  # an earlier export, the one thing --overwrite replaces
    (existing / "keep.txt").write_text("mine")
    (existing / "synground.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(checkpoint, existing)
    assert (existing / "keep.txt").read_text() == "mine"

    def broken(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr("synground.models.albef.AlbefGroundingModel.save_export", broken)
    with pytest.raises(OSError, match="disk full"):
        export_model(checkpoint, existing, overwrite=True)
    assert (existing / "keep.txt").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


class RecordingHub:
    """Stands in for huggingface_hub's network calls: records each call and what the folder held at upload time."""

    def __init__(self, monkeypatch):
        self.calls = []
        # the real HfApi, with only its network methods replaced: the calls reach it with these arguments
        monkeypatch.setattr(
            "huggingface_hub.HfApi.create_repo", lambda api, repo_id, **options: self.create_repo(repo_id, options)
        )
        monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", lambda api, **options: self.upload_folder(**options))

    def create_repo(self, repo_id, options):
        self.calls.append(("create_repo", repo_id, options))

    def upload_folder(self, repo_id, folder_path, **options):
        self.calls.append(("upload_folder", repo_id, sorted(path.name for path in Path(folder_path).iterdir())))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def test_push_to_hub_creates_the_repository_then_uploads_the_whole_export(exports, tmp_path, monkeypatch):
    hub = RecordingHub(monkeypatch)
    url = push_to_hub(exports["blip"], "someone/shapes-blip", private=True)
    assert url == "https://huggingface.co/someone/shapes-blip/commit/0"
    (create, repo, options), (upload, uploaded_repo, files) = hub.calls
    assert (create, repo, upload, uploaded_repo) == ("create_repo", "someone/shapes-blip", "upload_folder", "someone/shapes-blip")
    assert options == {"repo_type": "model", "private": True, "exist_ok": True}
    assert {"README.md", "synground.json", "model.safetensors", "config.json", "metrics.json"} <= set(files)
    with pytest.raises(FileNotFoundError, match="not a synground export"):
        push_to_hub(tmp_path, "someone/empty")


def test_the_command_line_exports_then_uploads(trained_runs, tmp_path, monkeypatch, capsys):
    hub = RecordingHub(monkeypatch)
    main([str(trained_runs["albef"][1]), str(tmp_path / "albef"), "--push-to-hub", "someone/shapes-albef"])
    assert [call[0] for call in hub.calls] == ["create_repo", "upload_folder"]
    assert {"README.md", "synground.json", "model.safetensors", "albef.pth", "vocab.txt"} <= set(hub.calls[1][2])
    assert "uploaded: https://huggingface.co/someone/shapes-albef/commit/0" in capsys.readouterr().out
