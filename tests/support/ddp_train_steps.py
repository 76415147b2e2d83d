"""Train a tiny grounding model a few steps under Lightning, on 2 DDP processes or on 1 with accumulated micro-batches.

    python tests/support/ddp_train_steps.py --model albef --devices 2 --out weights.pt
    python tests/support/ddp_train_steps.py --model albef --devices 1 --out weights.pt
    python tests/support/ddp_train_steps.py --model albef_selfeq --devices 2 --out weights.pt   (AMC + SelfEQ)

Step s of either run sees the same two micro-batches: rank r's batch under DDP is the single process's r-th
accumulated micro-batch. Negatives and ITC stay within each micro-batch (as in the AMC reference), so both runs take
the same gradient, the mean over the two micro-batches, and must end with the same weights. Plain SGD makes the
weights a direct record of the gradients: AdamW would hide a wrongly scaled gradient (its update ignores the scale)
and would turn the float noise of gradients that are exactly zero in theory (key biases: softmax ignores a shift)
into full steps of either sign. Each micro-batch holds
two distinct texts, so each positive has exactly one possible negative and no sampling can tell the runs apart;
dropout is off for the same reason (and so the attention kernels are the fused ones, as in evaluation).
Run by tests/test_ddp_training.py; Lightning's DDP launcher starts the second process by running this file again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the support package
from support import WORDS
from synground.models import AlbefGroundingModel, BlipGroundingModel, GroundingModule

TEXTS = [
    "the red circle",
    "the blue square",
    "the square on the left",
    "the circle on the right",
    "the blue circle",
    "the red square",
]
# SelfEQ's pairs (--model albef_selfeq): a distinct paraphrase per text, from the tiny vocabulary
PARAPHRASES = {text: f"{text} on the {'left' if index % 2 else 'right'}" for index, text in enumerate(TEXTS)}
PARAPHRASES.update(
    {"the square on the left": "the red square on the left", "the circle on the right": "the blue circle on the right"}
)


def micro_batches(steps: int, ranks: int = 2, size: int = 2, image_size: int = 64, paraphrases: bool = False) -> list[list[dict]]:
    """[step][rank] -> a batch as GroundingDataModule hands it to the model (normalised images, 0/1 masks; with
    `paraphrases`, each text's paraphrase)."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for step in range(steps):
        row = []
        for rank in range(ranks):
            first = (step * ranks + rank) * size
            masks = torch.zeros(size, 32, 32)
            for item in range(size):
                x, y = torch.randint(0, 16, (2,), generator=generator).tolist()
                masks[item, y : y + 16, x : x + 16] = 1
            texts = [TEXTS[(first + item) % len(TEXTS)] for item in range(size)]
            batch = {"images": torch.randn(size, 3, image_size, image_size, generator=generator), "masks": masks, "texts": texts}
            if paraphrases:
                batch["paraphrases"] = [PARAPHRASES[text] for text in texts]
            row.append(batch)
        batches.append(row)
    return batches


class SgdGroundingModule(GroundingModule):
    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)


def build_module(model: str) -> GroundingModule:
    torch.manual_seed(0)
    if model == "blip":  # ITC on: the projections train
        net = BlipGroundingModel.tiny(WORDS, image_size=64, vision_width=32, text_width=32, heads=2, vision_layers=2, dropout=0.0)
        return SgdGroundingModule(net, amc_weight=1.0, itc_weight=1.0, hard_negatives=True, lr=0.1)
    # ITC off: the projections take no part in the loss (the case that stopped DDP at its second step)
    net = AlbefGroundingModel.tiny(WORDS, image_size=64, vision_width=32, text_width=32, heads=2, vision_layers=2, dropout=0.0)
    selfeq = 1.0 if model == "albef_selfeq" else 0.0  # SelfEQ's batch statistics pool over each rank's batch
    return SgdGroundingModule(net, amc_weight=1.0, itc_weight=0.0, hard_negatives=True, lr=0.1, selfeq_weight=selfeq)


class StepBatches(torch.utils.data.Dataset):
    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.batches[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["blip", "albef", "albef_selfeq"], required=True)
    parser.add_argument("--devices", type=int, choices=[1, 2], required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    module = build_module(args.model)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices == 2 else "auto",
        max_steps=args.steps,
        accumulate_grad_batches=2 // args.devices,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batches = micro_batches(args.steps, paraphrases=args.model == "albef_selfeq")
    mine = [row[trainer.global_rank] for row in batches] if args.devices == 2 else [batch for row in batches for batch in row]
    trainer.fit(module, DataLoader(StepBatches(mine), batch_size=None, shuffle=False))
    if trainer.is_global_zero:
        torch.save(
            {
                "weights": module.net.state_dict(),
                "initial": build_module(args.model).net.state_dict(),
                "steps": trainer.global_step,
            },
            args.out,
        )


if __name__ == "__main__":
    main()
