"""End-to-end SynGround generation against the sum of its stages' own compute, with tiny components on the CPU.

    python benchmarks/generation_pipeline.py [--requests 64] [--steps 10] [--repeats 3]

The pipeline is Concept2Text (LLM) -> Stable Diffusion -> LLM phrases -> Grounding DINO -> CLIP score -> near-
duplicate filter -> shard writing, on the random-weight components of `synground.generation.tiny` (64 px images).
- stages alone: each stage called by itself on the whole request list, in batches of its own size, with its inputs
  prepared beforehand (descriptions, images, phrases), plus writing the samples as one shard (PNG-free: JPEG encode
  and tar); the sum of their wall times is the compute the pipeline cannot avoid;
- end to end: `generate_shards` (Trainer.predict, the writer callback, manifest entries, progress bar) on the same
  requests, into a fresh directory.
Models are loaded before timing (once per process, shared by both). The two alternate, best of `--repeats`.
Target: end to end at most 1.15x the sum of the stages. Writes benchmarks/results/generation_pipeline.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from synground.data.shards import write_shard
from synground.files import write_atomic
from synground.generation.descriptions import Concept2Text
from synground.generation.detection import OpenVocabularyDetector
from synground.generation.filters import ClipScore, NearDuplicates
from synground.generation.llm import LanguageModel
from synground.generation.phrases import PhraseExtractor
from synground.generation.pipeline import Draft, SynGroundGenerator
from synground.generation.runtime import StageClock
from synground.generation.text_to_image import StableDiffusion
from synground.generation.tiny import WORDS, write_tiny_components
from synground.generation.writing import ShardPlan, generate_shards

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def tiny_generator(paths: dict[str, str], steps: int) -> SynGroundGenerator:
    llm = LanguageModel(paths["llm"], device="cpu", dtype="float32", max_new_tokens=16, batch_size=16)
    return SynGroundGenerator(
        descriptions=Concept2Text(llm, concepts=WORDS[11:30]),
        text_to_image=StableDiffusion(
            paths["stable_diffusion"], steps=steps, height=64, width=64, device="cpu", dtype="float32", batch_size=16
        ),
        phrases=PhraseExtractor(llm),
        detector=OpenVocabularyDetector(
            paths["grounding_dino"], box_threshold=0.3, text_threshold=0.3, min_box_size=2, device="cpu", batch_size=16
        ),
        clip_filter=ClipScore(
            paths["open_clip_model"],
            pretrained=paths["open_clip_checkpoint"],
            model_config=paths["open_clip_config"],
            min_score=-1.0,
            device="cpu",
            batch_size=32,
        ),
    )


def stages_alone(generator: SynGroundGenerator, plan: ShardPlan, directory: Path) -> dict[str, float]:
    """Wall seconds of each stage run by itself over all requests."""
    clock = StageClock()
    requests = [request for shard in range(plan.num_shards) for request in plan.requests(shard)]
    seconds = {}

    def timed(name, function):
        start = time.perf_counter()
        result = function()
        seconds[name] = time.perf_counter() - start
        return result

    descriptions = timed("describe", lambda: generator.descriptions.describe(requests, clock))
    drafts = [Draft(r, d) for r, d in zip(requests, descriptions) if d is not None]
    drawn = timed(
        "text_to_image",
        lambda: generator.text_to_image.generate([d.description.text for d in drafts], [d.request.seed for d in drafts], clock),
    )
    for draft, (image, prompt) in zip(drafts, drawn):
        draft.image, draft.prompt = image, prompt
    phrases = timed(
        "phrases",
        lambda: generator.phrases.extract([d.description.text for d in drafts], [d.request.seed for d in drafts], clock),
    )
    for draft, found in zip(drafts, phrases):
        draft.phrases = found or []
    drafts = [draft for draft in drafts if draft.phrases]
    regions = timed("detect", lambda: generator.detector.detect([d.image for d in drafts], [d.phrases for d in drafts], clock))
    for draft, found in zip(drafts, regions):
        draft.regions = found or []
    drafts = [draft for draft in drafts if draft.regions]
    scores = timed(
        "clip_score", lambda: generator.clip_filter.score([d.image for d in drafts], [d.description.text for d in drafts], clock)
    )
    for draft, score in zip(drafts, scores):
        draft.clip_score = score
    samples = timed("make_samples", lambda: [generator._sample(draft) for draft in drafts])
    samples = timed("near_duplicates", lambda: NearDuplicates()(samples, clock))
    timed("write", lambda: write_shard(directory / "alone.tar", samples))
    return seconds


def end_to_end(generator: SynGroundGenerator, plan: ShardPlan, directory: Path, chunk_size: int) -> tuple[float, dict]:
    shutil.rmtree(directory, ignore_errors=True)
    start = time.perf_counter()
    manifest = generate_shards(
        generator,
        directory,
        plan.num_samples,
        plan.samples_per_shard,
        plan.seed,
        plan.name,
        chunk_size,
        near_duplicates=NearDuplicates(),
        trainer={"accelerator": "cpu"},
    )
    return time.perf_counter() - start, {
        "samples": sum(e["samples"] for e in manifest.shards),
        "stage_seconds": _sum_entries(manifest.shards, "stage_seconds"),
        "stage_items": _sum_entries(manifest.shards, "stage_items"),
        "rejections": _sum_entries(manifest.shards, "rejections"),
    }


def _sum_entries(entries: list[dict], key: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for entry in entries:
        for name, value in entry.get(key, {}).items():
            total[name] = total.get(name, 0) + value
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="generation-benchmark-"))
    paths = write_tiny_components(work / "tiny")
    generator = tiny_generator(paths, args.steps)
    plan = ShardPlan("bench", args.requests, samples_per_shard=32, seed=0)
    generator.load()  # every model once, outside the timings
    generator.generate(ShardPlan("warmup", 4, 4, 10_000).requests(0))
    generator.clock.take()  # the warm-up's counts are not the pipeline's

    alone_runs, pipeline_runs = [], []
    for _ in range(args.repeats):
        alone_runs.append(stages_alone(generator, plan, work))
        pipeline_runs.append(end_to_end(generator, plan, work / "shards", chunk_size=32))
    alone = min(alone_runs, key=lambda run: sum(run.values()))
    pipeline_seconds, pipeline = min(pipeline_runs, key=lambda run: run[0])
    stage_sum = sum(alone.values())
    result = {
        "requests": args.requests,
        "steps": args.steps,
        "repeats": args.repeats,
        "samples": pipeline["samples"],
        "stages_alone_seconds": {k: round(v, 3) for k, v in alone.items()},
        "stages_alone_sum": round(stage_sum, 3),
        "end_to_end_seconds": round(pipeline_seconds, 3),
        "ratio": round(pipeline_seconds / stage_sum, 3),
        "pipeline_stage_seconds": {k: round(v, 3) for k, v in pipeline["stage_seconds"].items()},
        "pipeline_items_per_second": {
            k: round(pipeline["stage_items"][k] / v, 2) for k, v in pipeline["stage_seconds"].items() if v
        },
        "rejections": pipeline["rejections"],
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "generation_pipeline.json", json.dumps(result, indent=2) + "\n")
    lines = ["| stage | alone (s) | in the pipeline (s) | items/s in the pipeline |", "|---|---|---|---|"]
    for stage, seconds in alone.items():
        inside = pipeline["stage_seconds"].get(stage)
        rate = result["pipeline_items_per_second"].get(stage)
        lines.append(
            f"| {stage} | {seconds:.2f} | {'' if inside is None else f'{inside:.2f}'} | {'' if rate is None else rate} |"
        )
    lines += [
        f"| **sum of stages** | **{stage_sum:.2f}** | | |",
        f"| **end to end** (generate_shards) | **{pipeline_seconds:.2f}** | | |",
        "",
        (
            f"End to end / sum of stages: **{result['ratio']:.3f}x** (target at most 1.15x); {args.requests} requests, "
            f"{pipeline['samples']} samples kept, {args.steps} diffusion steps at 64 px, best of {args.repeats}."
        ),
    ]
    write_atomic(RESULTS / "generation_pipeline.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
