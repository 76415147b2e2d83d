"""Wall time of each training step, logged as train/seconds_per_step (and so in metrics.json, the last step's)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class StepTimer(L.Callback):
    """Seconds from the start of a training batch to the end of its optimiser step, on this rank.

    On a GPU the clock waits for the device first, so the time is the step's, not the kernel launches'.
    """

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.start = self.now(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pl_module.log(
            "train/seconds_per_step", self.now(pl_module.device) - self.start, on_step=True, on_epoch=False, batch_size=1
        )

    @staticmethod
    def now(device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
