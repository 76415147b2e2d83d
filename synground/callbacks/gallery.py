"""A Grad-CAM gallery: for the first items of every evaluation split, the image, its heat map, the ground-truth
boxes and the predicted point, as a PNG grid in the run directory and as images with boxes in W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from synground.models.map_metrics import pointing_game_hits, predicted_points
from synground.models.module import image_rows


class GradCamGallery(L.Callback):
    """Reuses the maps the evaluation step already computed (no extra forward pass). The items are the first
    `items_per_split` of each split on rank 0: evaluation splits come in a fixed order, so the set is the same at
    every epoch and the gallery shows how one set of maps evolves."""

    def __init__(self, items_per_split: int = 8, columns: int = 4, every_n_epochs: int = 1):
        self.items_per_split, self.columns, self.every_n_epochs = items_per_split, columns, every_n_epochs
        self.collected: dict[int, list[dict[str, Any]]] = {}

    def _start(self) -> None:
        self.collected = {}

    def _collect(self, trainer: L.Trainer, outputs: Any, batch: dict[str, Any], dataloader_idx: int) -> None:
        items = self.collected.setdefault(dataloader_idx, [])
        if trainer.global_rank != 0 or len(items) >= self.items_per_split:
            return
        take = min(self.items_per_split - len(items), len(batch["texts"]))
        hits = pointing_game_hits(outputs["maps"][:take], batch["original_boxes"][:take], batch["original_sizes"][:take])
        rows = image_rows(batch)
        for index in range(take):
            items.append(
                {
                    "image": batch["images"][rows[index]].detach().float().cpu(),
                    "map": outputs["maps"][index].float().cpu(),
                    "text": batch["texts"][index],
                    "boxes": batch["original_boxes"][index].cpu(),
                    "size": tuple(batch["original_sizes"][index].tolist()),
                    "hit": bool(hits[index]),
                }
            )

    def _end(self, trainer: L.Trainer, stage: str) -> None:
        if trainer.global_rank != 0 or not self.collected:
            return
        if stage == "val" and (trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs):
            return
        names = _split_names(trainer, stage)
        datamodule = trainer.datamodule
        mean = getattr(datamodule, "mean", (0.0, 0.0, 0.0))
        std = getattr(datamodule, "std", (1.0, 1.0, 1.0))
        for index, items in sorted(self.collected.items()):
            split = names[index] if index < len(names) else f"split{index}"
            panels = [render_panel(item, mean, std) for item in items]
            if trainer.default_root_dir:
                path = Path(trainer.default_root_dir) / "gallery" / f"{stage}_{split}_epoch{trainer.current_epoch:03d}.png"
                save_grid(path, panels, items, self.columns, f"{stage} {split}, epoch {trainer.current_epoch}")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.log(
                        {
                            f"gallery/{stage}/{split}": [wandb_image(p, item) for p, item in zip(panels, items)],
                            "trainer/global_step": trainer.global_step,
                        }
                    )

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(trainer, outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end(trainer, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(trainer, outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module):
        self._end(trainer, "test")


def _split_names(trainer: L.Trainer, stage: str) -> list[str]:
    names = getattr(trainer.datamodule, f"{stage}_split_names", None) if trainer.datamodule is not None else None
    return list(names or [])


def render_panel(item: dict[str, Any], mean, std) -> dict[str, Any]:
    """The model-input image in [0, 1], its heat map blended over it, and boxes and point in its pixel coordinates."""
    image = (item["image"] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    side = image.shape[-1]
    heat = F.interpolate(item["map"][None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-7)
    coloured = torch.from_numpy(colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    overlay = (0.55 * image + 0.45 * coloured).permute(1, 2, 0).numpy()
    height, width = item["size"]
    x, y = predicted_points(item["map"][None], torch.tensor([[height, width]]))[0].tolist()
    scale = torch.tensor([side / width, side / height] * 2)
    return {
        "overlay": (overlay * 255).round().astype(np.uint8),
        "boxes": (item["boxes"] * scale).tolist(),
        "point": ((x + 0.5) * side / width, (y + 0.5) * side / height),
    }


def save_grid(path: Path, panels: list[dict[str, Any]], items: list[dict[str, Any]], columns: int, title: str) -> None:
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(2.6 * columns, 2.9 * rows), dpi=100, layout="constrained")
    figure.suptitle(title)
    for axes, panel, item in zip(figure.subplots(rows, columns, squeeze=False).flat, panels, items):
        axes.imshow(panel["overlay"])
        for x0, y0, x1, y1 in panel["boxes"]:
            axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
        axes.plot(*panel["point"], marker="x", color="white" if item["hit"] else "red", markersize=9, markeredgewidth=2)
        axes.set_title(f"{'hit' if item['hit'] else 'miss'}: {item['text'][:40]}", fontsize=8)
    for axes in figure.axes:
        axes.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def wandb_image(panel: dict[str, Any], item: dict[str, Any]):
    import wandb

    side = panel["overlay"].shape[0]
    boxes = [
        {"position": {"minX": x0 / side, "minY": y0 / side, "maxX": x1 / side, "maxY": y1 / side}, "class_id": 0}
        for x0, y0, x1, y1 in panel["boxes"]
    ]
    px, py = panel["point"]
    point = [{"position": {"middle": [px / side, py / side], "width": 0.04, "height": 0.04}, "class_id": 1}]
    return wandb.Image(
        panel["overlay"],
        caption=f"{'hit' if item['hit'] else 'miss'}: {item['text']}",
        boxes={
            "ground_truth": {"box_data": boxes, "class_labels": {0: "box"}},
            "prediction": {"box_data": point, "class_labels": {1: "point"}},
        },
    )
