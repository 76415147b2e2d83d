"""train.py, eval.py and generate.py end to end, as a user runs them."""

import json
import tarfile

import pytest

from support import ONE_EPOCH, generate_shapes, run, run_ok
from support.raw_datasets import write_flickr30k


@pytest.mark.slow
def test_two_training_steps_then_test_write_metrics_json(tmp_path):
    result = run_ok(
        "train.py",
        "experiment=shapes",
        "data.batches_per_epoch=2",
        *ONE_EPOCH,
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("shapes_clean", "shapes_textured"):
        assert 0.0 <= metrics[f"test/pointing_game/{split}"] <= 1.0
    assert "val/pointing_game/shapes_textured" in metrics
    assert metrics["train/global_step"] == 2 and 0 < metrics["train/seconds_per_step"] < 60
    table = [line.split() for line in result.stdout.splitlines() if line.startswith(("split ", "test/"))]  # the results table
    assert table[0][:3] == ["split", "pointing_game", "pointing_game_tolerant"] and table[2][0] == "test/shapes_clean"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_an_unknown_config_key_fails_before_any_work(tmp_path):
    result = run("train.py", "experiment=shapes", "model.amc_wieght=0", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode != 0
    assert "amc_wieght" in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_generated_shards_train_and_evaluate_through_the_shards_config(tmp_path):
    for style, count in (("clean", 24), ("textured", 12)):
        generate_shapes(tmp_path / style, style, count, 10)
    assert len(json.loads((tmp_path / "clean" / "manifest.json").read_text())["shards"]) == 3
    run_ok(
        "train.py",
        "data=shards",
        f"data.train.synthetic=[{tmp_path}/clean]",
        f"+data.test.held_out={tmp_path}/textured",
        "data.image_size=64",
        "data.num_workers=0",
        "data.batches_per_epoch=2",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "model.net.image_size=64",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/pointing_game/held_out"] <= 1.0
    # the run keeps the manifest of the shards it trained on: a result traces back to its data
    kept = json.loads((tmp_path / "run" / "data_manifests" / "0-synthetic-clean.json").read_text())
    assert kept == json.loads((tmp_path / "clean" / "manifest.json").read_text())


@pytest.mark.slow
def test_eval_of_the_trained_checkpoint_reproduces_the_training_run_test_numbers(tmp_path):
    shared = [
        "experiment=shapes",
        "model=albef_tiny",
        "trainer.limit_test_batches=2",
        "data.num_workers=0",
        "data.eval_batch_size=16",
    ]
    result = run_ok(
        "train.py",
        *shared,
        "data.batches_per_epoch=2",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={tmp_path}/train",
        cwd=tmp_path,
    )
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    checkpoint = next((tmp_path / "train" / "checkpoints").glob("epoch*.ckpt"))
    result = run_ok("eval.py", *shared, f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path)
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for split in ("shapes_clean", "shapes_textured"):
        assert evaluated[f"test/pointing_game/{split}"] == trained[f"test/pointing_game/{split}"]
        assert evaluated[f"test/items/{split}"] == 32  # 2 batches of 16 items
    assert "test/pointing_game/shapes_textured" in result.stdout


@pytest.mark.slow
def test_eval_on_shards_scores_every_phrase_and_bad_arguments_fail_clearly(tmp_path):
    result = run_ok(
        "generate.py",
        "generation=shapes",
        "generation.generator.image_size=64",
        "generation.num_samples=6",
        f"output_dir={tmp_path}/shards",
        f"hydra.run.dir={tmp_path}/gen",
        cwd=tmp_path,
    )
    with tarfile.open(next((tmp_path / "shards").glob("*.tar"))) as tar:
        phrases = sum(len(json.load(tar.extractfile(member))["regions"]) for member in tar if member.name.endswith(".json"))
    data = [
        "data=shards",
        f"+data.test.held_out={tmp_path}/shards",
        "data.image_size=64",
        "data.num_workers=0",
        "model.net.image_size=64",
    ]
    result = run_ok("eval.py", *data, f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/items/held_out"] == phrases
    assert 0.0 <= metrics["test/pointing_game/held_out"] <= 1.0

    result = run("eval.py", *data, f"ckpt_path={tmp_path}/missing.ckpt", f"hydra.run.dir={tmp_path}/eval2", cwd=tmp_path)
    assert result.returncode != 0 and "missing.ckpt: no such file" in result.stderr
    result = run("eval.py", "data=shards", f"hydra.run.dir={tmp_path}/eval3", cwd=tmp_path)
    assert result.returncode != 0 and "no test splits" in result.stderr


@pytest.mark.slow
def test_convert_then_evaluate_flickr30k_by_config_name(tmp_path):
    write_flickr30k(tmp_path / "raw" / "flickr30k_entities", ["5", "6", "7"], size=(96, 64))
    result = run_ok(
        "convert.py", "dataset=flickr30k", f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path}/convert", cwd=tmp_path
    )
    assert "3 images with 9 phrases in 1 shards" in result.stdout
    report = json.loads((tmp_path / "flickr30k-test" / "report" / "report.json").read_text())  # as generate.py writes
    assert report["samples"] == 3 and len(report["sheets"]["samples"]) == 3
    result = run_ok(
        "eval.py",
        "data=flickr30k",
        f"paths.data_dir={tmp_path}",
        "data.num_workers=0",
        "data.image_size=64",
        f"hydra.run.dir={tmp_path}/eval",
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/items/flickr30k_test"] == 9


def test_the_printed_results_table_has_a_row_per_split_and_a_column_per_map_metric():
    from synground.training import results_table

    metrics = {
        "test/pointing_game/a": 0.5,
        "test/mass_in_box/a": 0.25,
        "test/items/a": 8.0,
        "test/pointing_game/mean": 0.5,
        "train/loss": 1.0,
    }
    header, split_a, mean = results_table(metrics).splitlines()
    assert header.split() == ["split", "pointing_game", "mass_in_box", "items"]
    assert split_a.split() == ["test/a", "0.5000", "0.2500", "8"] and mean.split() == ["test/mean", "0.5000", "-"]
