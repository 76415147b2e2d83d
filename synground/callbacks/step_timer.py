"""Wall time of each training step, logged as train/seconds_per_step (and so in metrics.json, the last step's); on a GPU
also the step's peak memory, train/peak_memory_gib."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class StepTimer(L.Callback):
    """Seconds from the start of a training batch to the end of its optimiser step, on this rank.

    On a GPU the clock waits for the device first, so the time is the step's, not the kernel launches'; and the
    largest memory allocated by tensors during the step (torch.cuda.max_memory_allocated, reset as the step starts) is
    logged as train/peak_memory_gib, the figure that says whether a larger batch fits.
    """

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.start = self.now(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logged = {"train/seconds_per_step": self.now(pl_module.device) - self.start}
        if pl_module.device.type == "cuda":
            logged["train/peak_memory_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(logged, on_step=True, on_epoch=False, batch_size=1)

    @staticmethod
    def now(device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
