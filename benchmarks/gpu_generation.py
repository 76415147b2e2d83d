"""Generation throughput on a GPU: Stable Diffusion images per hour and end-to-end SynGround triplets per hour.

    python benchmarks/gpu_generation.py                      # the real models of synground/conf/generation/synground.yaml
    python benchmarks/gpu_generation.py --batch-size 16 --steps 50 --images 64 --requests 256
    python benchmarks/gpu_generation.py --tiny               # the same code on random tiny components, on the CPU

1. Stable Diffusion alone: `--images` prompts in batches of `--batch-size` at `--steps` steps (fp16 on the GPU),
   after one warm-up batch; images per hour.
2. End to end: `generate_shards` with the whole pipeline of `generation=synground` and Concept2Text descriptions (no
   seed images needed) on `--requests` requests, models loaded beforehand; triplets (samples written) per hour and
   each stage's items per second from the pipeline's own telemetry.
Targets on an A100-class GPU: at least 4,000 images/hour at 50 steps and 3,000 triplets/hour end to end.
Extra Hydra overrides for the pipeline go after `--`, e.g. `-- generation.generator.text_to_image.scheduler=dpm++`.
Writes benchmarks/results/gpu_generation.json (tiny_generation.json with --tiny).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

from synground.conf import CONFIG_DIR
from synground.files import write_atomic
from synground.generation.runtime import StageClock
from synground.generation.writing import ShardPlan, generate_shards

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def pipeline_config(tiny_dir: Path | None, overrides: list[str]):
    generation = ["generation=synground_tiny", f"generation.tiny_dir={tiny_dir}"] if tiny_dir else ["generation=synground"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("generate", overrides=[*generation, "generation/descriptions=concept2text", *overrides])


def diffusion_images_per_hour(text_to_image, images: int, batch_size: int) -> dict:
    prompts = [f"a photo of a {subject} in a park" for subject in ("dog", "red car", "man with a hat", "bird")] * images
    clock = StageClock()
    text_to_image.batch_size = batch_size
    text_to_image.generate(prompts[:batch_size], list(range(batch_size)), clock)  # warm-up: load, compile kernels
    start = time.perf_counter()
    drawn = text_to_image.generate(prompts[:images], list(range(images)), clock)
    seconds = time.perf_counter() - start
    return {
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_hour": round(sum(d is not None for d in drawn) / seconds * 3600),
    }


def triplets_per_hour(cfg, requests: int, work: Path) -> dict:
    generation = cfg.generation
    generator = hydra.utils.instantiate(generation.generator)
    generator.load()  # every model once, outside the timing
    generator.generate(ShardPlan("warmup", 2, 2, 10**9).requests(0))
    generator.clock.take()  # the warm-up's counts are not the pipeline's
    start = time.perf_counter()
    manifest = generate_shards(
        generator,
        work / "shards",
        requests,
        samples_per_shard=min(requests, 1000),
        seed=0,
        name="bench",
        chunk_size=generation.chunk_size,
        near_duplicates=hydra.utils.instantiate(generation.near_duplicates),
    )
    seconds = time.perf_counter() - start
    samples = sum(entry["samples"] for entry in manifest.shards)
    stage_seconds, stage_items, rejections = {}, {}, {}
    for entry in manifest.shards:
        for totals, key in ((stage_seconds, "stage_seconds"), (stage_items, "stage_items"), (rejections, "rejections")):
            for name, value in entry.get(key, {}).items():
                totals[name] = totals.get(name, 0) + value
    return {
        "requests": requests,
        "triplets": samples,
        "seconds": round(seconds, 2),
        "triplets_per_hour": round(samples / seconds * 3600),
        "items_per_second": {k: round(stage_items[k] / v, 2) for k, v in stage_seconds.items() if v},
        "rejections": rejections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="random tiny components on the CPU (a smoke run)")
    parser.add_argument("--output", type=Path, help="the results file (default benchmarks/results/...)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the generation config")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures GPU throughput (use --tiny for a CPU smoke run)")

    work = Path(tempfile.mkdtemp(prefix="gpu-generation-"))
    tiny_dir = None
    if args.tiny:
        from synground.generation.tiny import write_tiny_components

        tiny_dir = work / "tiny"
        write_tiny_components(tiny_dir)
    cfg = pipeline_config(
        tiny_dir,
        [
            f"generation.generator.text_to_image.steps={args.steps}",
            f"generation.generator.text_to_image.batch_size={args.batch_size}",
            *args.overrides,
        ],
    )
    text_to_image = hydra.utils.instantiate(cfg.generation.generator.text_to_image)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "tiny": args.tiny,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "stable_diffusion": diffusion_images_per_hour(text_to_image, args.images, args.batch_size),
        "end_to_end": triplets_per_hour(cfg, args.requests, work),
        "text_to_image": {k: v for k, v in dict(cfg.generation.generator.text_to_image).items() if k != "_target_"},
    }
    path = args.output or RESULTS / ("tiny_generation.json" if args.tiny else "gpu_generation.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    print(f"written to {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
