"""The experiment surface: sweeps and their results, DDP evaluation, exact resume, W&B without an account."""

import json
import math
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from PIL import Image

from support import ROOT, SHORT, run, run_ok
from synground.conf import CONFIG_DIR


@pytest.mark.slow
def test_a_ratio_sweep_runs_every_ratio_survives_a_bad_one_and_summarises(tmp_path):
    run_ok("train.py", "-m", *SHORT, "data.synthetic_ratio=0,1.5,1", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    runs = [tmp_path / "sweep" / str(i) for i in range(3)]
    assert (runs[0] / "metrics.json").exists() and (runs[2] / "metrics.json").exists()
    failure = json.loads((runs[1] / "failed.json").read_text())["error"]
    assert "synthetic_ratio (data.synthetic_ratio) must lie in [0, 1]" in failure and not (runs[1] / "metrics.json").exists()
    # the Grad-CAM gallery of each run, as PNG grids when W&B is off
    with Image.open(runs[0] / "gallery" / "val_shapes_textured_epoch001.png") as grid:
        assert grid.format == "PNG" and grid.width > 400

    summary = subprocess.run(
        [sys.executable, "-m", "synground.results", str(tmp_path / "sweep")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert summary.returncode == 0, summary.stderr
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())["runs"]
    assert [row["x"] for row in rows] == [0, 1, 1.5]
    assert 0 <= rows[0]["metrics"]["test/pointing_game/shapes_textured"] <= 1 and "error" in rows[2]
    assert "| 1.5 | failed:" in summary.stdout
    with Image.open(tmp_path / "sweep" / "pointing_game.png") as plot:
        assert plot.format == "PNG"


@pytest.mark.slow
def test_sweeping_a_key_that_does_not_exist_fails_before_training(tmp_path):
    result = run("train.py", "-m", *SHORT, "data.synthetic_rato=0,1", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode != 0 and "synthetic_rato" in result.stderr
    assert not list((tmp_path / "sweep").rglob("metrics.json"))


@pytest.mark.slow
def test_two_ddp_processes_score_the_same_pointing_game_as_one(tmp_path):
    scores = {}
    for name, trainer in (("one", "trainer=default"), ("two", "trainer=ddp_cpu")):
        run_ok("eval.py", *SHORT, trainer, "data.num_workers=0", f"hydra.run.dir={tmp_path}/{name}", cwd=tmp_path)
        scores[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    # every map metric and item count summed over both ranks: counts and ratios of counts exactly, the mass in the box
    # (a sum of floats, added in another order over two ranks) to float precision
    assert scores["two"].keys() == scores["one"].keys()
    for key, value in scores["one"].items():
        expected = pytest.approx(value, rel=1e-6) if key.startswith("test/mass_in_box/") else value
        assert scores["two"][key] == expected, key
    for metric in ("pointing_game", "pointing_game_tolerant", "mass_in_box", "box_accuracy_map", "box_accuracy_proposals"):
        assert f"test/{metric}/shapes_textured" in scores["one"] and f"test/{metric}/mean" in scores["one"]
    assert scores["one"]["test/items/shapes_textured"] > 20  # every phrase of the 20 scenes, none twice


@pytest.mark.slow
def test_resuming_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path):
    common = [*SHORT, "trainer.max_epochs=2", "test=false"]
    run_ok("train.py", *common, f"hydra.run.dir={tmp_path}/straight", cwd=tmp_path)
    run_ok("train.py", *SHORT, "trainer.max_epochs=1", "test=false", f"hydra.run.dir={tmp_path}/first", cwd=tmp_path)
    run_ok(
        "train.py",
        *common,
        f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt",
        f"hydra.run.dir={tmp_path}/resumed",
        cwd=tmp_path,
    )
    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    got = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert got.keys() == expected.keys() and "train/loss" in got
    # same data, negatives and weights: the last losses agree to float noise (two straight runs differ by as much,
    # threads sum in varying order) and the pointing game exactly
    timed = "train/seconds_per_step"
    assert timed in got and all(math.isclose(got[name], value, rel_tol=1e-5) for name, value in expected.items() if name != timed)
    assert {k: v for k, v in got.items() if "pointing_game" in k} == {k: v for k, v in expected.items() if "pointing_game" in k}


@pytest.mark.slow
def test_wandb_without_a_login_logs_offline_with_a_warning_and_never_prompts(tmp_path):
    env = {
        "WANDB_MODE": "",
        "WANDB_API_KEY": "",
        "HOME": str(tmp_path),
        "NETRC": str(tmp_path / "no-netrc"),
        "WANDB_DIR": str(tmp_path),
    }
    result = run_ok(
        "train.py", *SHORT, "trainer.max_epochs=1", "logger=wandb", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, env=env
    )
    assert "no login found" in result.stderr + result.stdout
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"  # the Grad-CAM gallery as W&B images with ground-truth boxes
    assert list(media.glob("images/gallery/test/shapes_textured_*.png"))
    assert list(media.glob("metadata/boxes2D/gallery/test/shapes_textured_*.boxes2D.json"))


def test_the_paper_experiments_compose_with_their_models_data_and_ratios():
    from hydra import compose, initialize_config_dir

    expected = {"amc_vg": 0.0, "synground": 1.0, "synground_vg": 0.5}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for model, target in (("albef", "AlbefGroundingModel.from_checkpoint"), ("blip", "BlipGroundingModel.from_pretrained")):
            off_the_shelf = compose("eval", overrides=[f"experiment={model}_off_the_shelf"])
            assert off_the_shelf.model.net._target_.endswith(target) and "refcoco_plus_testA" in off_the_shelf.data.test
            for variant, ratio in expected.items():
                cfg = compose("train", overrides=[f"experiment={model}_{variant}"])
                assert cfg.model.net._target_.endswith(target) and cfg.data.synthetic_ratio == ratio
                assert cfg.trainer.strategy == "ddp" and cfg.trainer.max_epochs == 30 and cfg.model.lr == 1e-5
                assert bool(cfg.data.train.synthetic) == (ratio > 0) and bool(cfg.data.train.real) == (ratio < 1)
            # SelfEQ's setting: real Visual Genome phrases with paraphrases, no box loss, SelfEQ in the first epoch
            selfeq = compose("train", overrides=[f"experiment={model}_selfeq_vg"])
            assert selfeq.model.net._target_.endswith(target) and selfeq.data.batch_size == 56
            assert (selfeq.model.amc_weight, selfeq.model.selfeq_weight, selfeq.model.selfeq_epochs) == (0.0, 1.0, 1)
            assert selfeq.data.train.real[0].endswith("visual_genome_paraphrased") and not selfeq.data.train.synthetic


@pytest.mark.slow
def test_the_mixing_study_pretrains_its_encoders_trains_both_sweeps_analyses_them_and_resumes(tmp_path):
    """The primary condition at 2 ratios x 2 seeds, a real pool of 8 and a real-only pool of 4: 2 encoders (one per
    seed, 2 steps) and 6 runs of 2 steps, two processes at a time."""
    study = [
        *("--conditions", "disjoint", "--seeds", "0", "1", "--ratios", "0", "0.5", "--pool", "8", "--curve-sizes", "4"),
        *("--pretraining-steps", "2", "--run-length", "trainer.max_epochs=1", "data.batches_per_epoch=2"),
        *("--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "out")),
        *("--extra", "data.image_size=64", "data.batch_size=4", "data.num_workers=0"),
        *(f"data.{split}.num_samples=4" for split in ("val.shapes_textured", "test.shapes_textured")),
    ]
    first = run_ok("benchmarks/mixing_study.py", *study, cwd=tmp_path)
    assert "pretraining 2 encoders" in first.stdout and "0 of 6 runs finished already; training 6" in first.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "results.md",
        "results.json",
        "ratio_sweep.png",
        "learning_curve.png",
    }
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    result = record["conditions"]["disjoint"]
    assert [(g["x"], g["seeds"]) for g in result["ratio_sweep"]["values"]] == [(0.0, [0, 1]), (0.5, [0, 1])]
    assert [(g["x"], g["seeds"]) for g in result["learning_curve"]["values"]] == [(4, [0, 1]), (8, [0, 1])]
    paired = result["ratio_sweep"]["paired"]
    assert [(c["x"], c["n"]) for c in paired] == [(0.5, 2)] and {"p", "p_holm", "ci_bonferroni"} <= set(paired[0])
    # the sweep's ratio-0 runs are the curve's pool-8 runs: one directory each
    assert result["learning_curve"]["runs"][2]["run"] == result["ratio_sweep"]["runs"][0]["run"]
    # each seed's runs start from that seed's encoder
    for seed in (0, 1):
        config = OmegaConf.load(tmp_path / "runs" / "disjoint" / f"pool8-ratio0.5-seed{seed}" / ".hydra" / "config.yaml")
        assert config.model.net.vision_weights == str(
            tmp_path / "runs" / "encoders" / f"disjoint_dense-seed{seed}_blip.safetensors"
        )
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "Real-only learning curve" in markdown and "Equivalent real scenes:" in markdown and "Verdict:" in markdown

    killed = tmp_path / "runs" / "disjoint" / "pool4-ratio0.0-seed1"
    (killed / "metrics.json").unlink()  # as if killed before the end
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/*/metrics.json")}
    encoders = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "encoders").glob("*.safetensors")}
    second = run_ok("benchmarks/mixing_study.py", *study, cwd=tmp_path)
    assert "pretraining 0 encoders" in second.stdout and "5 of 6 runs finished already; training 1" in second.stdout
    assert f"clearing unfinished run {killed}" in second.stdout and (killed / "metrics.json").exists()
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in {**finished, **encoders}.items())

    # analysing a part not run yet leaves it out, and says so, instead of failing on the parts there are
    at = study.index("disjoint") + 1
    third = run_ok("benchmarks/mixing_study.py", "--analyse-only", *study[:at], "random", *study[at:], cwd=tmp_path)
    assert f"condition random: no run in {tmp_path / 'runs' / 'random'} yet" in third.stdout
    assert list(json.loads((tmp_path / "out" / "results.json").read_text())["conditions"]) == ["disjoint"]


@pytest.mark.slow
def test_each_test_split_is_scored_with_the_checkpoint_best_on_its_benchmarks_validation_split(tmp_path):
    """AMC's protocol: data.val_split_of keeps one best checkpoint per validation split; train.py tests each test split
    with its own, and eval.py given the run directory does the same in one command."""
    per_benchmark = [
        *SHORT,
        "+data.val.shapes_clean=${data.test.shapes_clean}",  # the clean test scenes stand in for a clean benchmark's val
        "+data.val_split_of={shapes_clean: shapes_clean, shapes_textured: shapes_textured}",
    ]
    run_ok("train.py", *per_benchmark, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert {path.name for path in checkpoints.glob("best-*.ckpt")} == {"best-shapes_clean.ckpt", "best-shapes_textured.ckpt"}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())

    scores = {}
    for name, checkpoint in (("run", tmp_path / "run"), ("clean", checkpoints / "best-shapes_clean.ckpt")):
        run_ok("eval.py", *per_benchmark, f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path}/eval-{name}", cwd=tmp_path)
        scores[name] = json.loads((tmp_path / f"eval-{name}" / "metrics.json").read_text())
    tested = {key: value for key, value in metrics.items() if key.startswith("test/")}
    assert scores["run"] == pytest.approx(tested)  # eval.py on the run directory scores as train.py's own test
    for metric in ("pointing_game", "mass_in_box", "box_accuracy_proposals"):
        # the clean split was scored with the checkpoint best on clean validation scenes
        assert tested[f"test/{metric}/shapes_clean"] == pytest.approx(scores["clean"][f"test/{metric}/shapes_clean"])
        means = (tested[f"test/{metric}/shapes_clean"] + tested[f"test/{metric}/shapes_textured"]) / 2
        assert tested[f"test/{metric}/mean"] == pytest.approx(means)  # the mean over both splits, not over one group


@pytest.mark.slow
def test_a_val_split_of_naming_no_split_is_refused_before_training(tmp_path):
    result = run(
        "train.py", *SHORT, "+data.val_split_of={shapes_clean: shapes_clen}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert result.returncode != 0
    assert "val_split_of (data.val_split_of)['shapes_clean']=shapes_clen: needs a test split 'shapes_clean'" in result.stderr


def test_a_benchmark_reuses_a_finished_run_of_its_config_retrains_an_unfinished_one_and_stops_on_another_config(tmp_path):
    """benchmarks/runner.finished, which every many-run benchmark asks before it trains a run again."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hydra import compose, initialize_config_dir

    from runner import finished

    overrides = ["experiment=shapes_short", "seed=3"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=overrides)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({"test/pointing_game/shapes_clean": 0.9}))

    assert finished(run_dir, ["test/pointing_game/shapes_clean"], overrides)
    with pytest.raises(SystemExit, match=r"trained with another config.*differs at seed\b"):
        finished(run_dir, ["test/pointing_game/shapes_clean"], ["experiment=shapes_short", "seed=4"])
    assert (run_dir / "metrics.json").is_file()  # a finished run is never thrown away
    assert not finished(run_dir, ["test/pointing_game/shapes_textured"], overrides)  # killed before that score
    assert not run_dir.exists()


def test_the_study_reports_a_mix_that_beats_real_only_at_every_pool_as_beyond_the_curve_not_a_count():
    """The upper-bound encoder's best mix at 16 real scenes beat real only at 1,024 in every seed resample: no
    equivalent count can be read, and the text must say so instead of failing on the interval's missing ends."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mixing_study import equivalent_text

    curve = [{"x": 16, "runs": ["a"]}, {"x": 1024, "runs": ["b"]}]
    result = {
        "best_ratio": {"ratio": 0.5},
        "learning_curve": {"values": curve},
        "equivalent_real_scenes": {"size": None, "bracket": [1024], "relation": "beyond the largest size measured", "rise": {}},
        "equivalent_interval": {"ci95": [None, None], "beyond_share": 1.0, "resamples": 2000, "seeds": [0, 1, 2, 3, 4]},
    }
    text = equivalent_text(result)
    assert text.startswith("beyond the largest size measured") and "100% of 2000" in text and "at 1024 scenes" in text
    assert "rough reading" not in text  # nothing was interpolated
    result["equivalent_real_scenes"] |= {"size": 332.1, "bracket": [16, 1024], "relation": "interpolated"}
    result["equivalent_interval"] |= {"ci95": [184.2, None], "beyond_share": 0.1}
    text = equivalent_text(result)
    assert text.startswith("about 332 (between 16 and 1024)") and "184 to more than 1024" in text and "rough reading" in text
