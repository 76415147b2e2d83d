"""The GPU path measured in one command, offline: full-size architectures with random weights, data written on the spot.

    make gpu-check                               (on a GPU node, about 8 minutes: benchmarks/results/gpu_check.{json,md})
    make gpu-check GPU_CHECK_ARGS=--smoke        (tiny models on the CPU, under 2 minutes: the code still runs)
    make gpu-check GPU_CHECK_ARGS=--dry-run      (full sizes on the CPU, one step of each part: shapes and dtypes)

Parts, each in its own process with its own time budget; a part that fails, runs out of memory or out of time is
recorded as such and the others go on:
- train:<model>: train.py with overrides (experiment=<model>_amc_vg: ALBEF at 256 px, BLIP at 384 px, bf16-mixed,
  the paper's 64 per GPU, halved until it fits if it does not) on photo-like shards. Samples/s from the median step
  time after the warm-up steps (train/seconds_per_step), peak memory (train/peak_memory_gib); then, in the same process
  on the last batch, the AMC step against an ITM-only step and against one whose Grad-CAM map is detached (the same
  forward and Grad-CAM gradient, no double backward): the AMC step's cost over ITM only and the double backward's share.
- ddp:<model>: the same under two processes (NCCL), where the machine has two GPUs or more.
- eval:<model>: batched Grad-CAM (GroundingModule.evaluation_maps) items/s against the reference per-sample loop, and
  how many pointing-game hits agree (benchmarks/gradcam_throughput.py's two methods, at full size).
- diffusion: Stable Diffusion 1.5's UNet, VAE and text encoder (random weights, fp16, diffusers' SDPA attention) at
  50 steps, 512 px: images per hour.
- detector: Grounding DINO base (Swin-B) on 512 px images with four phrases each: images per second.
- end_to_end: generate_shards through the whole pipeline (Concept2Text descriptions and phrases from a
  Vicuna-7B-shaped decoder, Stable Diffusion, Grounding DINO, the CLIP filter): triplets per hour.
- data_loader: GroundingDataModule's training loader with the experiment's workers, at each model's image size and
  the training batch: samples/s against what the training step consumes.
Random weights make the generation filters' outcomes meaningless (the CLIP filter keeps everything: random embeddings
score near 0); the speed and memory of the architectures are what they are with trained weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"albef": 256, "blip": 384}  # the experiments' training image sizes
TINY_IMAGE_SIZE = 128
REFERENCE_BATCH = 64  # per GPU (AMC's recipe, the experiments' data.batch_size)
ANCHORS = {
    "diffusion": "SD 1.5 on an A100: about 2,260 images/hour at 50 steps with SDPA",
    "detector": "Grounding DINO Swin-T: about 8 images/s (Swin-B, our default, is slower)",
}
OUT_OF_MEMORY = ("OutOfMemoryError", "CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "Cannot allocate memory")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each mode runs: model sizes, step counts and each part's time budget in seconds."""

    full: bool
    train_batch: int
    train_steps: int
    warmup_steps: int  # left out of the median step time (allocator, cuDNN autotuning, first data)
    eval_items: int
    eval_batch: int
    diffusion_steps: int
    diffusion_batch: int
    diffusion_images: int
    detector_images: int
    requests: int
    llm_layers: int
    llm_new_tokens: int
    loader_batches: int
    shard_images: int
    budgets: dict[str, int]


MODES = {
    "gpu": Sizes(
        full=True,
        train_batch=REFERENCE_BATCH,
        train_steps=10,
        warmup_steps=3,
        eval_items=64,
        eval_batch=32,
        diffusion_steps=50,
        diffusion_batch=8,
        diffusion_images=8,
        detector_images=32,
        requests=16,
        llm_layers=32,
        llm_new_tokens=128,
        loader_batches=8,
        shard_images=256,
        # one GPU: 480 s in all (the ddp parts only run with two GPUs or more); end_to_end writes and loads the 7B decoder
        budgets={
            "prepare": 50,
            "train:albef": 65,
            "train:blip": 75,
            "ddp:albef": 65,
            "ddp:blip": 75,
            "eval:albef": 25,
            "eval:blip": 30,
            "diffusion": 55,
            "detector": 25,
            "end_to_end": 120,
            "data_loader": 35,
        },
    ),
    "dry_run": Sizes(
        full=True,
        train_batch=2,
        train_steps=2,
        warmup_steps=1,
        eval_items=2,
        eval_batch=2,
        diffusion_steps=1,
        diffusion_batch=1,
        diffusion_images=1,
        detector_images=1,
        requests=2,
        llm_layers=2,
        llm_new_tokens=12,
        loader_batches=2,
        shard_images=16,
        budgets={"prepare": 600, "ddp:albef": 1, "ddp:blip": 1, "end_to_end": 900}
        | dict.fromkeys(["train:albef", "train:blip", "eval:albef", "eval:blip", "diffusion", "detector", "data_loader"], 600),
    ),
    "smoke": Sizes(
        full=False,
        train_batch=4,
        train_steps=3,
        warmup_steps=1,
        eval_items=8,
        eval_batch=4,
        diffusion_steps=2,
        diffusion_batch=2,
        diffusion_images=2,
        detector_images=4,
        requests=4,
        llm_layers=2,
        llm_new_tokens=12,
        loader_batches=3,
        shard_images=24,
        budgets={"ddp:blip": 1}
        | dict.fromkeys(
            [
                "prepare",
                "train:albef",
                "train:blip",
                "ddp:albef",
                "eval:albef",
                "eval:blip",
                "diffusion",
                "detector",
                "end_to_end",
                "data_loader",
            ],
            120,
        ),
    ),
}
PARTS = [
    "prepare",
    "train:albef",
    "train:blip",
    "ddp:albef",
    "ddp:blip",
    "eval:albef",
    "eval:blip",
    "diffusion",
    "detector",
    "end_to_end",
    "data_loader",
]


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------------------- the parts


def prepare(sizes: Sizes, work: Path) -> dict:
    """Photo-like shards (640x480 JPEGs, 3 phrases each) and, at full size, ALBEF and BLIP with random weights in their
    released formats (as benchmarks/dry_run.py writes them)."""
    from data_throughput import write_shards

    start = time.perf_counter()
    shards = work / "shards"
    shutil.rmtree(shards, ignore_errors=True)
    shards.mkdir(parents=True)
    write_shards(shards, sizes.shard_images)
    result = {"shard_images": sizes.shard_images, "shard_seconds": round(time.perf_counter() - start, 1)}
    if sizes.full:
        from dry_run import write_full_size_weights

        start = time.perf_counter()
        write_full_size_weights(weight_paths(work))
        result["weights_seconds"] = round(time.perf_counter() - start, 1)
    return result


def weight_paths(work: Path) -> dict[str, Path]:
    weights = work / "weights"
    return {
        "vocab": weights / "bert-base-uncased" / "vocab.txt",
        "albef": weights / "ALBEF.pth",
        "blip": weights / "blip-itm-base-coco",
    }


def model_overrides(model: str, sizes: Sizes, work: Path) -> list[str]:
    """The experiment's model and data settings, on the check's shards, at full or tiny size."""
    overrides = [
        f"experiment={model}_amc_vg",
        f"data.train.real=[{work / 'shards'}]",
        "data.train.synthetic=[]",
        # no validation or test sets (null, as a dict override would merge into the experiment's)
        "data.val=null",
        "data.test=null",
        "data.val_split_of=null",
        "data.eval_image_size=null",
    ]
    if sizes.full:
        paths = weight_paths(work)
        weights = (
            [f"model.net.checkpoint={paths['albef']}", f"model.net.text_encoder={paths['vocab']}"]
            if model == "albef"
            else [f"model.net.model_id={paths['blip']}"]
        )
        return overrides + weights
    return [*overrides, f"model={model}_tiny", f"data.image_size={TINY_IMAGE_SIZE}"]


def train(model: str, processes: int, sizes: Sizes, work: Path, deadline: float) -> dict:
    """train.py at the training batch, halving it after running out of memory while time is left."""
    attempts = []
    batch = sizes.train_batch
    while True:
        run = work / "runs" / f"{model}-{processes}x-batch{batch}"
        outcome = train_once(model, processes, batch, sizes, work, run, deadline)
        attempts.append({"batch_size": batch, "outcome": outcome})
        if outcome != "out_of_memory" or batch == 1 or time.time() > deadline:
            break
        batch //= 2
    if outcome != "ok":
        message = f"train.py: {outcome} at batch {batch} (attempts {attempts}; log {run / 'output.log'})"
        raise torch.OutOfMemoryError(message) if outcome == "out_of_memory" else RuntimeError(message)
    steps = step_metrics(run)
    timed = steps[sizes.warmup_steps :] or steps
    step_seconds = statistics.median(s["train/seconds_per_step"] for s in timed)
    peaks = [s["train/peak_memory_gib"] for s in steps if s.get("train/peak_memory_gib") is not None]
    result = {
        "processes": processes,
        "batch_size_per_process": batch,
        # whether the recipe's batch ran, where the mode asks for it (the CPU modes train a few samples)
        "fits_reference_batch": batch >= REFERENCE_BATCH if sizes.train_batch == REFERENCE_BATCH else None,
        "attempts": attempts,
        "steps_timed": len(timed),
        "seconds_per_step": round(step_seconds, 4),
        "samples_per_second": round(batch * processes / step_seconds, 2),
        "peak_memory_gib": round(max(peaks), 2) if peaks else None,
        "run_dir": str(run),
    }
    breakdown_file = run / "amc_breakdown.json"
    if processes == 1:
        result |= breakdown_figures(json.loads(breakdown_file.read_text()), step_seconds)
    return result


def breakdown_figures(breakdown: dict, step_seconds: float) -> dict:
    """AmcBreakdown's timings as the report's figures: each cost is the difference of two variants' medians."""
    amc, detached, itm = (breakdown[k]["seconds"] for k in ("amc", "no_double_backward", "itm"))
    # the widest spread of one variant's repeats: a difference below it is this machine's noise (unknown from one)
    spreads = [max(v["timings"]) - min(v["timings"]) for v in breakdown.values() if len(v["timings"]) > 1]
    return {
        "breakdown": breakdown,
        "breakdown_repeats": min(len(v["timings"]) for v in breakdown.values()),
        "breakdown_noise_seconds": round(max(spreads), 4) if spreads else None,
        "amc_over_itm": round(amc / itm, 3),
        "gradcam_gradient_seconds": round(detached - itm, 4),
        "double_backward_seconds": round(amc - detached, 4),
        # of the whole training step (the optimiser step and logging included), as train.py timed it
        "double_backward_share_of_step": round((amc - detached) / step_seconds, 3),
    }


def train_once(model: str, processes: int, batch: int, sizes: Sizes, work: Path, run: Path, deadline: float) -> str:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    on_gpu = torch.cuda.is_available()
    if processes == 1:
        trainer = (
            ["trainer=gpu", "trainer.devices=1"]
            if on_gpu
            else ["trainer=default", "trainer.accelerator=cpu", "trainer.devices=1"]
        )
    else:
        trainer = ["trainer=ddp", f"trainer.devices={processes}"] if on_gpu else ["trainer=ddp_cpu"]
    overrides = [
        *model_overrides(model, sizes, work),
        *trainer,
        "trainer.precision=bf16-mixed",
        f"data.batch_size={batch}",
        f"data.batches_per_epoch={sizes.train_steps}",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        "test=false",
        "~callbacks.model_checkpoint",  # a full-size checkpoint is 2.5 GB: nothing here needs one
        "~callbacks.gallery",
        f"hydra.run.dir={run}",
    ]
    if processes == 1:
        overrides += [
            "+callbacks.amc_breakdown._target_=amc_breakdown.AmcBreakdown",  # benchmarks/ is on train.py's PYTHONPATH
            f"+callbacks.amc_breakdown.path={run / 'amc_breakdown.json'}",
        ]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    log = run / "output.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *overrides],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timed_out"
    if code == 0:
        return "ok"
    return "out_of_memory" if out_of_memory(log.read_text(errors="replace")) else f"failed (exit {code}, {log})"


def step_metrics(run: Path) -> list[dict[str, float]]:
    """Each training step's logged values from the CSV logger's metrics.csv (rank 0's)."""
    import csv

    files = sorted(run.glob("csv/version_*/metrics.csv"))
    if not files:
        raise FileNotFoundError(f"no csv/version_*/metrics.csv in {run}")
    with open(files[-1]) as table:
        rows = [
            {key: float(value) for key, value in row.items() if value not in ("", None)}
            for row in csv.DictReader(table)
            if row.get("train/seconds_per_step")
        ]
    if not rows:
        raise ValueError(f"{files[-1]} has no train/seconds_per_step")
    return rows


def evaluate(model: str, sizes: Sizes, work: Path) -> dict:
    """Batched Grad-CAM against the per-sample loop on the same batches, in bf16 autocast as eval.py runs them."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from gradcam_throughput import batched_maps, per_sample_maps
    from synground.conf import CONFIG_DIR
    from synground.models.map_metrics import pointing_game_hits

    overrides = [*model_overrides(model, sizes, work), f"data.eval_batch_size={sizes.eval_batch}", "data.num_workers=0"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    module = instantiate(cfg.model).to(device).eval()
    datamodule = instantiate(cfg.data, test={"check": str(work / "shards")})
    batches, count = [], 0
    for batch in datamodule.test_dataloader()[0]:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batches.append(datamodule.on_after_batch_transfer(batch, 0))
        count += len(batch["texts"])
        if count >= sizes.eval_items:
            break
    result: dict[str, Any] = {"image_size": cfg.data.image_size, "batch_size": sizes.eval_batch, "items": count}
    hits, maps_of = {}, {}
    for name, method in (("batched", batched_maps), ("per_sample", per_sample_maps)):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            method(module, batches[0])  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start, found, kept = now(device), [], []
            for batch in batches:
                maps = method(module, batch).detach().float()
                found += pointing_game_hits(maps, batch["original_boxes"], batch["original_sizes"]).tolist()
                kept.append(maps)
            seconds = now(device) - start
        hits[name], maps_of[name] = found, torch.cat(kept)
        result[name] = {
            "items_per_second": round(len(found) / seconds, 2),
            "pointing_game": round(sum(found) / len(found), 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        }
    result["speedup"] = round(result["batched"]["items_per_second"] / result["per_sample"]["items_per_second"], 2)
    result["same_hits"] = sum(a == b for a, b in zip(hits["batched"], hits["per_sample"]))
    # the largest difference between the two methods' maps, over the largest map value
    reference = maps_of["per_sample"]
    result["map_difference"] = float((maps_of["batched"] - reference).abs().max() / reference.abs().max().clamp(min=1e-12))
    return result


def components(sizes: Sizes, work: Path, names: tuple[str, ...]) -> Path:
    """The generation models `names` (of stable_diffusion, grounding_dino, llm), each written once: full-size random
    stand-ins (in the part that first needs them, within its budget), or every tiny one."""
    root = work / "components"
    if sizes.full:
        from synground.generation.tiny import write_full_size_components

        for name in names:
            if not (root / name / "done").exists():
                shutil.rmtree(root / name, ignore_errors=True)
                # saved in float16 as the hub's half-precision weights (on a CPU the stages load them as float32)
                write_full_size_components(
                    root,
                    llm_layers=sizes.llm_layers,
                    dtype=torch.float16,
                    device="cuda" if torch.cuda.is_available() else "cpu",
                    names=(name,),
                )
                (root / name / "done").touch()
    elif not (root / "done").exists():
        from synground.generation.tiny import write_tiny_components

        shutil.rmtree(root, ignore_errors=True)
        write_tiny_components(root)
        (root / "done").touch()
    return root


def pipeline(sizes: Sizes, root: Path):
    """generate.py's config for the check: generation=synground on the stand-ins in `root` (the tiny ones'
    generation=synground_tiny), Concept2Text descriptions, the mode's steps, batch and token limit."""
    from gpu_generation import pipeline_config

    overrides = [
        f"generation.generator.text_to_image.steps={sizes.diffusion_steps}",
        f"generation.generator.text_to_image.batch_size={sizes.diffusion_batch}",
        f"generation.llm.max_new_tokens={sizes.llm_new_tokens}",
        f"generation.chunk_size={max(sizes.requests, 2)}",
    ]
    if not sizes.full:
        return pipeline_config(root, overrides)
    return pipeline_config(
        None,
        [
            *overrides,
            f"generation.llm.model_id={root / 'llm'}",
            f"generation.generator.text_to_image.model_id={root / 'stable_diffusion'}",
            f"generation.generator.detector.model_id={root / 'grounding_dino'}",
            "generation.generator.clip_filter.pretrained=null",  # ViT-B-32 with random weights
            "generation.generator.clip_filter.min_score=-1.0",  # random embeddings score near 0: keep every sample
        ],
    )


def diffusion(sizes: Sizes, work: Path) -> dict:
    import hydra

    from gpu_generation import diffusion_images_per_hour

    start = time.perf_counter()
    root = components(sizes, work, ("stable_diffusion",))
    written = time.perf_counter() - start
    text_to_image = hydra.utils.instantiate(pipeline(sizes, root).generation.generator.text_to_image)
    unet = text_to_image.load().unet
    result = diffusion_images_per_hour(text_to_image, sizes.diffusion_images, sizes.diffusion_batch)
    return {
        **result,
        "steps": sizes.diffusion_steps,
        "batch_size": sizes.diffusion_batch,
        "size": f"{text_to_image.width}x{text_to_image.height}",
        "dtype": str(unet.dtype).removeprefix("torch."),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "attention": sorted({type(p).__name__ for p in unet.attn_processors.values()}),
        "components_seconds": round(written, 1),
    }


def detector(sizes: Sizes, work: Path) -> dict:
    import hydra

    from synground.generation.runtime import StageClock
    from synground.generation.tiny import WORDS

    root = components(sizes, work, ("grounding_dino",))
    stage = hydra.utils.instantiate(pipeline(sizes, root).generation.generator.detector)
    model = stage.load()[1]
    side = 512 if sizes.full else 64
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator) for _ in range(sizes.detector_images)
    ]
    phrases = [[f"the {WORDS[(4 * i + k) % len(WORDS)]}" for k in range(4)] for i in range(len(images))]
    clock = StageClock()
    stage.detect(images[: stage.batch_size], phrases[: stage.batch_size], clock)  # warm-up
    device = next(model.parameters()).device
    start = now(device)
    stage.detect(images, phrases, clock)
    seconds = now(device) - start
    return {
        "images": len(images),
        "image_size": f"{side}x{side}",
        "phrases_per_image": 4,
        "batch_size": stage.batch_size,
        "images_per_second": round(len(images) / seconds, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def end_to_end(sizes: Sizes, work: Path) -> dict:
    from gpu_generation import triplets_per_hour

    root = components(sizes, work, ("stable_diffusion", "grounding_dino", "llm"))
    output = work / "end_to_end"
    shutil.rmtree(output, ignore_errors=True)
    result = triplets_per_hour(pipeline(sizes, root), sizes.requests, output)
    if not result["triplets"]:  # the stand-ins answer in lists and keep every box: no triplet means a broken stage
        raise RuntimeError(f"no triplet written from {sizes.requests} requests; rejections: {result['rejections']}")
    llm = json.loads((root / "llm" / "config.json").read_text())
    result["llm"] = {key: llm[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")}
    result["llm_max_new_tokens"] = sizes.llm_new_tokens
    return result


def data_loader(sizes: Sizes, work: Path) -> dict:
    """The training loader as train.py builds it (the experiment's workers and pinning) at each model's image size."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from synground.conf import CONFIG_DIR

    rows = {}
    for model in MODELS:
        overrides = [*model_overrides(model, sizes, work), f"data.batch_size={sizes.train_batch}"]
        overrides.append(f"data.batches_per_epoch={sizes.loader_batches + 1}")
        overrides.append(f"data.pin_memory={str(torch.cuda.is_available()).lower()}")
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        loader = instantiate(cfg.data).train_dataloader()
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)  # the workers start and fill their first batches
        first = time.perf_counter() - start
        start, samples = time.perf_counter(), 0
        for batch in batches:
            samples += len(batch["texts"])
        seconds = time.perf_counter() - start
        rows[model] = {
            "image_size": cfg.data.image_size,
            "batch_size": cfg.data.batch_size,
            "workers": cfg.data.num_workers,
            "first_batch_seconds": round(first, 2),
            "samples_per_second": round(samples / seconds, 1),
        }
        demand = read_part(work, f"train:{model}")  # written by a part that finished
        if demand:
            rows[model]["training_samples_per_second"] = demand["samples_per_second"]
            rows[model]["keeps_up"] = rows[model]["samples_per_second"] >= demand["samples_per_second"]
    return {"models": rows, "cpu_count": os.cpu_count()}


def run_part(name: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    if name == "prepare":
        return prepare(sizes, work)
    kind, _, model = name.partition(":")
    if kind == "train":
        return train(model, 1, sizes, work, deadline)
    if kind == "ddp":
        return train(model, 2, sizes, work, deadline)
    if kind == "eval":
        return evaluate(model, sizes, work)
    return {"diffusion": diffusion, "detector": detector, "end_to_end": end_to_end, "data_loader": data_loader}[name](sizes, work)


# --------------------------------------------------------------------------------------------------- the orchestration


def out_of_memory(text: str) -> bool:
    return any(sign in text for sign in OUT_OF_MEMORY)


def part_file(work: Path, name: str) -> Path:
    return work / "parts" / f"{name.replace(':', '-')}.json"


def read_part(work: Path, name: str) -> dict | None:
    path = part_file(work, name)
    return json.loads(path.read_text()) if path.exists() else None


def skip_reason(name: str, mode: str, gpus: int, done: dict[str, dict]) -> str | None:
    if name.startswith("ddp:"):
        if mode == "gpu" and gpus < 2:
            return f"{gpus} GPU: DDP needs two or more"
        if mode == "dry_run":
            return "make dry-run trains every experiment at full size under 2-process DDP already"
        if mode == "smoke" and name != "ddp:albef":
            return "the smoke run checks DDP (gloo, 2 CPU processes) with one model"
    if (
        name != "prepare"
        and done.get("prepare", {}).get("status") not in (None, "ok")
        and not name.startswith(("diffusion", "detector", "end_to_end"))
    ):
        return "prepare did not finish"
    return None


def launch(name: str, mode: str, work: Path, budget: int) -> dict:
    """One part in its own process (and process group), stopped at its budget."""
    log = work / "logs" / f"{name.replace(':', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    part_file(work, name).unlink(missing_ok=True)
    command = [sys.executable, __file__, "--part", name, "--mode", mode, "--work-dir", str(work), "--budget", str(budget)]
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = round(time.perf_counter() - start, 1)
    record = {"part": name, "wall_seconds": seconds, "budget_seconds": budget, "log": str(log)}
    text = log.read_text(errors="replace")
    if code is None:
        return {**record, "status": "timed_out", "error": f"stopped after its budget of {budget} s"}
    if code != 0:
        status = "out_of_memory" if out_of_memory(text) else "failed"
        return {**record, "status": status, "error": "\n".join(text.strip().splitlines()[-12:])}
    return {**record, "status": "ok", **(read_part(work, name) or {})}


def machine() -> dict:
    import importlib.metadata as metadata

    versions = {}
    for package in ("torch", "lightning", "transformers", "diffusers", "open-clip-torch", "webdataset"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    gpus = [
        {"name": torch.cuda.get_device_name(i), "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
        for i in range(torch.cuda.device_count())
    ]
    driver = None
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, check=False
        )
        driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else None
    return {
        "gpus": gpus,
        "cuda": torch.version.cuda,
        "driver": driver,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def figure(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}" if isinstance(value, float) else f"{value:,}{unit}"


def timing_difference(part: dict, key: str) -> str:
    """A cost measured as the difference of two timings, with the timing noise where the repeats show it."""
    value, noise = part.get(key), part.get("breakdown_noise_seconds")
    return figure(value, digits=3) if value is None or noise is None else f"{value:.3f} ± {noise:.3f}"


def report(result: dict) -> str:
    """The markdown page: machine, each part's status, then the figures."""
    info, parts = result["machine"], {p["part"]: p for p in result["parts"]}
    gpus = (
        ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in info["gpus"])
        or f"no GPU ({info['cpu']}, {info['cpu_count']} cores)"
    )
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    lines = [
        f"# GPU check ({result['mode']})",
        "",
        f"`{result['command']}`, {result['date']}. {gpus}; CUDA {info['cuda']}, driver {info['driver']}; {versions}.",
        "",
        "| part | status | time (s) | budget (s) |",
        "|---|---|---|---|",
    ]
    for name, part in parts.items():
        status = part["status"] if part["status"] != "skipped" else f"skipped: {part['reason']}"
        lines.append(f"| {name} | {status} | {figure(part.get('wall_seconds'))} | {part.get('budget_seconds', '-')} |")
    ok = {name: part for name, part in parts.items() if part["status"] == "ok"}

    training = [(n, p) for n, p in ok.items() if n.startswith(("train:", "ddp:"))]
    if training:
        lines += [
            "",
            "## Training (train.py, bf16-mixed)",
            "",
            (
                "| run | batch / process | samples/s | s / step | peak memory (GiB) | AMC step / ITM step | "
                "Grad-CAM gradient (s) | double backward (s) | double backward, share of step |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, p in training:
            lines.append(
                f"| {name} ({p['processes']} process{'es' if p['processes'] > 1 else ''}) | {p['batch_size_per_process']} | "
                f"{figure(p['samples_per_second'])} | {figure(p['seconds_per_step'], digits=3)} | {figure(p['peak_memory_gib'], digits=2)} | "
                f"{figure(p.get('amc_over_itm'), 'x', 2)} | {timing_difference(p, 'gradcam_gradient_seconds')} | "
                f"{timing_difference(p, 'double_backward_seconds')} | {figure(p.get('double_backward_share_of_step'), digits=2)} |"
            )
        repeats = max((p.get("breakdown_repeats", 0) for _, p in training), default=0)
        lines.append("")
        lines.append(
            "AMC over ITM, the Grad-CAM gradient and the double backward come from forward + backward of the last batch "
            f"three ways in the same process (benchmarks/amc_breakdown.py), the median of {repeats} interleaved repeat(s) each: the double "
            "backward is the AMC step minus the same step with its map detached; its share is of the whole training step. "
            + (
                "± is the widest spread of one way's repeats: a difference below it is timing noise."
                if repeats > 1
                else "One timing each: a difference below this machine's timing noise can come out negative."
            )
        )
    evaluation = [(n, p) for n, p in ok.items() if n.startswith("eval:")]
    if evaluation:
        lines += [
            "",
            "## Evaluation (Grad-CAM pointing game, bf16 autocast)",
            "",
            "| model | image size | items | batched items/s | per-sample items/s | speed-up | same hits | largest map difference |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, p in evaluation:
            lines.append(
                f"| {name} | {p['image_size']} | {p['items']} | {figure(p['batched']['items_per_second'])} | "
                f"{figure(p['per_sample']['items_per_second'])} | {figure(p['speedup'], 'x', 2)} | {p['same_hits']} of {p['items']} | "
                f"{p['map_difference']:.1e} |"
            )
    generation = []
    if "diffusion" in ok:
        p = ok["diffusion"]
        generation.append(
            f"| Stable Diffusion 1.5 ({p['size']}, {p['steps']} step{'s' * (p['steps'] != 1)}, batch {p['batch_size']}, {p['dtype']}, "
            f"{'/'.join(p['attention'])}) | {figure(p['images_per_hour'])} images/hour | {ANCHORS['diffusion']} |"
        )
    if "detector" in ok:
        p = ok["detector"]
        generation.append(
            f"| Grounding DINO base ({p['image_size']}, {p['phrases_per_image']} phrases, batch {p['batch_size']}, {p['dtype']}) | "
            f"{figure(p['images_per_second'], digits=2)} images/s | {ANCHORS['detector']} |"
        )
    if "end_to_end" in ok:
        p = ok["end_to_end"]
        llm = p["llm"]
        stages = ", ".join(f"{k} {v:g}/s" for k, v in p["items_per_second"].items())
        generation.append(
            f"| end to end, {p['requests']} requests (LLM {llm['num_hidden_layers']} x {llm['hidden_size']}, "
            f"{p['llm_max_new_tokens']} new tokens): {stages} | {figure(p['triplets_per_hour'])} triplets/hour | - |"
        )
    if generation:
        lines += ["", "## Generation (random weights)", "", "| stage | measured | anchor |", "|---|---|---|", *generation]
    if "data_loader" in ok:
        lines += [
            "",
            "## Data loader (training loader, photo-like 640x480 JPEG shards)",
            "",
            "| model | image size | batch | workers | loader samples/s | training samples/s | keeps up |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, row in ok["data_loader"]["models"].items():
            keeps = row.get("keeps_up")
            lines.append(
                f"| {model} | {row['image_size']} | {row['batch_size']} | {row['workers']} | {figure(row['samples_per_second'])} | "
                f"{figure(row.get('training_samples_per_second'))} | {'-' if keeps is None else 'yes' if keeps else 'NO: the GPU waits'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--smoke", action="store_true", help="tiny models on the CPU (under 2 minutes)")
    modes.add_argument("--dry-run", action="store_true", help="full sizes on the CPU, one step of each part")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="a subset (prepare always runs)")
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiplies every part's time budget (e.g. 2 on a GPU half an A100's speed)",
    )
    parser.add_argument("--work-dir", type=Path, help="default logs/gpu_check/<mode>")
    parser.add_argument("--output", type=Path, help="writes <output>.json and .md (default: by mode)")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(1, str(ROOT / "tests"))  # dry_run writes the released formats with the tests' writers

    if args.part:  # a part's own process
        started = time.time()
        result = run_part(args.part, MODES[args.mode], args.work_dir, started + args.budget - 5)
        path = part_file(args.work_dir, args.part)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return

    mode = "smoke" if args.smoke else "dry_run" if args.dry_run else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check measures the GPU path (--smoke or --dry-run run it on the CPU)")
    sizes = MODES[mode]
    work = (args.work_dir or ROOT / "logs" / "gpu_check" / mode).resolve()
    output = (
        args.output
        or {
            "gpu": RESULTS / "gpu_check",
            "dry_run": RESULTS / "gpu_check_dry_run",
            "smoke": ROOT / "logs" / "gpu_check" / "smoke",
        }[mode]
    )
    work.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    wanted = ["prepare", *[p for p in args.parts if p != "prepare"]]
    done: dict[str, dict] = {}
    print(f"GPU check ({mode}) in {work}", flush=True)
    for name in [p for p in PARTS if p in wanted]:
        reason = skip_reason(name, mode, gpus, done)
        if reason:
            done[name] = {"part": name, "status": "skipped", "reason": reason}
        else:
            done[name] = launch(name, mode, work, round(sizes.budgets[name] * args.budget_scale))
        part = done[name]
        detail = part.get("reason") or (part.get("error", "").splitlines() or [""])[-1]
        took = f" in {part['wall_seconds']:.0f} s" if "wall_seconds" in part else ""
        print(f"  {name}: {part['status']}{took}" + (f" ({detail})" if detail and part["status"] != "ok" else ""), flush=True)

    result = {
        "command": "python benchmarks/gpu_check.py" + {"gpu": "", "dry_run": " --dry-run", "smoke": " --smoke"}[mode],
        "mode": mode,
        "date": time.strftime("%Y-%m-%d"),
        "sizes": dataclasses.asdict(sizes),
        "budget_scale": args.budget_scale,
        "machine": machine(),
        "parts": list(done.values()),
    }
    from synground.files import write_atomic

    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    page = report(result)
    write_atomic(output.with_suffix(".md"), page)
    print(page)
    print(f"written to {output.with_suffix('.json')} and .md")
    failed = [p["part"] for p in done.values() if p["status"] not in ("ok", "skipped")]
    if failed:
        sys.exit(f"{len(failed)} part(s) did not finish: {', '.join(failed)} (logs in {work / 'logs'})")


if __name__ == "__main__":
    main()
