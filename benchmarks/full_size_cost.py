"""What one training step costs at full size: ITM only vs ITM + AMC, BLIP at 384 px and ALBEF at 256 px.

    python benchmarks/full_size_cost.py          (writes benchmarks/results/full_size_cost.{json,md})

Each measurement runs in a fresh process: the full-size architecture (random weights; ALBEF ViT-B/16 + BERT-base,
BLIP ITM base) in training mode, GroundingModule's training step as the experiments configure it (ITC on, hard
negatives, AMC on or off), AdamW. The optimiser state is allocated before the baseline is read, so
    peak resident memory of the first training step's forward (the loss, with the AMC map's graph) - baseline =
the activations autograd keeps + the forward's buffers, and two batch sizes give activations per sample as the slope.
Weights, gradients and AdamW's two moments are 16 bytes per trainable parameter (bf16-mixed keeps fp32 weights and
states too). The largest batch per 80 GB GPU is (80 GB - fixed) / activations per sample, fixed being those 16
bytes per parameter plus the forward's batch-independent intercept (backward frees activations as it fills in the
gradients, so it peaks lower at large batches; the backward and optimiser-step peaks are recorded too): an estimate from this
CPU's fp32 activations (an upper bound; bf16 autocast stores most activations at half the size), not a GPU
measurement.
Seconds per sample come from the second step (the first allocates), on this CPU's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from synground.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GPU_BYTES = 80e9
REFERENCE_BATCH = 64  # per GPU, the AMC reference recipe
TEXTS = [
    "a man riding a horse on the beach",
    "the red car parked near the trees",
    "two dogs playing with a ball",
    "a woman holding an umbrella in the rain",
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def reset_peak() -> None:
    """Linux: the high-water mark of resident memory (VmHWM) starts again from the current resident memory."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def build(model: str, amc: bool):
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

    from synground.models import AlbefGroundingModel, BlipGroundingModel, GroundingModule
    from synground.models.albef_network import AlbefConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from support.released_checkpoints import bert_vocabulary

    torch.manual_seed(0)
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(bert_vocabulary(" ".join(TEXTS).split()))})
    if model == "albef":
        net = AlbefGroundingModel(AlbefConfig(image_size=256), tokenizer, gradcam_layer=8, max_text_length=25)
    else:
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        net = BlipGroundingModel(BlipForImageTextRetrieval(BlipConfig()), tokenizer, gradcam_layer=6, max_text_length=25)
    return GroundingModule(net, amc_weight=1.0 if amc else 0.0, itc_weight=1.0, hard_negatives=True).train()


def measure(model: str, amc: bool, batch_size: int) -> dict:
    """One configuration, in this process: baseline, peak of the first step, time of the second."""
    module = build(model, amc)
    module.log = module.log_dict = lambda *args, **kwargs: None
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    for p in parameters:  # allocate AdamW's moments now, so the step's peak holds only what the step itself needs
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    image_size = module.net.image_size
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(batch_size, 256, 256)
    masks[:, 64:192, 32:160] = 1
    batch = {
        "images": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "masks": masks,
        "texts": [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(batch_size)],
    }

    def step() -> float:
        start = time.perf_counter()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert torch.isfinite(loss), loss
        return time.perf_counter() - start

    baseline = rss_bytes()
    reset_peak()
    loss = module.training_step(batch, 0)
    forward_peak = peak_bytes() - baseline  # the activations autograd keeps for backward, and the forward's buffers
    loss.backward()
    backward_peak = peak_bytes() - baseline  # also the gradients, which fill in as the activations are freed
    before = rss_bytes()
    reset_peak()
    optimizer.step()  # AdamW's foreach temporaries: as large as the weights, whatever the batch
    optimizer_peak = peak_bytes() - before
    optimizer.zero_grad(set_to_none=True)
    seconds = step()
    return {
        "model": model,
        "amc": amc,
        "batch_size": batch_size,
        "image_size": image_size,
        "parameters": sum(p.numel() for p in module.parameters()),
        "trainable_parameters": sum(p.numel() for p in parameters),
        "baseline_bytes": baseline,
        "forward_peak_bytes": forward_peak,
        "backward_peak_bytes": backward_peak,
        "optimizer_step_peak_bytes": optimizer_peak,
        "seconds": seconds,
    }


def in_fresh_process(model: str, amc: bool, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--worker", model, str(int(amc)), str(batch_size)]
    # glibc would keep freed blocks for reuse (its mmap threshold grows with each large free), hiding the step's
    # memory in the baseline; a fixed threshold returns every large block to the system when it is freed
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(small: dict, large: dict) -> dict:
    per_sample = (large["forward_peak_bytes"] - small["forward_peak_bytes"]) / (large["batch_size"] - small["batch_size"])
    states = 16 * large["trainable_parameters"] + 4 * (large["parameters"] - large["trainable_parameters"])
    # on top of the 16 bytes per parameter, the batch-independent part of the forward's peak (the gradients are in
    # `states`, so the backward, where they replace freed activations, and AdamW's step peak lower at large batches)
    fixed = states + max(small["forward_peak_bytes"] - per_sample * small["batch_size"], 0.0)
    largest = int((GPU_BYTES - fixed) // per_sample) if per_sample > 0 else None
    return {
        "model": large["model"],
        "image_size": large["image_size"],
        "loss": "ITM + AMC" if large["amc"] else "ITM only",
        "seconds_per_sample": round(large["seconds"] / large["batch_size"], 2),
        "weights_and_optimiser_gb": round(states / 1e9, 2),
        "fixed_gb": round(fixed / 1e9, 2),
        "activations_per_sample_gb": round(per_sample / 1e9, 3),
        "largest_batch_per_80gb": largest,
        "fits_reference_batch": largest is not None and largest >= REFERENCE_BATCH,
        "measurements": [small, large],
    }


def table(rows: list[dict]) -> str:
    lines = [
        (
            "| model | loss | s / sample (CPU) | weights + gradients + AdamW (GB) | activations / sample (GB, fp32) | "
            f"fixed (GB) | largest batch / 80 GB GPU | {REFERENCE_BATCH} fits |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"{r['model'].upper()} {r['image_size']} px"
        lines.append(
            f"| {name} | {r['loss']} | {r['seconds_per_sample']:.2f} | {r['weights_and_optimiser_gb']:.2f} | "
            f"{r['activations_per_sample_gb']:.3f} | {r['fixed_gb']:.2f} | {r['largest_batch_per_80gb']} | "
            f"{'yes' if r['fits_reference_batch'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=[2, 4])
    parser.add_argument("--models", nargs="+", choices=["albef", "blip"], default=["albef", "blip"])
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, amc, batch_size = args.worker
        print(json.dumps(measure(model, amc == "1", int(batch_size))))
        return

    rows = []
    for model in args.models:
        for amc in (False, True):
            small, large = (in_fresh_process(model, amc, size) for size in args.batch_sizes)
            rows.append(summarise(small, large))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    report = table(rows)
    print(report)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(
        RESULTS / "full_size_cost.json", json.dumps({"machine": machine, "batch_sizes": args.batch_sizes, "rows": rows}, indent=2)
    )
    write_atomic(RESULTS / "full_size_cost.md", f"# Full-size training step cost ({machine})\n\n{report}\n")


if __name__ == "__main__":
    main()
