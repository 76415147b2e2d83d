"""The pointing game (PROTOCOL.md section 3) as a DDP-synced metric, and the callback that runs it per split."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import Metric


def predicted_points(maps: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[B, 2] long (x, y): the pointing game's point of each map, the first maximum (row-major) of the map upsampled
    bicubically to its image's original (H, W) in `sizes` [B, 2], in that image's pixel coordinates.

    Items of the same original size are upsampled together (COCO and Flickr30k repeat a few sizes often).
    """
    points = torch.zeros(len(maps), 2, dtype=torch.long)
    size_list = [tuple(size) for size in sizes.tolist()]
    for height, width in dict.fromkeys(size_list):
        group = [index for index, size in enumerate(size_list) if size == (height, width)]
        upsampled = F.interpolate(maps[group][:, None].float(), size=(height, width), mode="bicubic", align_corners=False)
        flat_index = upsampled.flatten(1).argmax(dim=1).cpu()  # torch returns the first maximum in row-major order
        points[group] = torch.stack([flat_index % width, flat_index // width], dim=1)
    return points


def point_in_boxes(point: Sequence[float], boxes: Iterable[Sequence[float]]) -> bool:
    """The pointing game's hit: does (x, y) lie strictly inside any of the xyxy boxes?"""
    x, y = point
    return any(x0 < x < x1 and y0 < y < y1 for x0, y0, x1, y1 in boxes)


def pointing_game_hits(maps: torch.Tensor, boxes: list[torch.Tensor], sizes: torch.Tensor) -> torch.Tensor:
    """[B] bool: does each map's predicted point (`predicted_points`) lie strictly inside any of that item's xyxy
    boxes (original pixel coordinates)?"""
    points = predicted_points(maps, sizes).tolist()
    return torch.tensor(
        [point_in_boxes(point, item_boxes.tolist()) for point, item_boxes in zip(points, boxes)], dtype=torch.bool
    )


class PointingGame(Metric):
    """Fraction of items whose heat-map maximum falls strictly inside a ground-truth box."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, maps: torch.Tensor, boxes: list[torch.Tensor], sizes: torch.Tensor) -> None:
        hits = pointing_game_hits(maps, boxes, sizes)
        self.hits += int(hits.sum())
        self.total += len(hits)

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.total.clamp(min=1)


def split_names(trainer: L.Trainer, stage: str) -> list[str]:
    """The names of the `val` or `test` dataloaders: the datamodule's split names, else split0, split1, ..."""
    names = getattr(trainer.datamodule, f"{stage}_split_names", None) if trainer.datamodule is not None else None
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
    return list(names) if names else [f"split{index}" for index in range(count)]


class PointingGameCallback(L.Callback):
    """Logs `<stage>/pointing_game/<split>` for every evaluation split of the datamodule, their mean, and
    `<stage>/items/<split>`, the number of (sample, phrase) items scored.

    Expects the LightningModule's validation/test steps to return {"maps": [B, h, w]} and batches to carry
    `original_boxes` and `original_sizes`.
    """

    def __init__(self):
        self.metrics: dict[str, dict[str, PointingGame]] = {"val": {}, "test": {}}

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.metrics[stage] = {name: PointingGame().to(pl_module.device) for name in split_names(trainer, stage)}

    def _update(self, stage: str, outputs: Any, batch: dict[str, Any], dataloader_idx: int) -> None:
        metric = list(self.metrics[stage].values())[dataloader_idx]
        metric.update(outputs["maps"], batch["original_boxes"], batch["original_sizes"])

    def _end(self, pl_module: L.LightningModule, stage: str) -> None:
        values = {f"{stage}/pointing_game/{name}": metric.compute() for name, metric in self.metrics[stage].items()}
        if values:
            values[f"{stage}/pointing_game/mean"] = torch.stack(list(values.values())).mean()
            pl_module.log_dict(values, prog_bar=stage == "val")
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
