"""What AMC adds on the shapes world: pointing game of ITM + AMC, ITM alone, and a random point, one run.

    python benchmarks/shapes_grounding.py        (or `make benchmark`)

Trains `experiment=shapes` (`make demo`) through train.py with the tiny BLIP (amc_weight 1 and 0) and the tiny ALBEF
(amc_weight 1), each starting from its packaged pretrained vision encoder, and the tiny BLIP again from a random
vision encoder (amc_weight 1 and 0: the demo before the encoder was pretrained), on the same data and seed;
evaluates each on the held-out test splits, scores uniformly random points on the same splits, and writes
benchmarks/results/shapes_grounding.{json,md}. It also splits each trained model's test hits by whether another shape
in the scene has the phrase's colour: that tells a model that grounds colour words from one that binds colour and
shape.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from synground.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "logs" / "benchmarks"


def train(name: str, *overrides: str) -> dict:
    run_dir = RUNS / name
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of an earlier benchmark run must not be read as this one's
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "experiment=shapes", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"seconds": round(time.perf_counter() - start, 1), **metrics}


def shapes_config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["experiment=shapes", "data.num_workers=0", *overrides])


def hits_by_colour_sharing(name: str, *overrides: str) -> dict:
    """Test pointing game of a trained run, split by: is the phrase's colour unique in its scene, or shared?"""
    from synground.generation.shapes import COLOURS
    from synground.models.map_metrics import pointing_game_hits

    cfg = shapes_config(*overrides)
    datamodule, module = instantiate(cfg.data), instantiate(cfg.model)
    best = next(p for p in sorted((RUNS / name / "checkpoints").glob("*.ckpt")) if p.name != "last.ckpt")
    module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    module.eval()
    items = []  # (scene key, phrase, hit)
    for loader in datamodule.test_dataloader():
        for batch in loader:
            maps = module.evaluation_maps(datamodule.on_after_batch_transfer(batch, 0))["maps"]
            hits = pointing_game_hits(maps, batch["original_boxes"], batch["original_sizes"])
            items += [(scene, text, bool(hit)) for scene, text, hit in zip(batch["image_keys"], batch["texts"], hits)]
    phrases = defaultdict(list)
    for scene, text, _ in items:
        phrases[scene].append(text)
    groups = defaultdict(list)
    for scene, text, hit in items:
        colour = next(word for word in text.split() if word in COLOURS)
        shared = sum(colour in other.split() for other in phrases[scene]) > 1
        groups["colour shared in scene" if shared else "colour unique in scene"].append(hit)
    return {group: {"accuracy": sum(hits) / len(hits), "items": len(hits)} for group, hits in sorted(groups.items())}


def random_point_baseline(draws: int = 5) -> dict:
    """Uniformly random points on the same test splits, averaged over `draws` seeds."""
    from synground.callbacks import GroundingMetrics

    datamodule = instantiate(shapes_config().data)
    results = {}
    for name, loader in zip(datamodule.test_split_names, datamodule.test_dataloader()):
        batches = list(loader)
        scores = []
        for draw in range(draws):
            generator = torch.Generator().manual_seed(draw)
            metric = GroundingMetrics()
            for batch in batches:
                height, width = batch["original_sizes"][0].tolist()  # one size per split in the shapes world
                metric.update(
                    torch.rand(len(batch["texts"]), height, width, generator=generator),
                    batch["original_boxes"],
                    batch["original_sizes"],
                )
            scores.append(metric.compute()["pointing_game"].item())
        results[f"test/pointing_game/{name}"] = sum(scores) / len(scores)
    return results


def main() -> None:
    runs = {  # method: (run name, overrides)
        "tiny BLIP, ITM + AMC (make demo)": ("amc", ()),
        "tiny BLIP, ITM only (model.amc_weight=0)": ("itm_only", ("model.amc_weight=0",)),
        "tiny ALBEF, ITM + AMC (model=albef_tiny)": ("albef_amc", ("model=albef_tiny",)),
        "tiny BLIP, random vision encoder, ITM + AMC (model.net.vision_weights=null)": (
            "random_vision_amc",
            ("model.net.vision_weights=null",),
        ),
        "tiny BLIP, random vision encoder, ITM only": (
            "random_vision_itm_only",
            ("model.net.vision_weights=null", "model.amc_weight=0"),
        ),
    }
    rows = {method: train(name, *overrides) for method, (name, overrides) in runs.items()}
    rows["random point"] = random_point_baseline()
    breakdown = {method: hits_by_colour_sharing(name, *overrides) for method, (name, overrides) in runs.items()}
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python benchmarks/shapes_grounding.py",
        "rows": rows,
        "by_colour_sharing": breakdown,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "shapes_grounding.json", json.dumps(record, indent=2))
    splits = ["shapes_clean", "shapes_textured"]
    lines = ["| method | " + " | ".join(f"test {s}" for s in splits) + " | wall time |", "|---" * (len(splits) + 2) + "|"]
    for method, metrics in rows.items():
        cells = [f"{100 * metrics[f'test/pointing_game/{s}']:.1f}%" for s in splits]
        seconds = f"{metrics['seconds'] / 60:.1f} min" if "seconds" in metrics else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds} |")
    groups = ["colour unique in scene", "colour shared in scene"]
    lines += ["", "| method (both test splits) | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for method, result in breakdown.items():
        lines.append(
            f"| {method} | " + " | ".join(f"{100 * result[g]['accuracy']:.1f}% of {result[g]['items']}" for g in groups) + " |"
        )
    table = "\n".join(lines)
    write_atomic(RESULTS / "shapes_grounding.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
