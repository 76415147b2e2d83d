"""benchmarks/gpu_check.py: the smoke run end to end (every part, tiny models, on the CPU), and how the check reads
train.py's logs, classifies a part's failure and reports parts that did not finish."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from support import ROOT, run

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check
from gradcam_throughput import batched_maps, per_sample_maps


@pytest.mark.slow
def test_smoke_run_measures_every_part(tmp_path):
    result = run(
        "benchmarks/gpu_check.py",
        "--smoke",
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(tmp_path / "check"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = json.loads((tmp_path / "check.json").read_text())
    parts = {part["part"]: part for part in check["parts"]}
    assert list(parts) == gpu_check.PARTS
    assert parts["ddp:blip"]["status"] == "skipped"
    assert {name: part["status"] for name, part in parts.items() if name != "ddp:blip"} == dict.fromkeys(
        [name for name in gpu_check.PARTS if name != "ddp:blip"], "ok"
    )

    for model in gpu_check.MODELS:
        trained = parts[f"train:{model}"]
        assert trained["batch_size_per_process"] == gpu_check.MODES["smoke"].train_batch
        assert trained["samples_per_second"] > 0 and trained["steps_timed"] == 2  # 3 steps, the first left out
        breakdown = trained["breakdown"]
        assert set(breakdown) == {"amc", "no_double_backward", "itm"} and all(v["seconds"] > 0 for v in breakdown.values())
        assert math.isclose(trained["amc_over_itm"], breakdown["amc"]["seconds"] / breakdown["itm"]["seconds"], rel_tol=0.01)
        evaluated = parts[f"eval:{model}"]
        # the batched maps are the reference loop's, and so are their pointing-game hits (bf16 autocast on both)
        assert evaluated["items"] >= 8 and evaluated["same_hits"] == evaluated["items"]
        assert evaluated["map_difference"] < 1e-3
        loader = parts["data_loader"]["models"][model]
        assert loader["samples_per_second"] > 0 and loader["training_samples_per_second"] == trained["samples_per_second"]
    assert parts["ddp:albef"]["processes"] == 2 and parts["ddp:albef"]["samples_per_second"] > 0
    assert parts["diffusion"]["images"] == 2 and parts["diffusion"]["images_per_hour"] > 0
    assert parts["detector"]["images_per_second"] > 0
    end_to_end = parts["end_to_end"]
    assert end_to_end["triplets"] > 0
    assert {"describe", "text_to_image", "phrases", "detect", "clip_score"} <= set(end_to_end["items_per_second"])

    page = (tmp_path / "check.md").read_text()
    for heading in ("## Training", "## Evaluation", "## Generation", "## Data loader"):
        assert heading in page


@pytest.mark.slow
def test_a_part_over_its_budget_is_stopped_and_recorded(tmp_path):
    record = gpu_check.launch("prepare", "smoke", tmp_path, budget=1)
    assert record["status"] == "timed_out" and "budget of 1 s" in record["error"]
    assert not gpu_check.part_file(tmp_path, "prepare").exists()
    failed = gpu_check.launch("eval:albef", "smoke", tmp_path, budget=120)  # no shards written: the part fails
    assert failed["status"] == "failed" and "shards" in failed["error"]


def test_out_of_memory_is_told_from_other_failures():
    assert gpu_check.out_of_memory("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert gpu_check.out_of_memory("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    assert not gpu_check.out_of_memory("RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x768 and 512x768)")


def test_step_metrics_read_each_logged_step(tmp_path):
    table = tmp_path / "csv" / "version_0" / "metrics.csv"
    table.parent.mkdir(parents=True)
    table.write_text(
        "epoch,step,train/loss,train/peak_memory_gib,train/seconds_per_step\n"
        "0,0,0.7,10.5,2.0\n"
        "0,0,0.7,,\n"  # an epoch-level row: no step time
        "0,1,0.6,11.0,0.5\n"
    )
    steps = gpu_check.step_metrics(tmp_path)
    assert [s["train/seconds_per_step"] for s in steps] == [2.0, 0.5]
    assert [s["train/peak_memory_gib"] for s in steps] == [10.5, 11.0]


def test_report_names_parts_that_did_not_finish():
    result = {
        "mode": "gpu",
        "command": "python benchmarks/gpu_check.py",
        "date": "2026-12-05",
        "machine": gpu_check.machine(),
        "parts": [
            {"part": "prepare", "status": "ok", "wall_seconds": 30.0, "budget_seconds": 60},
            {"part": "train:blip", "status": "out_of_memory", "wall_seconds": 12.0, "budget_seconds": 80},
            {"part": "ddp:blip", "status": "skipped", "reason": "1 GPU: DDP needs two or more"},
        ],
    }
    page = gpu_check.report(result)
    assert "| train:blip | out_of_memory | 12.0 | 80 |" in page
    assert "skipped: 1 GPU: DDP needs two or more" in page
    assert "## Training" not in page  # no figures from a part that did not finish


def test_the_amc_breakdown_reports_its_costs_beside_the_timing_noise():
    # medians 1.0, 0.8 and 0.6 s; the widest spread of one way's repeats is the AMC step's, 1.1 - 0.9
    breakdown = {
        "amc": {"seconds": 1.0, "timings": [0.9, 1.0, 1.1], "peak_memory_gib": None},
        "no_double_backward": {"seconds": 0.8, "timings": [0.8, 0.8, 0.85], "peak_memory_gib": None},
        "itm": {"seconds": 0.6, "timings": [0.55, 0.6, 0.6], "peak_memory_gib": None},
    }
    figures = gpu_check.breakdown_figures(breakdown, step_seconds=2.0)
    assert figures["breakdown_repeats"] == 3
    assert math.isclose(figures["breakdown_noise_seconds"], 0.2)
    assert math.isclose(figures["amc_over_itm"], 1.0 / 0.6, rel_tol=1e-3)
    assert math.isclose(figures["gradcam_gradient_seconds"], 0.2) and math.isclose(figures["double_backward_seconds"], 0.2)
    assert math.isclose(figures["double_backward_share_of_step"], 0.1)

    trained = {"part": "train:albef", "status": "ok", "wall_seconds": 40.0, "budget_seconds": 65, "processes": 1}
    trained |= {"batch_size_per_process": 64, "samples_per_second": 32.0, "seconds_per_step": 2.0, "peak_memory_gib": 30.0}
    result = {"mode": "gpu", "command": "-", "date": "-", "machine": gpu_check.machine(), "parts": [trained | figures]}
    page = gpu_check.report(result)
    assert "| 0.200 ± 0.200 | 0.200 ± 0.200 | 0.10 |" in page and "median of 3 interleaved repeat(s)" in page

    # one timing each (AmcBreakdown(repeats=1); every mode takes 3): no spread to show, and the page says what that means
    single = {name: {**way, "timings": [way["seconds"]]} for name, way in breakdown.items()}
    figures = gpu_check.breakdown_figures(single, step_seconds=2.0)
    assert figures["breakdown_noise_seconds"] is None
    page = gpu_check.report(result | {"parts": [trained | figures]})
    assert "| 0.200 | 0.200 | 0.10 |" in page and "can come out negative" in page


@pytest.mark.slow
def test_without_a_gpu_the_full_check_refuses_and_names_the_cpu_modes(tmp_path):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--work-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "--smoke" in result.stderr and "--dry-run" in result.stderr


def test_the_reference_loop_gives_each_models_own_maps(tiny_model):
    """The per-sample loop that the evaluation part (and benchmarks/gradcam_throughput.py) times against the batched
    maps averages the tokens of the model's recipe: BLIP's phrase tokens, ALBEF's all."""
    tiny_model.eval()
    module = torch.nn.Module()
    module.net = tiny_model
    module.evaluation_maps = lambda batch: {
        "maps": tiny_model.evaluation_gradcam(batch["images"], batch["texts"], batch["image_index"]).maps
    }
    torch.manual_seed(0)
    texts = ["the red circle", "the blue square on the left", "a small triangle"]
    batch = {"images": torch.randn(2, 3, 64, 64), "texts": texts, "image_index": torch.tensor([0, 0, 1])}
    reference = per_sample_maps(module, batch)
    torch.testing.assert_close(batched_maps(module, batch), reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


@pytest.mark.slow
def test_the_full_size_decoder_stand_in_answers_in_phrases_to_its_token_limit(tmp_path):
    """The Vicuna-7B-shaped stand-in (one of its layers here) loads through the pipeline's LanguageModel, and its
    random answers parse into phrases, run to max_new_tokens and never end early: the later stages get work."""
    from synground.generation.llm import LanguageModel
    from synground.generation.phrases import parse_phrases
    from synground.generation.tiny import write_full_size_components

    paths = write_full_size_components(tmp_path, llm_layers=1, names=("llm",))
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["hidden_size"] == 4096
    llm = LanguageModel(paths["llm"], device="cpu", max_new_tokens=16, batch_size=2)
    answers = llm.complete(["USER: list the objects in: a dog on the grass ASSISTANT:", "USER: a red car ASSISTANT:"], seed=0)
    tokenizer = llm.load()[0]
    assert [len(tokenizer(answer, add_special_tokens=False).input_ids) for answer in answers] == [16, 16]
    assert all(parse_phrases(answer, max_words=4) for answer in answers), answers
