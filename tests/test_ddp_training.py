"""Training under DDP: two processes take the same steps as one, and every config trains without unused parameters."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import ROOT, SHORT, run_ok

pytestmark = pytest.mark.slow


def train_steps(model: str, devices: int, out: Path) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "support" / "ddp_train_steps.py"),
            "--model",
            model,
            "--devices",
            str(devices),
            "--out",
            str(out),
        ],
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("model", ["blip", "albef", "albef_selfeq"])
def test_two_ddp_processes_end_with_the_weights_of_one_process_accumulating_their_batches(model, tmp_path):
    """AMC on, dropout off, 3 steps; BLIP with ITC, ALBEF without (its projections then take no part in the loss);
    ALBEF with SelfEQ too (paraphrases, its second Grad-CAM and statistics pooled over each rank's batch)."""
    one, two = train_steps(model, 1, tmp_path / "one.pt"), train_steps(model, 2, tmp_path / "two.pt")
    assert one["steps"] == two["steps"] == 3
    unchanged = []
    for name, initial in one["initial"].items():
        if initial.is_floating_point():
            update = (one["weights"][name] - initial).norm()
            assert (two["weights"][name] - one["weights"][name]).norm() <= 1e-4 * update + 1e-6, name
            unchanged += [name] if update == 0 else []
    # every weight trained but the contrastive projections and temperature, frozen when ITC is off
    assert unchanged == (
        [] if model == "blip" else ["temp", "vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias"]
    )


def test_train_py_under_ddp_with_itc_off(tmp_path):
    """The default tiny BLIP trains ITM + AMC without ITC: its projections must not stop DDP at the second step."""
    run_ok("train.py", *SHORT, "trainer=ddp_cpu", "data.num_workers=0", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/global_step"] == 6 and math.isfinite(metrics["train/loss"])  # debug=limit: 2 epochs of 3 batches
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
