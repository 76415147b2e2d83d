"""What the benchmarks that train many runs share: each run in its own process, a few at a time, with its log.

from runner import finished, run_all, run_minutes          (a benchmark script's own folder is on sys.path)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from synground import runs
from synground.conf import CONFIG_DIR
from synground.results import config_differences, describe

ROOT = Path(__file__).resolve().parents[1]


def run_all(jobs: list[tuple[str, list[str], Path]], workers: int, threads: int) -> list[str]:
    """Run each job (a label, a command, its log file) as its own process, `workers` at a time, with `threads` torch
    threads; returns the labels of those that failed. On 2 cores two one-thread runs train in about the time of one
    two-thread run."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    failed, total = [], len(jobs)

    def one(index: int, job: tuple[str, list[str], Path]) -> None:
        label, command, log = job
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "w") as out:
            code = subprocess.run(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT).returncode
        verdict = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
        print(f"[{index + 1}/{total}] {label}: {verdict} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        if code != 0:
            failed.append(label)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(total), jobs))
    return failed


def run_minutes(run_dir: Path) -> float:
    """A train.py run's wall time from its files: Hydra writes .hydra/config.yaml as the run starts, train.py
    metrics.json last."""
    return (runs.metrics_path(run_dir).stat().st_mtime - runs.config_path(run_dir).stat().st_mtime) / 60


def finished(run: Path, metrics: Iterable[str], overrides: Sequence[str]) -> bool:
    """Whether `run` holds a finished train.py run (a metrics.json with every one of `metrics`) of the config that
    `overrides` compose now. An unfinished run directory is cleared, so that it trains again; a finished run of another
    config stops the benchmark, naming the keys that differ (its results must not be read as this config's, and it is
    not thrown away)."""
    scores = runs.metrics_path(run)
    if scores.is_file() and set(metrics) <= set(json.loads(scores.read_text())):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            stale = config_differences(run, compose("train", overrides=list(overrides)))
        if stale:
            raise SystemExit(
                f"{run} was trained with another config than this benchmark gives it now (differs at "
                f"{', '.join(stale[:5])}): give another runs directory, or delete it to train it again"
            )
        return True
    if run.exists():
        print(f"clearing unfinished run {run}", flush=True)
        shutil.rmtree(run)
    return False


def train_jobs(
    methods: Mapping[str, tuple[str, Sequence[str]]],
    runs_dir: Path,
    seeds: Sequence[int],
    metrics: Iterable[str],
    arguments: Callable[[Sequence[str], int], list[str]],
) -> list[tuple[str, list[str], Path]]:
    """run_all's jobs for the train.py runs still to do: `<runs_dir>/<name>-seed<s>` for each method's (name,
    overrides) and each seed, trained with `arguments(overrides, seed)`; `finished` decides which are done (it clears
    unfinished runs and stops on a finished run of another config)."""
    jobs = []
    for name, overrides in methods.values():
        for seed in seeds:
            run = runs_dir / f"{name}-seed{seed}"
            if not finished(run, list(metrics), arguments(overrides, seed)):
                command = [sys.executable, str(ROOT / "train.py"), *arguments(overrides, seed), f"hydra.run.dir={run}"]
                jobs.append((run.name, command, runs_dir / f"{run.name}.log"))
    return jobs


def study_arguments(description: str, runs_dir: Path, results: Path) -> argparse.Namespace:
    """The command line of a study over seeds: --seeds, --workers, --threads, --runs-dir, --output, --extra."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--runs-dir", type=Path, default=runs_dir)
    parser.add_argument("--output", type=Path, default=results)
    parser.add_argument("--extra", nargs="*", default=[], help="more train.py overrides for every run (give it last)")
    return parser.parse_args()


def paired_summary(values: list[float], baseline: list[float] | None) -> dict[str, Any]:
    """Mean, sd and interval in points over seeds, and the paired difference from the baseline's runs."""
    stats = describe([100 * v for v in values])
    if baseline is not None:
        stats["minus_baseline"] = describe([100 * (v - b) for v, b in zip(values, baseline, strict=True)])
    return stats
