"""The SynGround pipeline end to end on tiny random components, written by the real loading code into shards."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from support import ROOT
from synground.data import GroundingDataModule
from synground.data.schema import GenerationRequest, GroundingSample, Region
from synground.data.shards import IncompleteShardSet, iterate_shard, read_manifest, resolve_shards, write_shard
from synground.generation.descriptions import Concept2Text, Image2Text, RegionConcat, SeedImages
from synground.generation.detection import OpenVocabularyDetector
from synground.generation.filters import ClipScore, NearDuplicates
from synground.generation.layout import Gligen, LayoutGenerator
from synground.generation.llm import LanguageModel
from synground.generation.phrases import PhraseExtractor
from synground.generation.pipeline import SynGroundGenerator
from synground.generation.report import dataset_report
from synground.generation.runtime import Rejected, StageClock
from synground.generation.text_to_image import StableDiffusion, checked_image
from synground.generation.tiny import WORDS
from synground.generation.writing import REJECTED_DIR, generate_shards

REJECTION_REASONS = {
    "no_description",
    "nan_image",
    "black_image",
    "no_phrases",
    "no_detection",
    "low_clip_score",
    "out_of_memory",
    "near_duplicate",
}


def llm(tiny_components) -> LanguageModel:
    return LanguageModel(tiny_components["llm"], device="cpu", dtype="float32", max_new_tokens=12, batch_size=4)


def diffusion(tiny_components, **settings) -> StableDiffusion:
    return StableDiffusion(
        tiny_components["stable_diffusion"], steps=2, height=64, width=64, device="cpu", dtype="float32", batch_size=4, **settings
    )


def detector(tiny_components, kind="grounding_dino", **settings) -> OpenVocabularyDetector:
    return OpenVocabularyDetector(
        tiny_components[kind],
        **{"box_threshold": 0.3, "text_threshold": 0.3, "min_box_size": 2, "device": "cpu", "batch_size": 4, **settings},
    )


def clip(tiny_components, min_score=-1.0) -> ClipScore:
    return ClipScore(
        tiny_components["open_clip_model"],
        pretrained=tiny_components["open_clip_checkpoint"],
        model_config=tiny_components["open_clip_config"],
        min_score=min_score,
        device="cpu",
    )


def synground(tiny_components, descriptions=None, **stages) -> SynGroundGenerator:
    return SynGroundGenerator(
        **{
            "descriptions": descriptions or Concept2Text(llm(tiny_components), WORDS[11:30]),
            "text_to_image": diffusion(tiny_components),
            "phrases": PhraseExtractor(llm(tiny_components), max_words={"short": 12}),
            "detector": detector(tiny_components),
            "clip_filter": clip(tiny_components),
            **stages,
        }
    )


def read_samples(directory: Path) -> list[GroundingSample]:
    issues = Counter()
    samples = [s for shard in resolve_shards(str(directory)) for s in iterate_shard(shard, issues)]
    assert not issues
    return samples


def test_triplets_reach_the_shards_with_boxes_phrases_and_provenance(tiny_components, tmp_path):
    manifest = generate_shards(
        synground(tiny_components),
        tmp_path / "out",
        num_samples=12,
        samples_per_shard=4,
        name="syn",
        chunk_size=4,
        near_duplicates=NearDuplicates(),
    )
    samples = read_samples(tmp_path / "out")
    assert samples, "the tiny pipeline should keep some samples"
    for sample in samples:
        assert sample.image.size == (64, 64) and sample.caption and sample.source == "synground"
        for region in sample.regions:
            assert region.phrase and 0.0 <= region.score <= 1.0
            for x0, y0, x1, y1 in region.boxes:
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and min(x1 - x0, y1 - y0) >= 2
        provenance = sample.provenance
        assert (
            provenance["text_to_image"]["model"] == tiny_components["stable_diffusion"]
            and provenance["text_to_image"]["steps"] == 2
        )
        assert provenance["detector"]["model"] == tiny_components["grounding_dino"]
        assert (
            provenance["phrases"]["llm"]["model"] == tiny_components["llm"] and provenance["phrases"]["prompt_versions"]["short"]
        )
        assert provenance["description"]["source"] == "concept2text" and provenance["description"]["concepts"]
        assert isinstance(provenance["clip_score"], float) and provenance["seed"] == int(sample.key.split("-")[1])
    # every request ends as a sample or as exactly one counted rejection; every stage is timed
    for entry in manifest.shards:
        assert set(entry["rejections"]) <= REJECTION_REASONS
        assert entry["samples"] + sum(entry["rejections"].values()) == entry["requests"]
    timed = {stage for entry in manifest.shards for stage in entry["stage_seconds"]}
    assert {"describe", "text_to_image", "phrases", "detect", "clip_score", "write", "generate"} <= timed


def test_paraphrases_of_the_kept_phrases_reach_the_shards_and_drop_no_sample(tiny_components, tmp_path):
    """generation/paraphrases=llm: the tiny LM's answers (random words) become paraphrases where usable, are
    dropped and counted where not; every request still ends as a sample or one counted rejection."""
    from synground.generation.paraphrases import Paraphraser

    manifest = generate_shards(
        synground(tiny_components, paraphrases=Paraphraser(llm(tiny_components))),
        tmp_path / "out",
        num_samples=8,
        samples_per_shard=4,
        name="syn",
        chunk_size=4,
    )
    samples = read_samples(tmp_path / "out")
    regions = [region for sample in samples for region in sample.regions]
    assert samples and regions
    events = Counter()
    for entry in manifest.shards:
        events.update(entry["events"])
        assert entry["samples"] + sum(entry["rejections"].values()) == entry["requests"]
    paraphrased = [r for r in regions if r.paraphrase is not None]
    assert len(paraphrased) + events["no_paraphrase"] == len(regions)
    for region in paraphrased:
        assert region.paraphrase != region.phrase and len(region.paraphrase.split()) <= len(region.phrase.split()) + 3
    assert all(sample.provenance["paraphrases"]["prompt_version"] for sample in samples)
    assert "paraphrases" in {stage for entry in manifest.shards for stage in entry["stage_seconds"]}
    assert paraphrased  # the tiny LM writes few enough words for some (6 of 10 regions here)


def test_a_detector_that_finds_nothing_leaves_empty_shards_and_counts_every_request(tiny_components, tmp_path):
    generator = synground(tiny_components, detector=detector(tiny_components, box_threshold=1.01))
    manifest = generate_shards(
        generator, tmp_path / "out", num_samples=6, samples_per_shard=3, name="none", chunk_size=3, keep_rejected=1
    )
    assert [entry["samples"] for entry in manifest.shards] == [0, 0]
    rejected = Counter()
    for entry in manifest.shards:
        rejected.update(entry["rejections"])
    assert sum(rejected.values()) == 6 and rejected["no_detection"] >= 1
    assert not list((tmp_path / "out").glob("*.partial"))
    # the one candidate kept shows what the detector missed: each phrase's best box and the score that fell short
    (key,) = [key for entry in manifest.shards for key in entry["kept_rejected"].get("no_detection", [])]
    record = json.loads((tmp_path / "out" / REJECTED_DIR / "no_detection" / f"{key}.json").read_text())
    assert record["reason"] == "no_detection" and record["threshold"] == 1.01 and record["score"] < 1.01
    assert record["regions"] and all(len(region["boxes"]) == 1 for region in record["regions"])
    assert record["score"] == max(region["score"] for region in record["regions"]) and record["caption"]


def test_nan_and_black_images_are_rejected_and_counted(tiny_components, monkeypatch):
    clock = StageClock(keep=1)
    assert checked_image(torch.full((3, 8, 8), float("nan")), clock, Rejected("k-0", "a dog")) is None
    assert checked_image(torch.zeros(3, 8, 8), clock, Rejected("k-1", "a cat")) is None
    assert checked_image(torch.zeros(3, 8, 8), clock, Rejected("k-2", "a cow")) is None  # counted, beyond the bound
    assert checked_image(torch.rand(3, 8, 8), clock).dtype == torch.uint8
    assert clock.rejections == {"nan_image": 1, "black_image": 2}
    kept = clock.take()["kept"]
    assert [(c.key, c.score, c.threshold, c.image) for c in kept["nan_image"]] == [("k-0", 1.0, None, None)]
    (black,) = kept["black_image"]
    assert (black.key, black.score, black.threshold) == ("k-1", 0.0, 2.0) and black.image.shape == (3, 8, 8)

    generator = synground(tiny_components)
    real_draw = generator.text_to_image._draw
    monkeypatch.setattr(
        generator.text_to_image,
        "_draw",
        lambda batch: [image * float("nan") if seed % 2 else image for image, (_, seed) in zip(real_draw(batch), batch)],
    )
    samples = generator.generate([GenerationRequest(f"k-{i}", i, i) for i in range(4)])
    taken = generator.clock.take()
    assert taken["rejections"]["nan_image"] == 2 and all(s.provenance["seed"] % 2 == 0 for s in samples)


def test_rejected_candidates_of_the_pipeline_are_kept_per_reason_and_drawn_in_the_report(tiny_components, tmp_path):
    generator = synground(
        tiny_components, clip_filter=clip(tiny_components, min_score=-0.1)
    )  # random embeddings: about half score below
    manifest = generate_shards(
        generator,
        tmp_path,
        num_samples=8,
        samples_per_shard=4,
        name="r",
        chunk_size=4,
        near_duplicates=NearDuplicates(max_distance=64),  # any two images: every later one in a shard is a duplicate
        keep_rejected=2,
    )
    rejected, kept = Counter(), {}
    for entry in manifest.shards:
        rejected.update(entry["rejections"])
        for reason, keys in entry["kept_rejected"].items():
            kept.setdefault(reason, []).extend(keys)
    assert rejected["low_clip_score"] >= 1 and rejected["near_duplicate"] >= 1
    assert {reason: len(keys) for reason, keys in kept.items()} == {reason: min(2, n) for reason, n in rejected.items()}
    for reason, keys in kept.items():
        for key in keys:
            record = json.loads((tmp_path / REJECTED_DIR / reason / f"{key}.json").read_text())
            assert record["reason"] == reason and record["image"] and record["regions"]
            if reason == "low_clip_score":
                assert record["score"] < record["threshold"] == -0.1
            if reason == "near_duplicate":
                assert record["score"] <= record["threshold"] == 64

    summary = dataset_report(tmp_path, samples=4)
    assert summary["sheets"]["rejected"].keys() == kept.keys() and len(summary["sheets"]["samples"]) == summary["samples"]
    for reason in kept:
        with Image.open(tmp_path / "report" / f"rejected_{reason}.png") as sheet:
            assert sheet.format == "PNG"
        assert f"](rejected_{reason}.png)" in (tmp_path / "report" / "report.md").read_text()


def test_long_descriptions_are_cut_at_a_sentence_boundary_and_counted(tiny_components):
    stage = diffusion(tiny_components)
    tokenizer = stage.load().tokenizer
    short = "a red dog on the grass."
    long = short + " " + " ".join(["a blue car near the house"] * 30) + "."
    assert stage.fit_prompt(short) == short
    assert stage.fit_prompt(long) == short
    cut = StableDiffusion(tiny_components["stable_diffusion"], device="cpu", dtype="float32", long_prompts="truncate").fit_prompt(
        long
    )
    assert len(tokenizer(cut).input_ids) <= tokenizer.model_max_length and cut.startswith("a red dog")
    clock = StageClock()
    stage.generate([short, long], [0, 1], clock)
    assert clock.events["prompt_shortened"] == 1


def test_image2text_captions_seed_images_and_carries_their_ids_for_the_leakage_check(tiny_components, tmp_path):
    seeds = [
        GroundingSample(
            f"vg-{i}",
            Image.new("RGB", (48, 40), (40 * i, 90, 200)),
            "",
            [Region("a red dog", [[1, 1, 20, 20]])],
            "visual_genome",
            {"image_ids": [f"vg:{i}", f"coco:{100 + i}"]},
        )
        for i in range(3)
    ]
    write_shard(tmp_path / "seeds" / "seeds-000000.tar", seeds)
    seed_images = SeedImages(str(tmp_path / "seeds" / "*.tar"))
    captioner = Image2Text(
        seed_images,
        tiny_components["llava"],
        prompt="USER: <image>\nDescribe the image. ASSISTANT:",
        max_new_tokens=8,
        device="cpu",
        dtype="float32",
        batch_size=2,
    )
    clock = StageClock()
    requests = [GenerationRequest(f"s-{i}", i, index=i) for i in range(4)]
    described = captioner.describe(requests, clock)
    assert any(described) and clock.items["describe"] == 4
    for request, description in zip(requests, described):
        if description is not None:  # request i describes seed image i modulo 3
            seed = request.index % 3
            assert (
                description.provenance["seed_key"] == f"vg-{seed}" and description.provenance["model"] == tiny_components["llava"]
            )
            assert description.provenance["image_ids"] == [f"vg:{seed}", f"coco:{100 + seed}"]

    concat = RegionConcat(seed_images).describe([GenerationRequest("c", 0, index=4)], clock)[0]
    assert concat.text == "a red dog." and concat.provenance["seed_key"] == "vg-1"  # index 4 wraps to seed 1


def test_owlv2_is_a_drop_in_detector(tiny_components):
    generator = synground(tiny_components, detector=detector(tiny_components, "owlv2", box_threshold=0.0, text_threshold=0.0))
    samples = generator.generate([GenerationRequest(f"o-{i}", i, i) for i in range(3)])
    assert samples and all(s.provenance["detector"]["model"] == tiny_components["owlv2"] for s in samples)
    for sample in samples:
        assert all(0 <= v <= 64 for region in sample.regions for box in region.boxes for v in box)


class ScriptedLanguageModel(LanguageModel):
    """The tiny LM writes random words; layouts need numbers, so this test scripts the LLM's answer."""

    def __init__(self, answer):
        super().__init__("scripted", device="cpu", batch_size=4)
        self.answer = answer

    def complete(self, prompts, seed, do_sample=None):
        return [self.answer] * len(prompts)


def layout_generator(tiny_components, answer) -> LayoutGenerator:
    return LayoutGenerator(
        Concept2Text(llm(tiny_components), WORDS[11:30]),
        ScriptedLanguageModel(answer),
        Gligen(tiny_components["gligen"], steps=2, height=64, width=64, device="cpu", dtype="float32"),
        clip_filter=clip(tiny_components),
    )


def test_layout_generator_draws_the_proposed_boxes_with_gligen(tiny_components):
    generator = layout_generator(tiny_components, "1. a red dog: 0.1 0.2 0.5 0.9\n2. a tree: 0.5 0.0 1.0 0.6")
    samples = generator.generate([GenerationRequest(f"l-{i}", i, i) for i in range(2)])
    assert len(samples) == 2
    for sample in samples:
        assert [(r.phrase, r.boxes) for r in sample.regions] == [
            ("a red dog", [[6.4, 12.8, 32.0, 57.6]]),
            ("a tree", [[32.0, 0.0, 64.0, 38.4]]),
        ]
        assert sample.provenance["text_to_image"]["model"] == tiny_components["gligen"]

    refusing = layout_generator(tiny_components, "I cannot draw boxes.")  # no layout, even when asked again
    assert refusing.generate([GenerationRequest("l-bad", 1, 9)]) == []
    taken = refusing.clock.take()
    assert taken["rejections"] == {"no_layout": 1} and taken["events"]["layout_retried"] == 1


def test_the_layout_variant_paraphrases_its_phrases_too(tiny_components):
    from synground.generation.paraphrases import Paraphraser

    generator = layout_generator(tiny_components, "1. a red dog: 0.1 0.2 0.5 0.9\n2. a tree: 0.5 0.0 1.0 0.6")
    generator.paraphrases = Paraphraser(ScriptedLanguageModel("1. A crimson hound"))
    (sample,) = generator.generate([GenerationRequest("l-0", 0, 0)])
    assert [(r.phrase, r.paraphrase) for r in sample.regions] == [("a red dog", "a crimson hound"), ("a tree", "a crimson hound")]
    assert sample.provenance["paraphrases"]["llm"]["model"] == "scripted"


def test_on_the_fly_training_batches_come_from_the_pipeline(tiny_components):
    generator = synground(tiny_components)
    datamodule = GroundingDataModule(
        train={"synthetic": generator}, image_size=32, batch_size=2, batches_per_epoch=1, num_workers=0
    )
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["images"].shape == (2, 3, 32, 32) and len(batch["texts"]) == 2 and batch["synthetic"].all()
    assert datamodule._worker_start(datamodule.train_sources["synthetic"]) is None  # CPU: workers may fork

    # a spawned worker receives the generator pickled: without its loaded models, which it loads itself
    shipped = pickle.dumps(generator)
    assert len(shipped) < 50_000
    requests = [GenerationRequest(f"w-{i}", i, i) for i in range(4)]
    here, there = generator.generate(requests), pickle.loads(shipped).generate(requests)
    assert here and [(s.key, s.caption) for s in there] == [(s.key, s.caption) for s in here]

    generator.text_to_image.device = "cuda"  # a GPU generator in workers: they must be spawned, not forked
    workers = GroundingDataModule(train={"synthetic": generator}, num_workers=2)
    assert workers._worker_start(workers.train_sources["synthetic"]) == "spawn"


def _generate(tiny_dir: Path, output_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "generate.py"),
            "generation=synground_tiny",
            f"generation.tiny_dir={tiny_dir}",
            f"output_dir={output_dir}",
            "generation.num_samples=24",
            "generation.samples_per_shard=4",
            "generation.chunk_size=4",
            "report=false",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _shard_set(directory: Path) -> list[tuple[str, str, int]]:
    return [(e["name"], e["sha256"], e["samples"]) for e in read_manifest(directory / "manifest.json")["shards"]]


@pytest.mark.slow
def test_a_killed_generation_run_resumes_to_the_same_shards(tiny_components, tmp_path):
    tiny_dir = Path(tiny_components["llm"]).parent
    full = _generate(tiny_dir, tmp_path / "full")
    killed = _generate(tiny_dir, tmp_path / "killed")
    entries = tmp_path / "killed" / "manifest.d"
    deadline = time.time() + 240
    while len(list(entries.glob("*.json"))) < 2 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    finished_before = sorted(p.name for p in entries.glob("*.json"))
    assert 2 <= len(finished_before) < 6, "the kill should land mid-run"
    if (tmp_path / "killed" / "manifest.json").exists():  # rank 0 merges after each shard: the kill may come first
        assert read_manifest(tmp_path / "killed" / "manifest.json")["complete"] is False
        with pytest.raises(IncompleteShardSet, match=r"generate\.py generation=synground_tiny"):
            resolve_shards(str(tmp_path / "killed"))

    output, _ = full.communicate(timeout=600)
    assert full.returncode == 0, output
    resumed = _generate(tiny_dir, tmp_path / "killed")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert _shard_set(tmp_path / "killed") == _shard_set(tmp_path / "full")  # same shards, byte for byte
    finished = [read_manifest(tmp_path / name / "manifest.json") for name in ("killed", "full")]
    assert finished[0]["complete"] is finished[1]["complete"] is True and finished[0]["totals"] == finished[1]["totals"]
    assert (
        finished[0]["totals"]["requests"] == 24
        and sum(finished[0]["totals"]["rejections"].values()) + finished[0]["totals"]["samples"] == 24
    )
    keys = [s.key for s in read_samples(tmp_path / "killed")]
    assert len(keys) == len(set(keys)) and keys == [s.key for s in read_samples(tmp_path / "full")]
    assert not list((tmp_path / "killed").rglob("*.partial"))


@pytest.mark.slow
def test_two_processes_write_the_same_shard_set_as_one(tmp_path):
    """DDP generation: each rank writes whole shards, none twice, and the set equals a single process's."""
    common = [
        sys.executable,
        str(ROOT / "generate.py"),
        "generation=shapes",
        "generation.generator.image_size=32",
        "generation.num_samples=20",
        "generation.samples_per_shard=3",
        "report=false",
    ]
    for name, extra in (("one", []), ("two", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"])):
        result = subprocess.run(
            [*common, f"output_dir={tmp_path / name}", *extra], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert _shard_set(tmp_path / "two") == _shard_set(tmp_path / "one") and len(_shard_set(tmp_path / "one")) == 7
    keys = [s.key for s in read_samples(tmp_path / "two")]
    assert len(keys) == len(set(keys)) == 20


@pytest.mark.slow
def test_the_gpu_benchmark_script_runs_on_tiny_components(tmp_path):
    output = tmp_path / "tiny_generation.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_generation.py"),
            "--tiny",
            "--images",
            "2",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--requests",
            "4",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    measured = json.loads(output.read_text())
    assert measured["stable_diffusion"]["images_per_hour"] > 0 and measured["end_to_end"]["requests"] == 4
    assert "text_to_image" in measured["end_to_end"]["items_per_second"]


def test_a_folder_of_seed_images_works_and_an_unreadable_one_is_counted_not_fatal(tiny_components, tmp_path):
    for name in ("a", "b"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "c.jpg").write_bytes(b"not a jpeg at all")
    captioner = Image2Text(
        SeedImages(str(tmp_path)),
        tiny_components["llava"],
        prompt="USER: <image>\nDescribe. ASSISTANT:",
        max_new_tokens=6,
        device="cpu",
        dtype="float32",
    )
    clock = StageClock()
    described = captioner.describe([GenerationRequest(f"f-{i}", i, index=i) for i in range(3)], clock)
    assert described[2] is None and clock.events["unreadable_seed_image"] == 1
    for name, description in zip("ab", described):
        if description is not None:  # a random captioner may write nothing
            assert description.provenance["image_ids"] == [f"file:{name}.jpg"]


def test_detector_proposals_file_has_every_image_with_the_boxes_kept_for_its_phrases(tiny_components, tmp_path):
    from synground.data.proposals import load_proposals
    from synground.generation.proposals import main as write_proposals
    from synground.generation.writing import generate_shards
    from synground.shapes import ShapesGenerator

    generate_shards(ShapesGenerator("clean", 64), tmp_path / "shards", num_samples=3, samples_per_shard=2, name="p")
    out = tmp_path / "proposals" / "p.json"
    common = [str(tmp_path / "shards"), str(out), "--detector", tiny_components["grounding_dino"], "--device", "cpu"]
    everything = ["--box-threshold", "0", "--text-threshold", "0", "--min-box-size", "0", "--max-box-area", "1"]
    write_proposals([*common, *everything, "--max-boxes-per-phrase", "2"])
    proposals = load_proposals(out)  # the format the datamodule reads
    assert sorted(proposals) == [f"p-{index:09d}" for index in range(3)]
    for boxes in proposals.values():
        assert 1 <= len(boxes) <= 2 * 5  # at most 2 per phrase, scenes have 2 to 5 shapes
        assert all(0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64 for x0, y0, x1, y1 in boxes)
    write_proposals([*common, "--box-threshold", "1.01"])  # nothing passes: every image is there, with no candidate
    assert load_proposals(out) == {key: [] for key in proposals}
