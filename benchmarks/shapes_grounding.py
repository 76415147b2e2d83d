"""What AMC adds on the shapes world: pointing game of ITM + AMC, ITM alone, and a random point, over seeds.

    python benchmarks/shapes_grounding.py [--seeds 0 1 2]        (or `make benchmark`)

Trains `experiment=shapes` (`make demo`) through train.py with the tiny BLIP (amc_weight 1 and 0) and the tiny ALBEF
(amc_weight 1), each starting from its packaged pretrained vision encoder, and the tiny BLIP again from a random
vision encoder (amc_weight 1 and 0: the demo before the encoder was pretrained), each with every seed; evaluates each
on the held-out test splits, scores uniformly random points on the same splits, and writes
benchmarks/results/shapes_grounding.{json,md}: per method the mean, sd and 95% t-interval over seeds, and each
method minus ITM + AMC paired on seed. It also splits each trained model's test hits by whether another shape in the
scene has the phrase's colour: that tells a model that grounds colour words from one that binds colour and shape.

Each run is a directory logs/benchmarks/shapes_grounding/<method>-seed<s>, trained by its own process, --workers at a
time; a rerun trains only what is missing (a finished run of another config stops it, naming the keys).
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from runner import paired_summary, run_all, run_minutes, study_arguments, train_jobs
from synground.conf import CONFIG_DIR
from synground.files import write_atomic
from synground.results import mean_interval

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "logs" / "benchmarks" / "shapes_grounding"
SPLITS = ("shapes_clean", "shapes_textured")
METHODS = {  # method: (run name, train.py overrides)
    "tiny BLIP, ITM + AMC (make demo)": ("amc", ()),
    "tiny BLIP, ITM only (model.amc_weight=0)": ("itm_only", ("model.amc_weight=0",)),
    "tiny ALBEF, ITM + AMC (model=albef_tiny)": ("albef_amc", ("model=albef_tiny",)),
    "tiny BLIP, random vision encoder, ITM + AMC (model.net.vision_weights=null)": (
        "random_vision_amc",
        ("model.net.vision_weights=null",),
    ),
    "tiny BLIP, random vision encoder, ITM only": ("random_vision_itm_only", ("model.net.vision_weights=null", "model.amc_weight=0")),
}  # fmt: skip
BASELINE = "tiny BLIP, ITM + AMC (make demo)"
SHARING = ("colour unique in scene", "colour shared in scene")


def arguments(overrides: tuple[str, ...], seed: int, extra: tuple[str, ...] = ()) -> list[str]:
    return ["experiment=shapes", *overrides, f"seed={seed}", *extra]


def shapes_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=shapes", "data.num_workers=0", *overrides])


def best_checkpoint(run: Path) -> Path:
    """The run's checkpoint of its best validation pointing game (save_top_k is 1: the one epoch*.ckpt)."""
    best = sorted((run / "checkpoints").glob("epoch*.ckpt"))
    if not best:
        raise FileNotFoundError(f"{run / 'checkpoints'} holds no epoch*.ckpt: train the run again (delete its directory)")
    return best[-1]


def hits_by_colour_sharing(run: Path, overrides: tuple[str, ...]) -> dict:
    """Test pointing game of a trained run, split by: is the phrase's colour unique in its scene, or shared? Kept in
    the run's directory (a retrained run's directory is cleared first)."""
    kept = run / "colour_sharing.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    from synground.models.map_metrics import pointing_game_hits
    from synground.shapes.world import COLOURS

    cfg = shapes_config(*overrides)
    datamodule, module = instantiate(cfg.data), instantiate(cfg.model)
    module.load_state_dict(torch.load(best_checkpoint(run), map_location="cpu", weights_only=True)["state_dict"])
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
    result = {group: {"accuracy": sum(hits) / len(hits), "items": len(hits)} for group, hits in sorted(groups.items())}
    write_atomic(kept, json.dumps(result, indent=2))
    return result


def random_point_baseline(extra: tuple[str, ...], draws: int = 5) -> dict:
    """Uniformly random points on the same test splits, averaged over `draws` seeds."""
    from synground.callbacks import GroundingMetrics

    datamodule = instantiate(shapes_config(*extra).data)
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
    args = study_arguments(__doc__.splitlines()[0], RUNS, RESULTS)
    extra = tuple(args.extra)
    jobs = train_jobs(
        METHODS,
        args.runs_dir,
        args.seeds,
        [f"test/pointing_game/{s}" for s in SPLITS],
        lambda overrides, seed: arguments(overrides, seed, extra),
    )
    print(f"training {len(jobs)} of {len(METHODS) * len(args.seeds)} runs", flush=True)
    failed = run_all(jobs, args.workers, args.threads)
    if failed:
        raise SystemExit("failed (a rerun trains them again): " + ", ".join(failed))
    runs = {}
    for method, (name, overrides) in METHODS.items():
        runs[method] = []
        for seed in args.seeds:
            run = args.runs_dir / f"{name}-seed{seed}"
            metrics = json.loads((run / "metrics.json").read_text())
            runs[method].append(
                {
                    "seed": seed,
                    "minutes": round(run_minutes(run), 2),
                    **{f"test/pointing_game/{s}": metrics[f"test/pointing_game/{s}"] for s in SPLITS},
                    "by_colour_sharing": hits_by_colour_sharing(run, (*overrides, f"seed={seed}", *extra)),
                }
            )
    scores = {
        method: {
            **{s: [r[f"test/pointing_game/{s}"] for r in rows] for s in SPLITS},
            **{g: [r["by_colour_sharing"][g]["accuracy"] for r in rows] for g in SHARING},
        }
        for method, rows in runs.items()
    }
    summaries = {
        method: {
            key: paired_summary(values, None if method == BASELINE else scores[BASELINE][key]) for key, values in by_key.items()
        }
        for method, by_key in scores.items()
    }
    record = {
        "machine": f"{platform.machine()}, {args.workers} processes of {args.threads} thread(s), torch {torch.__version__}",
        "command": " ".join(["python benchmarks/shapes_grounding.py", *sys.argv[1:]]),
        "seeds": args.seeds,
        "runs": runs,
        "summary": summaries,
        "random_point": random_point_baseline(extra),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output / "shapes_grounding.json", json.dumps(record, indent=2) + "\n")
    text = markdown(record)
    write_atomic(args.output / "shapes_grounding.md", text)
    print(text)


def markdown(record: dict[str, Any]) -> str:
    """The results as tables: mean [95% t-interval] over seeds, and each method minus the demo paired on seed."""
    seeds = ", ".join(map(str, record["seeds"]))
    lines = [
        f"`{record['command']}`; {record['machine']}. Test pointing game, mean [95% t-interval] over seeds {seeds}.",
        "",
        "| method | " + " | ".join(f"test {s}" for s in SPLITS) + " | minutes per run |",
        "|---" * (len(SPLITS) + 2) + "|",
    ]
    for method, stats in record["summary"].items():
        minutes = sum(r["minutes"] for r in record["runs"][method]) / len(record["runs"][method])
        lines.append(f"| {method} | " + " | ".join(mean_interval(stats[s], "%") for s in SPLITS) + f" | {minutes:.1f} |")
    point = record["random_point"]
    lines.append("| random point | " + " | ".join(f"{100 * point[f'test/pointing_game/{s}']:.1f}%" for s in SPLITS) + " | - |")
    items = record["runs"][BASELINE][0]["by_colour_sharing"]
    lines += [
        "",
        "| method (both test splits) | " + " | ".join(f"{g} ({items[g]['items']} phrases)" for g in SHARING) + " |",
        "|---" * (len(SHARING) + 1) + "|",
    ]
    for method, stats in record["summary"].items():
        lines.append(f"| {method} | " + " | ".join(mean_interval(stats[g], "%") for g in SHARING) + " |")
    lines += ["", "Each method minus ITM + AMC (make demo), paired on seed, in points:", ""]
    lines += ["| method | " + " | ".join([*SPLITS, *SHARING]) + " |", "|---" * (len(SPLITS) + len(SHARING) + 1) + "|"]
    for method, stats in record["summary"].items():
        if method != BASELINE:
            differences = [stats[key]["minus_baseline"] for key in (*SPLITS, *SHARING)]
            lines.append(f"| {method} | " + " | ".join(mean_interval(d, sign="+") for d in differences) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
