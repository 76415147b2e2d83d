"""The GPU check's training callback (benchmarks/gpu_check.py), in a module of its own so that the check's orchestrator
and the parts that only launch train.py do not import Lightning (seconds per process)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import lightning as L
import torch

from gpu_check import now


class AmcBreakdown(L.Callback):
    """After training, on the last training batch and in the trainer's precision: forward + backward of the module's
    step three ways, `repeats` times interleaved (the median counts): as configured (ITM + AMC), with the Grad-CAM
    map detached (forward and Grad-CAM gradient, no double backward) and with amc_weight 0 (ITM only). Writes the
    seconds and peak memory of each to `path`. One process only (a DDP rank's extra backward would hang the others)."""

    def __init__(self, path: str, repeats: int = 3):
        self.path, self.repeats = Path(path), repeats
        self.batch: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch = batch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 or self.batch is None:
            return
        device = pl_module.device
        net, hparams = pl_module.net, pl_module.hparams
        gradcam, amc_weight, selfeq_weight = net.gradcam, hparams.amc_weight, hparams.selfeq_weight
        if amc_weight <= 0:
            raise ValueError(f"AmcBreakdown needs a run with AMC on (model.amc_weight={amc_weight})")

        def detached(*args: Any, **kwargs: Any) -> Any:
            cam = gradcam(*args, **kwargs)
            return dataclasses.replace(cam, maps=cam.maps.detach())

        variants = {
            "amc": {},
            "no_double_backward": {"gradcam": detached},
            "itm": {"amc_weight": 0.0},
        }
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        peaks: dict[str, float] = {}
        pl_module.log = pl_module.log_dict = lambda *args, **kwargs: None  # instance attributes, removed below
        try:
            for _ in range(self.repeats + 1):  # the first round warms each variant up
                for name, change in variants.items():
                    net.gradcam = change.get("gradcam", gradcam)
                    hparams.amc_weight, hparams.selfeq_weight = change.get("amc_weight", amc_weight), 0.0
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    start = now(device)
                    with trainer.precision_plugin.forward_context():
                        loss = pl_module.training_step(self.batch, 0)
                    loss.backward()
                    seconds[name].append(now(device) - start)
                    pl_module.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
        finally:
            del net.gradcam, pl_module.log, pl_module.log_dict
            hparams.amc_weight, hparams.selfeq_weight = amc_weight, selfeq_weight
        result = {
            name: {"seconds": statistics.median(times[1:]), "timings": times[1:], "peak_memory_gib": peaks.get(name)}
            for name, times in seconds.items()
        }
        self.path.write_text(json.dumps(result, indent=2) + "\n")
