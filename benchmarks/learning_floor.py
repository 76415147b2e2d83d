"""The spread of the learning-regression run, which sets tests/test_learning.py's floors.

    python benchmarks/learning_floor.py [--seeds 0 1 2 3]

Trains `experiment=shapes_short` (make demo's model and data, 100 steps) with ITM + AMC and with ITM alone over
seeds, and writes each seed's mean test pointing game, and per method the mean, sample sd and minimum, to
benchmarks/results/learning_floor.{json,md}. The test's floors sit several sd below these means, and well above
ITM alone, so a change that breaks learning fails CI and run-to-run noise does not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from synground.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "logs" / "benchmarks" / "learning_floor"
METHODS = {"ITM + AMC": (), "ITM only": ("model.amc_weight=0",)}


def short_run(run_dir: Path, seed: int, *overrides: str) -> dict:
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "train.py"), "experiment=shapes_short", f"seed={seed}", *overrides]
    subprocess.run([*command, f"hydra.run.dir={run_dir}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "seed": seed,
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "pointing_game": metrics["test/pointing_game/mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    runs = {
        method: [short_run(RUNS / f"{i}-seed{seed}", seed, *overrides) for seed in args.seeds]
        for i, (method, overrides) in enumerate(METHODS.items())
    }
    summary = {}
    for method, results in runs.items():
        scores = [100 * r["pointing_game"] for r in results]
        summary[method] = {
            "mean": statistics.mean(scores),
            "sd": statistics.stdev(scores),
            "min": min(scores),
            "max": max(scores),
        }
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python benchmarks/learning_floor.py " + " ".join(sys.argv[1:]),
        "runs": runs,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "learning_floor.json", json.dumps(record, indent=2) + "\n")
    lines = ["| method | seeds | mean | sd | min | max | minutes per run |", "|---|---|---|---|---|---|---|"]
    for method, s in summary.items():
        minutes = statistics.mean(r["minutes"] for r in runs[method])
        lines.append(
            f"| {method} | {len(runs[method])} | {s['mean']:.1f}% | {s['sd']:.1f} | {s['min']:.1f}% | {s['max']:.1f}% | {minutes:.1f} |"
        )
    write_atomic(RESULTS / "learning_floor.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
