"""How much each vision encoder knows of the study domains before any grounding: linear probes on its patch features.

    python benchmarks/encoder_transfer.py

For the tiny BLIP's vision encoder: random weights, the packaged encoders (synground/assets/, see manifest.json) and
one pretrained on the sketch world with image-level labels only (made here if missing, by the same command as the
packaged ones with --labels image). Per encoder and study style (clean, textured), `probe_transfer` trains a linear
probe on the patch features of 48 held-out scenes and scores it on 48 others: the covering shape's kind (4 classes,
the thing the grounding losses cannot teach a random ViT in the demo's budget) and colour (6). Writes
benchmarks/results/encoder_transfer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from safetensors import safe_open

from synground.conf import CONFIG_DIR
from synground.files import write_atomic
from synground.models.encoders import vision_weights_path
from synground.shapes.pretraining import probe_transfer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMAGE_LABELS = ROOT / "logs" / "benchmarks" / "encoders" / "disjoint_image_blip.safetensors"
ENCODERS = {
    "random weights": None,
    "sketch world, image-level kind labels": str(IMAGE_LABELS),
    "sketch world, a kind label per patch (synground:disjoint_dense)": "synground:disjoint_dense",
    "both study styles, kind and colour per patch (synground:both_dense, upper bound)": "synground:both_dense",
}


def about(weights: str | None, architecture: str) -> dict:
    if weights is None:
        return {}
    with safe_open(str(vision_weights_path(weights, architecture)), framework="pt") as file:
        made = json.loads(file.metadata()["about"])
    return {"command": made["command"], "steps": made["steps"], "held_out": made["history"][-1]}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="It takes no options.").parse_args()
    if not IMAGE_LABELS.is_file():
        command = [sys.executable, "-m", "synground.shapes.pretraining", "--world", "disjoint", "--labels", "image"]
        subprocess.run([*command, "--output", str(IMAGE_LABELS)], cwd=ROOT, check=True)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=["experiment=shapes"])
    rows = {}
    for name, weights in ENCODERS.items():
        torch.manual_seed(0)
        net = instantiate(config.model.net, vision_weights=weights)
        rows[name] = {"vision_weights": weights, **about(weights, net.architecture), "probes": probe_transfer(net)}
        print(name, rows[name]["probes"], flush=True)
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python benchmarks/encoder_transfer.py",
        "encoders": rows,
    }
    write_atomic(RESULTS / "encoder_transfer.json", json.dumps(record, indent=2) + "\n")
    write_atomic(RESULTS / "encoder_transfer.md", markdown(record) + "\n")


def markdown(record: dict) -> str:
    lines = [
        "| vision encoder (tiny BLIP) | clean: kind | clean: colour | textured: kind | textured: colour |",
        "|---|---|---|---|---|",
    ]
    for name, row in record["encoders"].items():
        probes = row["probes"]
        cells = [f"{100 * probes[f'{style}/{what}']:.1f}%" for style in ("clean", "textured") for what in ("kind", "colour")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
