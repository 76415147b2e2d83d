"""What the data pipeline skipped, summed over an epoch and over every rank: `data/<reason>` for training and
`<stage>/data/<split>/<reason>` for each evaluation split (`val`, `test`).

Batches carry `data_issues` ({reason: count}, see `GroundingDataModule`): a training batch what was skipped while it
was built, an evaluation batch what was skipped before each of its items. Training counts every read (a corrupt
sample met in two passes counts twice); an evaluation split counts each sample once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import torch

from synground.callbacks.map_metrics import split_names


class DataIssueCounts(L.Callback):
    """Sums each batch's `data_issues` and logs the totals of all ranks at the end of each epoch."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, Counter[str]]] = {"train": {}, "val": {}, "test": {}}  # stage -> split -> counts

    def state_dict(self) -> dict[str, Any]:
        """The training epoch's counts so far: a run resumed mid-epoch goes on counting from them (Lightning does
        not start that epoch again, and starts every later one with on_train_epoch_start)."""
        return {name: dict(counts) for name, counts in self.counts["train"].items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts["train"] = {name: Counter(counts) for name, counts in state.items()}

    def _start(self, trainer: L.Trainer, stage: str) -> None:
        self.counts[stage] = {name: Counter() for name in (["train"] if stage == "train" else split_names(trainer, stage))}

    def _add(self, stage: str, batch: Any, dataloader_idx: int = 0) -> None:
        if isinstance(batch, dict) and self.counts[stage]:
            list(self.counts[stage].values())[dataloader_idx].update(batch.get("data_issues", {}))

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        totals = all_ranks(trainer, [dict(counts) for counts in self.counts[stage].values()])
        for name, counts in zip(self.counts[stage], totals):
            prefix = "data" if stage == "train" else f"{stage}/data/{name}"
            for reason, count in sorted(counts.items()):
                # the same keys and values on every rank (already summed): nothing to reduce, nobody waits
                pl_module.log(f"{prefix}/{reason}", float(count), on_step=False, on_epoch=True, batch_size=1)

    def on_train_epoch_start(self, trainer, pl_module):
        self._start(trainer, "train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._add("train", batch)

    def on_train_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "train")

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(trainer, "val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._add("val", batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(trainer, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._add("test", batch, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "test")


def all_ranks(trainer: L.Trainer, counts: list[dict[str, int]]) -> list[Counter[str]]:
    """Each position's counts summed over the ranks (the ranks may have met different reasons)."""
    gathered = [counts]
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, counts)
    return [sum((Counter(rank[index]) for rank in gathered), Counter()) for index in range(len(counts))]
