"""The spread of the learning-regression run, which sets tests/test_learning.py's floors.

    python benchmarks/learning_floor.py [--seeds 0 1 2 3 4]

Trains `experiment=shapes_short` (make demo's model and data, 300 steps) with ITM + AMC and with ITM alone over
seeds, and writes each seed's test pointing game (the mean of the clean and textured splits, and the shared-colour
phrases of the textured scenes, where grounding the colour word alone is right at most half the time), and per
method and score the mean, sample sd, minimum and maximum, to benchmarks/results/learning_floor.{json,md}. The
test's floors sit several sd below these means, and well above ITM alone and colour-only grounding, so a change that
breaks learning fails CI and run-to-run noise does not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from runner import finished, run_all, run_minutes
from synground.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "logs" / "benchmarks" / "learning_floor"
METHODS = {"ITM + AMC": (), "ITM only": ("model.amc_weight=0",)}
# what tests/test_learning.py holds floors on: the two held-out styles' mean, and the shared-colour phrases
SCORES = {"pointing_game": ("shapes_clean", "shapes_textured"), "shared_colour": ("shapes_shared_colour",)}
SPLITS = sorted({split for splits in SCORES.values() for split in splits})


def arguments(seed: int, overrides: tuple[str, ...]) -> list[str]:
    return ["experiment=shapes_short", f"seed={seed}", *overrides]


def job(run_dir: Path, seed: int, overrides: tuple[str, ...]) -> tuple[str, list[str], Path] | None:
    """The run to train, or None when a finished run (metrics.json with every score) of the same config is there (a
    finished run of another config stops the benchmark)."""
    if finished(run_dir, [f"test/pointing_game/{s}" for s in SPLITS], arguments(seed, overrides)):
        return None
    command = [sys.executable, str(ROOT / "train.py"), *arguments(seed, overrides), f"hydra.run.dir={run_dir}"]
    return run_dir.name, command, run_dir.parent / f"{run_dir.name}.log"


def scores(run_dir: Path, seed: int) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "seed": seed,
        "minutes": round(run_minutes(run_dir), 2),
        **{score: mean_of(metrics, splits) for score, splits in SCORES.items()},
    }


def mean_of(metrics: dict[str, float], splits: tuple[str, ...]) -> float:
    return sum(metrics[f"test/pointing_game/{split}"] for split in splits) / len(splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    folders = {method: [(RUNS / f"{i}-seed{seed}", seed) for seed in args.seeds] for i, method in enumerate(METHODS)}
    jobs = [job(run, seed, METHODS[method]) for method, runs in folders.items() for run, seed in runs]
    failed = run_all([j for j in jobs if j is not None], args.workers, args.threads)
    if failed:
        raise SystemExit("failed (a rerun trains them again): " + ", ".join(failed))
    runs = {method: [scores(run, seed) for run, seed in runs] for method, runs in folders.items()}
    summary = {
        method: {
            score: {
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values),
                "min": min(values),
                "max": max(values),
            }
            for score in SCORES
            for values in [[100 * r[score] for r in results]]
        }
        for method, results in runs.items()
    }
    record = {
        "machine": f"{platform.machine()}, {args.workers} processes of {args.threads} thread(s), torch {torch.__version__}",
        "command": " ".join(["python benchmarks/learning_floor.py", *sys.argv[1:]]),
        "runs": runs,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "learning_floor.json", json.dumps(record, indent=2) + "\n")
    text = markdown(record)
    write_atomic(RESULTS / "learning_floor.md", text)
    print(text)


def markdown(record: dict) -> str:
    """Per method and score: seeds, mean, sd, minimum, maximum, and the mean minutes a run took."""
    lines = [
        f"`{record['command'].strip()}`; {record['machine']}.",
        "",
        "| method | score | seeds | mean | sd | min | max | minutes per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, scores in record["summary"].items():
        runs = record["runs"][method]
        minutes = statistics.mean(r["minutes"] for r in runs)
        for score, s in scores.items():
            lines.append(
                f"| {method} | {score} | {len(runs)} | {s['mean']:.1f}% | {s['sd']:.1f} | {s['min']:.1f}% | "
                f"{s['max']:.1f}% | {minutes:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
