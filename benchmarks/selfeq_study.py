"""What SelfEQ adds on the shapes world: ITM only, ITM + SelfEQ (no box used), ITM + AMC and ITM + AMC + SelfEQ, over
seeds, on every test metric.

    python benchmarks/selfeq_study.py [--seeds 0 1 2] [--workers 2]

Trains `experiment=shapes_selfeq` (the tiny ALBEF, SelfEQ's model, from its packaged shapes-pretrained vision encoder;
each phrase has a paraphrase with its shape word replaced by a synonym) through train.py in four conditions that differ
only in model.amc_weight and model.selfeq_weight, every one reading the same data with the same vocabulary. SelfEQ
acts in the first of the 5 epochs, as the released code's schedule (model.selfeq_epochs=1); `--extra
model.selfeq_epochs=null` runs it in every epoch. Writes benchmarks/results/selfeq_study.{json,md}: per condition
and test metric the mean and 95% t-interval over seeds, and each condition minus ITM only, paired on seed.

Each run is a directory logs/benchmarks/selfeq_study/<condition>-seed<s>, trained by its own process, --workers at a
time; a rerun trains only what is missing (a finished run of another config stops it, naming the keys).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from runner import paired_summary, run_all, run_minutes, study_arguments, train_jobs
from synground.files import write_atomic
from synground.results import mean_interval

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "logs" / "benchmarks" / "selfeq_study"
SPLITS = ("shapes_clean", "shapes_textured")
METRICS = ("pointing_game", "pointing_game_tolerant", "mass_in_box", "box_accuracy_proposals", "box_accuracy_map")
CONDITIONS = {  # condition: (run name, train.py overrides)
    "ITM only": ("itm", ("model.amc_weight=0", "model.selfeq_weight=0")),
    "ITM + SelfEQ (no boxes)": ("selfeq", ("model.amc_weight=0", "model.selfeq_weight=1")),
    "ITM + AMC": ("amc", ("model.amc_weight=1", "model.selfeq_weight=0")),
    "ITM + AMC + SelfEQ": ("amc_selfeq", ("model.amc_weight=1", "model.selfeq_weight=1")),
}
BASELINE = "ITM only"


def arguments(overrides: tuple[str, ...], seed: int, extra: tuple[str, ...]) -> list[str]:
    return ["experiment=shapes_selfeq", *overrides, f"seed={seed}", *extra]


def keys() -> list[str]:
    return [f"test/{metric}/{split}" for metric in METRICS for split in SPLITS]


def main() -> None:
    args = study_arguments(__doc__.splitlines()[0], RUNS, RESULTS)
    extra = tuple(args.extra)
    jobs = train_jobs(CONDITIONS, args.runs_dir, args.seeds, keys(), lambda overrides, seed: arguments(overrides, seed, extra))
    print(f"training {len(jobs)} of {len(CONDITIONS) * len(args.seeds)} runs", flush=True)
    failed = run_all(jobs, args.workers, args.threads)
    if failed:
        raise SystemExit("failed (a rerun trains them again): " + ", ".join(failed))
    runs: dict[str, list[dict[str, Any]]] = {}
    for condition, (name, _) in CONDITIONS.items():
        runs[condition] = []
        for seed in args.seeds:
            run = args.runs_dir / f"{name}-seed{seed}"
            metrics = json.loads((run / "metrics.json").read_text())
            train = {
                key: metrics[key] for key in ("train/selfeq_pairs", "train/selfeq_sim", "train/selfeq_cst") if key in metrics
            }
            runs[condition].append(
                {"seed": seed, "minutes": round(run_minutes(run), 2), **{key: metrics[key] for key in keys()}, **train}
            )
    summaries = {
        condition: {
            key: paired_summary(
                [row[key] for row in rows], None if condition == BASELINE else [row[key] for row in runs[BASELINE]]
            )
            for key in keys()
        }
        for condition, rows in runs.items()
    }
    record = {
        "machine": f"{platform.machine()}, {args.workers} processes of {args.threads} thread(s), torch {torch.__version__}",
        "command": " ".join(["python benchmarks/selfeq_study.py", *sys.argv[1:]]),
        "seeds": args.seeds,
        "runs": runs,
        "summary": summaries,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output / "selfeq_study.json", json.dumps(record, indent=2) + "\n")
    text = markdown(record)
    write_atomic(args.output / "selfeq_study.md", text)
    print(text)


def markdown(record: dict[str, Any]) -> str:
    """One table per metric: mean [95% t-interval] over seeds per condition and split, then the paired differences."""
    seeds = ", ".join(map(str, record["seeds"]))
    lines = [
        (
            f"`{record['command']}`; {record['machine']}. experiment=shapes_selfeq (tiny ALBEF), test splits of 300 scenes "
            f"each, mean [95% t-interval] over seeds {seeds}; differences are paired on seed."
        ),
    ]
    for metric in METRICS:
        columns = [f"test/{metric}/{split}" for split in SPLITS]
        lines += [
            "",
            f"**{metric}**",
            "",
            "| condition | " + " | ".join(SPLITS) + " | " + " | ".join(f"minus ITM only, {s}" for s in SPLITS) + " |",
        ]
        lines.append("|---" * (2 * len(SPLITS) + 1) + "|")
        for condition, stats in record["summary"].items():
            values = [mean_interval(stats[key], "%") for key in columns]
            differences = [
                "-" if condition == BASELINE else mean_interval(stats[key]["minus_baseline"], sign="+") for key in columns
            ]
            lines.append(f"| {condition} | " + " | ".join(values + differences) + " |")
    minutes = {condition: sum(r["minutes"] for r in rows) / len(rows) for condition, rows in record["runs"].items()}
    lines += ["", "Minutes per run: " + ", ".join(f"{condition} {m:.1f}" for condition, m in minutes.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
