"""A project of someone else's that depends on synground's core only (`pip install synground`): it trains a small
LightningModule of its own on GroundingDataModule and reads the same data in a plain PyTorch loop.

Run by benchmarks/consumer_install.py inside a fresh venv that holds the built wheel and nothing of this checkout;
it prints one JSON line with what it saw. Only the public API is used: synground.data and synground.shapes.
"""

from __future__ import annotations

import json
import sys
import typing

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import synground
from synground.data import (
    GeneratorSource,
    GroundingBatch,
    GroundingDataModule,
    GroundingTransform,
    MixedTrainStream,
    collate,
    normalize_images,
)
from synground.shapes import ShapesGenerator

IMAGE_SIZE = 64
STEPS = 30


class CentreRegressor(L.LightningModule):
    """Predicts the centre of each phrase's first box from the image alone: a model of this project's own design."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
        )
        self.losses: list[float] = []

    def training_step(self, batch: GroundingBatch, batch_index: int) -> torch.Tensor:
        images = normalize_images(batch["images"])[batch["image_index"]]
        centres = torch.stack([(boxes[0, :2] + boxes[0, 2:]) / 2 for boxes in batch["boxes"]]) / IMAGE_SIZE
        loss = F.mse_loss(self.net(images), centres)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def check_batch(batch: dict, where: str) -> None:
    """Every key of the batch is declared in GroundingBatch, and the declared ones have the documented types."""
    declared = typing.get_type_hints(GroundingBatch)
    undeclared = set(batch) - set(declared)
    assert not undeclared, f"{where}: keys not in GroundingBatch: {sorted(undeclared)}"
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE), where
    assert batch["image_index"].dtype == torch.int64 and len(batch["texts"]) == len(batch["boxes"]), where
    assert all(boxes.shape[-1] == 4 and boxes.dtype == torch.float32 for boxes in batch["boxes"]), where


def main() -> None:
    torch.manual_seed(0)
    shapes = ShapesGenerator(image_size=IMAGE_SIZE)
    datamodule = GroundingDataModule(
        train={"synthetic": shapes},
        test={"shapes": GeneratorSource(shapes, num_samples=8, seed=7)},
        synthetic_ratio=1.0,
        image_size=IMAGE_SIZE,
        batch_size=8,
        batches_per_epoch=STEPS,
        num_workers=1,
    )
    model = CentreRegressor()
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=datamodule)
    check_batch(next(iter(datamodule.train_dataloader())), "train_dataloader")
    (test_loader,) = datamodule.test_dataloader()

    # the same data without Lightning's trainer: the stream and collate in torch's own DataLoader
    stream = MixedTrainStream([GeneratorSource(shapes)], [], 1.0, GroundingTransform(IMAGE_SIZE), 4, 2, seed=1)
    plain = [
        *DataLoader(stream, batch_size=None, num_workers=1),
        *DataLoader(test_loader.dataset, batch_size=16, collate_fn=collate),
    ]
    for index, batch in enumerate(plain):
        check_batch(batch, f"plain loop batch {index}")

    first, last = sum(model.losses[:5]) / 5, sum(model.losses[-5:]) / 5
    print(
        json.dumps(
            {
                "synground": synground.__file__,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "lightning": L.__version__,
                "steps": trainer.global_step,
                "loss_first_5": first,
                "loss_last_5": last,
                "plain_batches": len(plain),
            }
        )
    )


if __name__ == "__main__":
    main()
