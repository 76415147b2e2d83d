"""Results of a sweep: every run's metrics.json against a swept config value, as a table and a PNG plot.

    python -m synground.results logs/shapes_mixing/multiruns/2026-11-22_10-00-00      # a Hydra multirun
    python -m synground.results "logs/train/runs/*" --x data.synthetic_ratio          # e.g. W&B sweep runs

Each run directory holds `.hydra/config.yaml` (the value of `--x` is read from it), and `metrics.json` or, for a run
that crashed, `failed.json`. Writes `<output>/results.md`, `results.json` and `pointing_game.png`.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from omegaconf import OmegaConf


def collect(run_dirs: list[Path], x: str) -> list[dict[str, Any]]:
    """One row per run: the swept value, its metrics (or its error), its directory; sorted by the value."""
    rows = []
    for run in run_dirs:
        config_path = run / ".hydra" / "config.yaml"
        if not config_path.is_file():
            continue  # not a run directory (e.g. the multirun's own files)
        value = OmegaConf.select(OmegaConf.load(config_path), x, default=None)
        row: dict[str, Any] = {"run": str(run), "x": value}
        if (run / "metrics.json").is_file():
            row["metrics"] = json.loads((run / "metrics.json").read_text())
        elif (run / "failed.json").is_file():
            row["error"] = json.loads((run / "failed.json").read_text())["error"]
        else:
            row["error"] = "no metrics.json (still running, or killed)"
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no run directory (with .hydra/config.yaml) among {[str(r) for r in run_dirs[:5]]}")
    return sorted(rows, key=lambda row: (row["x"] is None, row["x"] if row["x"] is not None else 0))


def pointing_game_metrics(rows: list[dict[str, Any]]) -> list[str]:
    names = {name for row in rows for name in row.get("metrics", {}) if "/pointing_game/" in name}
    return sorted(names, key=lambda name: (not name.startswith("test/"), name))


def table(rows: list[dict[str, Any]], x: str, metrics: list[str]) -> str:
    header = [x] + [name.replace("/pointing_game/", " ") for name in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            cells = [f"failed: {row['error'][:60]}"] + [""] * (len(metrics) - 1)
        else:
            cells = [f"{100 * row['metrics'][name]:.1f}%" if name in row["metrics"] else "" for name in metrics]
        lines.append("| " + " | ".join([str(row["x"]), *cells]) + " |")
    return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]], x: str, metrics: list[str]) -> None:
    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    done = [row for row in rows if "metrics" in row and isinstance(row["x"], (int, float))]
    for name in metrics:
        points = [(row["x"], 100 * row["metrics"][name]) for row in done if name in row["metrics"]]
        if points:
            axes.plot(*zip(*points), marker="o", label=name)
    axes.set(xlabel=x, ylabel="pointing game (%)", title="Pointing game against " + x)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path)


def summarize(runs: list[Path], x: str, output: Path) -> str:
    rows = collect(runs, x)
    metrics = pointing_game_metrics(rows)
    output.mkdir(parents=True, exist_ok=True)
    markdown = table(rows, x, metrics)
    (output / "results.md").write_text(markdown + "\n\n![pointing game](pointing_game.png)\n")
    (output / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(output / "pointing_game.png", rows, x, metrics)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description="Table and plot of a sweep's pointing game against a swept value.")
    parser.add_argument("runs", nargs="+", help="a multirun directory, or run directories / glob patterns")
    parser.add_argument("--x", default="data.synthetic_ratio", help="the swept config key (default data.synthetic_ratio)")
    parser.add_argument("--output", type=Path, help="where results.{md,json} and the plot go (default: the multirun directory)")
    args = parser.parse_args()
    runs = [Path(p) for pattern in args.runs for p in sorted(glob.glob(pattern))]
    if len(runs) == 1 and not (runs[0] / ".hydra").is_dir():  # a multirun directory: its numbered runs
        runs = sorted((p for p in runs[0].iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))
    if not runs:
        raise SystemExit(f"no directory matches {args.runs}")
    output = args.output or (runs[0].parent if len(args.runs) == 1 else Path("."))
    print(summarize(runs, args.x, output))
    print(f"written to {output / 'results.md'} and {output / 'pointing_game.png'}")


if __name__ == "__main__":
    main()
