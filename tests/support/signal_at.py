"""A callback for tests that stands in for Slurm: it sends its own process a signal at one point of training.

    python train.py ... +callbacks.signal._target_=tests.support.signal_at.SignalAt +callbacks.signal.hook=train_batch_end
                        +callbacks.signal.epoch=0 +callbacks.signal.batch=2 [+callbacks.signal.rank=1]

`hook` is train_batch_end or validation_batch_end; the signal goes out after that batch of that epoch, on one rank.
"""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    def __init__(self, hook: str, epoch: int, batch: int, rank: int = 0, signal_name: str = "SIGUSR1"):
        if hook not in ("train_batch_end", "validation_batch_end"):
            raise ValueError(f"hook must be train_batch_end or validation_batch_end, got {hook!r}")
        self.hook, self.epoch, self.batch, self.rank = hook, epoch, batch, rank
        self.signal = signal.Signals[signal_name]

    def _maybe_send(self, trainer: L.Trainer, hook: str, batch_idx: int) -> None:
        if (hook, trainer.current_epoch, batch_idx, trainer.global_rank) == (self.hook, self.epoch, self.batch, self.rank):
            os.kill(os.getpid(), self.signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._maybe_send(trainer, "train_batch_end", batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._maybe_send(trainer, "validation_batch_end", batch_idx)
