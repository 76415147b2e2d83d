"""The pointing game and the other map metrics (synground.models.map_metrics) per evaluation split, DDP-synced."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric

from synground.models.map_metrics import BOX_THRESHOLD, TOLERANCE, map_scores

PROPOSALS = "box_accuracy_proposals"  # scored only on items that carry candidate boxes


class GroundingMetrics(Metric):
    """Per metric, the mean over items of `map_scores`: hit rates, and the mean share of mass in the boxes.

    States are sums, added up over DDP ranks; `box_accuracy_proposals` averages over the items that had candidate
    boxes (`proposal_items`), and is absent from `compute()` when none had.
    """

    full_state_update = False
    higher_is_better = True
    names = ("pointing_game", "pointing_game_tolerant", "mass_in_box", "box_accuracy_map", PROPOSALS)

    def __init__(self, tolerance: float = TOLERANCE, box_threshold: float = BOX_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        self.tolerance, self.box_threshold = tolerance, box_threshold
        for name in self.names:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("proposal_items", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, maps: torch.Tensor, boxes: list[torch.Tensor], sizes: torch.Tensor, candidates: list[torch.Tensor] | None = None
    ) -> None:
        scores = map_scores(maps, boxes, sizes, candidates, self.tolerance, self.box_threshold)
        for name, values in scores.items():
            setattr(self, name, getattr(self, name) + values.double().sum().to(self.device))
        self.total += len(maps)
        if candidates is not None:
            self.proposal_items += len(maps)

    def compute(self) -> dict[str, torch.Tensor]:
        """Each metric's mean; nothing for a split where no item was scored (an empty set is not a score of 0)."""
        if self.total == 0:
            return {}
        values = {name: getattr(self, name) / self.total for name in self.names if name != PROPOSALS}
        if self.proposal_items > 0:
            values[PROPOSALS] = getattr(self, PROPOSALS) / self.proposal_items
        return {name: value.float() for name, value in values.items()}


def with_split_means(values: dict[str, Any]) -> dict[str, Any]:
    """`values` ({<stage>/<metric>/<split>: value}) and, for each map metric of GroundingMetrics, its mean over the
    splits that have it as <stage>/<metric>/mean (a tensor for tensor values)."""
    groups: dict[str, list[Any]] = {}
    for name, value in values.items():
        stage, metric, split = [*name.split("/", 2), "", ""][:3]
        if metric in GroundingMetrics.names and split != "mean":
            groups.setdefault(f"{stage}/{metric}/mean", []).append(torch.as_tensor(value))
    return {**values, **{name: torch.stack(group).mean() for name, group in groups.items()}}


def split_names(trainer: L.Trainer, stage: str) -> list[str]:
    """The names of the `val` or `test` dataloaders: the datamodule's split names, else split0, split1, ..."""
    names = getattr(trainer.datamodule, f"{stage}_split_names", None) if trainer.datamodule is not None else None
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
    return list(names) if names else [f"split{index}" for index in range(count)]


class GroundingMetricsCallback(L.Callback):
    """Logs `<stage>/<metric>/<split>` for every evaluation split and metric of `GroundingMetrics` (pointing_game,
    pointing_game_tolerant, mass_in_box, box_accuracy_map, and box_accuracy_proposals where the split has candidate
    boxes), each metric's mean over splits as `<stage>/<metric>/mean`, and `<stage>/items/<split>`, the number of
    (sample, phrase) items scored.

    Expects the LightningModule's validation/test steps to return {"maps": [B, h, w]} and batches to carry
    `original_boxes` and `original_sizes` (and `candidate_boxes` for box accuracy from proposals).
    """

    def __init__(self, tolerance: float = TOLERANCE, box_threshold: float = BOX_THRESHOLD):
        self.tolerance, self.box_threshold = tolerance, box_threshold
        self.metrics: dict[str, dict[str, GroundingMetrics]] = {"val": {}, "test": {}}

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.metrics[stage] = {
            name: GroundingMetrics(self.tolerance, self.box_threshold).to(pl_module.device)
            for name in split_names(trainer, stage)
        }

    def _update(self, stage: str, outputs: Any, batch: dict[str, Any], dataloader_idx: int) -> None:
        metric = list(self.metrics[stage].values())[dataloader_idx]
        metric.update(outputs["maps"], batch["original_boxes"], batch["original_sizes"], batch.get("candidate_boxes"))

    def _end(self, pl_module: L.LightningModule, stage: str) -> None:
        per_split = {name: metric.compute() for name, metric in self.metrics[stage].items()}
        if not per_split:
            return
        for split in [split for split, scores in per_split.items() if not scores]:
            rank_zero_warn(
                f"{stage} split {split}: no item was scored (its set is empty, or every sample was unreadable: see "
                f"data/skipped); its metrics are not reported and not in the {stage}/<metric>/mean"
            )
        values = with_split_means(
            {f"{stage}/{metric}/{split}": value for split, scores in per_split.items() for metric, value in scores.items()}
        )
        pl_module.log_dict({k: v for k, v in values.items() if k.startswith(f"{stage}/pointing_game/")}, prog_bar=stage == "val")
        pl_module.log_dict({k: v for k, v in values.items() if not k.startswith(f"{stage}/pointing_game/")})
        pl_module.log_dict(
            {f"{stage}/items/{name}": metric.total.float() for name, metric in self.metrics[stage].items()},
            sync_dist=True,
            reduce_fx="sum",
        )  # this rank's count (compute() restores local states)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module, "val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update("val", outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update("test", outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module):
        self._end(pl_module, "test")
