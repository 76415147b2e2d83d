"""What many tests share: the repository's root, the tiny models, running the commands as a user does, and (in this
package's modules) writers of upstream dataset formats, released-checkpoint layouts, an S3 server, a Slurm cluster.

Tests import it as `support` (pytest puts tests/ on sys.path); scripts that tests start put tests/ there themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "red", "blue", "circle", "square", "on", "left", "right"]
# one epoch, one validation and one test batch per split, in the main process: train.py's whole path, quickly
ONE_EPOCH = ["trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.num_workers=0"]
# the offline demo cut short (debug=limit) with small evaluation splits
SHORT = [
    "experiment=shapes",
    "debug=limit",
    "data.test.shapes_clean.num_samples=20",
    "data.test.shapes_textured.num_samples=20",
    "data.val.shapes_textured.num_samples=20",
]


def run(script: str, *arguments: str, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python <ROOT>/<script> <arguments>` as a user runs it (no stdin), its output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def run_ok(script: str, *arguments: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`run`, which must exit 0; a failure shows the end of its stderr."""
    result = run(script, *arguments, cwd=cwd, env=env)
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def generate_shapes(output: Path, style: str, count: int, samples_per_shard: int, *overrides: str) -> None:
    """`python generate.py generation=shapes` at 64 px: `count` scenes of `style` into the shard set `output`, its run
    directory beside it (gen-<name>)."""
    run_ok(
        "generate.py",
        "generation=shapes",
        f"generation.generator.style={style}",
        "generation.generator.image_size=64",
        f"generation.num_samples={count}",
        f"generation.samples_per_shard={samples_per_shard}",
        f"output_dir={output}",
        f"hydra.run.dir={output.parent}/gen-{output.name}",
        *overrides,
        cwd=output.parent,
    )


def tiny_blip():
    from synground.models import BlipGroundingModel

    torch.manual_seed(0)
    return BlipGroundingModel.tiny(WORDS, image_size=64, vision_width=32, text_width=32, heads=2, vision_layers=2, text_layers=3)


def tiny_albef():
    from synground.models import AlbefGroundingModel

    torch.manual_seed(0)
    return AlbefGroundingModel.tiny(
        WORDS,
        image_size=64,
        vision_width=32,
        text_width=32,
        heads=2,
        vision_layers=2,
        text_layers=4,
        fusion_layer=1,
        gradcam_layer=2,
    )
