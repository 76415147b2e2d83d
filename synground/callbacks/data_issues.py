"""What the data pipeline skipped, summed over an epoch and over every rank: `data/<reason>` for training and
`<stage>/data/<split>/<reason>` for each evaluation split (`val`, `test`).

Training batches carry `data_faults` (which shard, sample, region each skip was, see `GroundingDataModule`) and
`data_issues` ({reason: count} of skips with no name): what was skipped while each was built, taken once the model
has trained on it (a run resumed mid-epoch counts no batch twice). A training epoch counts each bad sample once,
however many passes over it its workers made and however many workers and ranks met it: the named faults of all
ranks are united before they are counted. An evaluation split's loader (`EvalLoader`) keeps what its workers skipped
over the pass, which may have no batch at all: a worker or a rank whose share was all unreadable still reports; an
evaluation split counts each sample once, whatever the number of workers and ranks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import torch

from synground.callbacks.map_metrics import split_names


class DataIssueCounts(L.Callback):
    """Sums each training batch's `data_issues` and takes each evaluation loader's; logs the totals of all ranks at the
    end of each epoch."""

    def __init__(self) -> None:
        self.train_counts: Counter[str] = Counter()
        self.train_faults: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """The training epoch's counts so far: a run resumed mid-epoch goes on counting from them (Lightning does
        not start that epoch again, and starts every later one with on_train_epoch_start)."""
        return {"train": dict(self.train_counts), "train_faults": sorted(self.train_faults)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_counts = Counter(state.get("train", {}))
        self.train_faults = set(state.get("train_faults", []))

    def on_train_epoch_start(self, trainer, pl_module):
        self.train_counts, self.train_faults = Counter(), set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if isinstance(batch, dict):
            self.train_counts.update(batch.get("data_issues", {}))
            self.train_faults.update(batch.get("data_faults", []))

    def on_train_epoch_end(self, trainer, pl_module):
        faults = set().union(*all_ranks_objects(trainer, sorted(self.train_faults)))
        named = Counter(fault.split(" ", 1)[0] for fault in faults)
        [counted] = all_ranks(trainer, [dict(self.train_counts)])
        _log(trainer, pl_module, {"data": counted + named}, summed=True)

    def on_validation_epoch_end(self, trainer, pl_module):
        _log(trainer, pl_module, _eval_counts(trainer, "val"))

    def on_test_epoch_end(self, trainer, pl_module):
        _log(trainer, pl_module, _eval_counts(trainer, "test"))


def _eval_counts(trainer: L.Trainer, stage: str) -> dict[str, Counter[str]]:
    """{`<stage>/data/<split>`: what the split's loader skipped over its pass}."""
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    return {
        f"{stage}/data/{name}": Counter(getattr(loader, "data_issues", {}))
        for name, loader in zip(split_names(trainer, stage), loaders)
    }


def _log(trainer: L.Trainer, pl_module: L.LightningModule, counts: dict[str, Counter[str]], summed: bool = False) -> None:
    totals = list(counts.values()) if summed else all_ranks(trainer, [dict(c) for c in counts.values()])
    for prefix, total in zip(counts, totals):
        for reason, count in sorted(total.items()):
            # the same keys and values on every rank (already summed): nothing to reduce, nobody waits
            pl_module.log(f"{prefix}/{reason}", float(count), on_step=False, on_epoch=True, batch_size=1)


def all_ranks(trainer: L.Trainer, counts: list[dict[str, int]]) -> list[Counter[str]]:
    """Each position's counts summed over the ranks (the ranks may have met different reasons)."""
    gathered = all_ranks_objects(trainer, counts)
    return [sum((Counter(rank[index]) for rank in gathered), Counter()) for index in range(len(counts))]


def all_ranks_objects(trainer: L.Trainer, value: Any) -> list[Any]:
    """`value` of every rank (this rank's alone outside DDP)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered
    return [value]
