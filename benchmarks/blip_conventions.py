"""How much BLIP's conventions move the numbers: the shapes demo model under both first tokens and both token averages.

    python benchmarks/blip_conventions.py                  (about 5 min per run on 2 CPU cores; 12 runs by default)
    python benchmarks/blip_conventions.py --seeds 0 1 2 3 4

`make demo` (experiment=shapes, the tiny BLIP) is trained once per seed and per (first_token, token_average) of
{enc, cls} x {phrase, all}, so each model's ITM was trained with the first token it is evaluated with (a tiny model
trained from random text weights has no meaning for another first token). Each run's best checkpoint (by validation
pointing game) is then evaluated by eval.py twice, under both token averages, on the held-out test splits with every
map metric: how much of a difference comes from training with a convention, and how much from only reading the maps
another way.

Runs live in logs/benchmarks/blip_conventions/<first>-<average>-seed<s>/ (evaluations in eval-<average>/ inside);
a rerun skips finished trainings and evaluations. Writes benchmarks/results/blip_conventions.{json,md}: per
training and evaluation convention, every test metric's mean and 95% t-interval over seeds (synground.results), and
its difference from BLIP's own conventions ([ENC], phrase tokens in training and evaluation) paired on seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from synground.files import write_atomic
from synground.results import describe, mean_interval

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "logs" / "benchmarks" / "blip_conventions"
RESULTS = ROOT / "benchmarks" / "results"
FIRST_TOKENS = ("enc", "cls")
TOKEN_AVERAGES = ("phrase", "all")
SEEDS = (0, 1, 2)


def run(script: str, run_dir: Path, *overrides: str) -> float:
    """Runs a Hydra entry point into `run_dir` (cleared first: an unfinished run's files must not be read); seconds."""
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / script), "experiment=shapes", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def best_checkpoint(run_dir: Path) -> Path:
    best = sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    if not best:
        raise FileNotFoundError(f"{run_dir}: no best checkpoint (checkpoints/epoch*.ckpt)")
    return best[-1]


def train_and_evaluate(seed: int, first: str, average: str) -> dict[str, Any]:
    convention = (f"model.net.first_token={first}", f"model.net.token_average={average}")
    run_dir = RUNS / f"{first}-{average}-seed{seed}"
    if not (run_dir / "metrics.json").is_file():
        seconds = run("train.py", run_dir, f"seed={seed}", *convention, "test=false")
        print(f"trained {run_dir.name} in {seconds / 60:.1f} min", flush=True)
    row = {"seed": seed, "first_token": first, "trained_average": average, "run": str(run_dir.relative_to(ROOT))}
    evaluations = {}
    for evaluated in TOKEN_AVERAGES:
        eval_dir = run_dir / f"eval-{evaluated}"
        if not (eval_dir / "metrics.json").is_file():
            checkpoint = best_checkpoint(run_dir)
            run(
                "eval.py",
                eval_dir,
                f"model.net.first_token={first}",
                f"model.net.token_average={evaluated}",
                f"ckpt_path={checkpoint}",
            )
        evaluations[evaluated] = json.loads((eval_dir / "metrics.json").read_text())
    return {**row, "evaluations": evaluations}


METRICS = ("pointing_game", "pointing_game_tolerant", "mass_in_box", "box_accuracy_map", "box_accuracy_proposals")
DEFAULT = "enc / train phrase / eval phrase"  # BLIP's own conventions, blip_tiny's defaults


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per convention (first token / training average / evaluation average): every test metric over seeds, in points,
    and its difference from the default convention paired on seed."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    for row in rows:
        for evaluated, metrics in row["evaluations"].items():
            name = f"{row['first_token']} / train {row['trained_average']} / eval {evaluated}"
            for metric, value in metrics.items():
                if metric.startswith("test/") and metric.split("/")[1] in METRICS:
                    values.setdefault(name, {}).setdefault(metric, {})[row["seed"]] = 100 * value
    summary = {}
    for name, metrics in values.items():
        summary[name] = {
            metric: {
                **describe(list(by_seed.values())),
                "paired_difference": describe([v - values[DEFAULT][metric][seed] for seed, v in by_seed.items()]),
            }
            for metric, by_seed in metrics.items()
        }
    return summary


def markdown(record: dict[str, Any]) -> str:
    """What was run, then two tables over the mean of the test splits: each metric's mean [95% t-interval] over seeds,
    and its difference from BLIP's own conventions paired on seed."""
    summary = record["summary"]
    header = "| first token / training average / evaluation average | " + " | ".join(METRICS) + " |"
    rule = "|---" * (len(METRICS) + 1) + "|"
    lines = [
        (
            f"`{record['command'].strip()}`: make demo's tiny BLIP (experiment=shapes) trained per seed "
            f"({record['seeds']}) and convention, the best checkpoint by validation pointing game evaluated on the "
            f"held-out test scenes (300 per style) under both token averages; {record['machine']}."
        ),
        "",
        "Test mean over both splits, points, mean [95% t-interval] over seeds:",
        "",
        header,
        rule,
    ]
    for name, metrics in summary.items():
        lines.append(f"| {name} | " + " | ".join(mean_interval(metrics[f"test/{m}/mean"]) for m in METRICS) + " |")
    lines += ["", f"Difference from `{DEFAULT}` (BLIP's conventions), paired on seed:", "", header, rule]
    for name, metrics in summary.items():
        if name != DEFAULT:
            lines.append(
                f"| {name} | "
                + " | ".join(mean_interval(metrics[f"test/{m}/mean"]["paired_difference"], sign="+") for m in METRICS)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args()
    rows = [
        train_and_evaluate(seed, first, average) for seed in args.seeds for first in FIRST_TOKENS for average in TOKEN_AVERAGES
    ]
    summary = summarise(rows)
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python benchmarks/blip_conventions.py " + " ".join(sys.argv[1:]),
        "seeds": args.seeds,
        "runs": rows,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "blip_conventions.json", json.dumps(record, indent=2) + "\n")
    text = markdown(record)
    write_atomic(RESULTS / "blip_conventions.md", text)
    print(text)


if __name__ == "__main__":
    main()
