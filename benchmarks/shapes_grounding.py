"""What AMC adds on the shapes world: pointing game of ITM + AMC, ITM alone, and a random point, one run.

    python benchmarks/shapes_grounding.py        (or `make benchmark`)

Trains `experiment=shapes` twice through train.py (amc_weight 1 and 0) on the same data and seed, evaluates both
on the held-out test splits, scores uniformly random points on the same splits, and writes
benchmarks/results/shapes_grounding.{json,md}.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "logs" / "benchmarks"


def train(name: str, *overrides: str) -> dict:
    run_dir = RUNS / name
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=shapes", *overrides, f"hydra.run.dir={run_dir}"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"seconds": round(time.perf_counter() - start, 1), **metrics}


def random_point_baseline(draws: int = 5) -> dict:
    """Uniformly random points on the same test splits, averaged over `draws` seeds."""
    from synground.callbacks import PointingGame

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=shapes", "data.num_workers=0"])
    datamodule = instantiate(cfg.data)
    results = {}
    for name, loader in zip(datamodule.test_split_names, datamodule.test_dataloader()):
        batches = list(loader)
        scores = []
        for draw in range(draws):
            generator = torch.Generator().manual_seed(draw)
            metric = PointingGame()
            for batch in batches:
                height, width = batch["original_sizes"][0].tolist()  # one size per split in the shapes world
                metric.update(torch.rand(len(batch["texts"]), height, width, generator=generator), batch["original_boxes"],
                              batch["original_sizes"])
            scores.append(metric.compute().item())
        results[f"test/pointing_game/{name}"] = sum(scores) / len(scores)
    return results


def main() -> None:
    rows = {
        "ITM + AMC (amc_weight=1)": train("amc"),
        "ITM only (amc_weight=0)": train("itm_only", "model.amc_weight=0"),
        "random point": random_point_baseline(),
    }
    record = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "command": "python benchmarks/shapes_grounding.py", "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shapes_grounding.json").write_text(json.dumps(record, indent=2))
    splits = ["shapes_clean", "shapes_textured"]
    lines = ["| method | " + " | ".join(f"test {s}" for s in splits) + " | wall time |", "|---" * (len(splits) + 2) + "|"]
    for method, metrics in rows.items():
        cells = [f"{100 * metrics[f'test/pointing_game/{s}']:.1f}%" for s in splits]
        seconds = f"{metrics['seconds'] / 60:.1f} min" if "seconds" in metrics else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds} |")
    table = "\n".join(lines)
    (RESULTS / "shapes_grounding.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
