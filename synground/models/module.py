"""GroundingModule: fine-tunes a GroundingModel with ITM (hard negatives), optional ITC, and the attention-consistency
losses on Grad-CAM maps: AMC (boxes) and SelfEQ (paraphrases), alone or summed."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from synground.models.base import GroundingModel
from synground.models.gradcam import normalise_cam
from synground.models.losses import amc_loss, itc_loss, sample_hard_negatives, selfeq_loss, texts_equal


class GroundingModule(L.LightningModule):
    """total = L_itm + itc_weight * L_itc + amc_weight * L_amc + selfeq_weight * L_selfeq; amc_weight=0 and
    selfeq_weight=0 train ITM alone.

    SelfEQ (He et al., CVPR 2024) needs no boxes: items whose batch carries a paraphrase (batch["paraphrases"]) train
    the usual losses on the paraphrase, and L_selfeq = L_sim + 0.5 L_cst (synground.models.losses.selfeq_loss) asks
    the phrase's and the paraphrase's training maps (at the Grad-CAM grid) to agree and concentrate. As the released
    code does, it acts in the first `selfeq_epochs` epochs (1; None: every epoch) and later epochs train the usual
    losses on the phrases; items without a paraphrase train the usual losses only (counted: train/selfeq_pairs,
    train/selfeq_batches_without_pairs).

    ITM scores each positive pair, one negative image per text and one negative text per image. With
    `hard_negatives` the negatives are drawn from the softmax of the contrastive similarities (as ALBEF does);
    without, uniformly from the rest of the batch. Either way a negative never has the positive's exact text.

    Validation and test return the evaluation Grad-CAM maps ({"maps": [B, h, w]}) for callbacks such as the
    pointing game; they need `Trainer(inference_mode=False)` because the maps are gradients.
    """

    def __init__(
        self,
        net: GroundingModel,
        amc_weight: float = 1.0,
        itc_weight: float = 0.0,
        hard_negatives: bool = True,
        lr: float = 1e-5,
        weight_decay: float = 0.02,
        warmup_steps: int = 2000,
        warmup_start_lr: float = 1e-6,
        min_lr: float = 1e-6,
        selfeq_weight: float = 0.0,
        selfeq_tau: float = 0.8,
        selfeq_epochs: int | None = 1,
    ):
        super().__init__()
        for key, value, positive in (
            ("amc_weight", amc_weight, False),
            ("itc_weight", itc_weight, False),
            ("lr", lr, True),
            ("weight_decay", weight_decay, False),
            ("warmup_steps", warmup_steps, False),
            ("warmup_start_lr", warmup_start_lr, False),
            ("min_lr", min_lr, False),
            ("selfeq_weight", selfeq_weight, False),
            ("selfeq_tau", selfeq_tau, True),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value > 0 if positive else value >= 0):
                raise ValueError(f"model.{key}={value!r}: must be a number {'above 0' if positive else '0 or more'}")
        if selfeq_epochs is not None and (
            not isinstance(selfeq_epochs, int) or isinstance(selfeq_epochs, bool) or selfeq_epochs < 1
        ):
            raise ValueError(
                f"model.selfeq_epochs={selfeq_epochs!r}: the first epochs SelfEQ acts in, 1 or more (null: every epoch)"
            )
        self.save_hyperparameters(ignore=["net"], logger=False)  # train.py logs the whole resolved config once
        self.net = net
        if itc_weight == 0:
            # without ITC nothing trains the projections: a trainable parameter outside the loss stops DDP at its
            # second step (or needs find_unused_parameters, which costs a graph traversal every step)
            for parameter in net.contrastive_parameters():
                parameter.requires_grad_(False)

    def selfeq_acts(self) -> bool:
        epochs = self.hparams.selfeq_epochs
        return self.hparams.selfeq_weight > 0 and (epochs is None or self.current_epoch < epochs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        check_normalised(batch)
        texts = list(batch["texts"])
        selfeq = self.selfeq_acts()
        pairs = [index for index, paraphrase in enumerate(batch.get("paraphrases") or []) if paraphrase] if selfeq else []
        phrases = [texts[index] for index in pairs]
        for index in pairs:  # SelfEQ trains the usual losses on the paraphrase (uvavision/SelfEQ)
            texts[index] = batch["paraphrases"][index]
        encoded = self.net.encode_texts(self.net.tokenize(texts))
        image_embeds = self.net.encode_images(batch["images"])[image_rows(batch)]
        same_text = texts_equal(texts, device=self.device)
        losses = {}

        similarity = torch.zeros(len(texts), len(texts), device=self.device)  # uniform negatives unless hard_negatives
        if self.hparams.itc_weight > 0 or self.hparams.hard_negatives:
            with torch.set_grad_enabled(self.hparams.itc_weight > 0):
                features = self.net.contrastive_features(image_embeds, encoded)
            if features is None:
                raise ValueError(
                    f"{type(self.net).__name__} has no contrastive features: set itc_weight=0 and hard_negatives=false"
                )
            if self.hparams.itc_weight > 0:
                losses["itc"] = itc_loss(*features, self.net.temperature, same_text)
            if self.hparams.hard_negatives:
                similarity = features[0] @ features[1].t() / self.net.temperature

        if self.hparams.amc_weight > 0 or pairs:
            cam = self.net.gradcam(image_embeds, encoded, create_graph=True)
            positive_logits = cam.itm_logits
            if self.hparams.amc_weight > 0:
                losses["amc"] = amc_loss(normalise_cam(cam.maps, batch["masks"].shape[-1]), batch["masks"])
            if pairs:
                rows = torch.tensor(pairs, device=image_embeds.device)
                phrase_cam = self.net.gradcam(
                    image_embeds[rows], self.net.encode_texts(self.net.tokenize(phrases)), create_graph=True
                )
                grid = cam.maps.shape[-1]  # SelfEQ compares the maps on the Grad-CAM grid (16 x 16 for ALBEF)
                parts = selfeq_loss(
                    normalise_cam(phrase_cam.maps, grid), normalise_cam(cam.maps[rows], grid), tau=self.hparams.selfeq_tau
                )
                losses.update(selfeq=parts["total"], selfeq_sim=parts["sim"], selfeq_cst=parts["cst"])
        else:
            positive_logits = self.net.itm_logits(image_embeds, encoded)

        with torch.no_grad():
            negative_image = sample_hard_negatives(similarity.detach().t(), same_text)  # for each text
            negative_text = sample_hard_negatives(similarity.detach(), same_text)  # for each image
        negative_texts = {key: torch.cat([value, value[negative_text]]) for key, value in encoded.items()}
        negative_logits = self.net.itm_logits(torch.cat([image_embeds[negative_image], image_embeds]), negative_texts)
        logits = torch.cat([positive_logits, negative_logits])
        labels = torch.cat([torch.ones(len(texts)), torch.zeros(2 * len(texts))]).long().to(self.device)
        losses["itm"] = F.cross_entropy(logits, labels)

        loss = (
            losses["itm"]
            + self.hparams.itc_weight * losses.get("itc", 0.0)
            + self.hparams.amc_weight * losses.get("amc", 0.0)
            + self.hparams.selfeq_weight * losses.get("selfeq", 0.0)
        )
        batch_size = len(texts)
        if selfeq:  # how much SelfEQ saw, summed over the epoch and the ranks
            counts = {"train/selfeq_pairs": float(len(pairs)), "train/selfeq_batches_without_pairs": float(not pairs)}
            self.log_dict(counts, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=batch_size)
        self.log("train/itm_accuracy", (logits.argmax(1) == labels).float().mean(), batch_size=batch_size)
        return loss

    def evaluation_maps(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        check_normalised(batch)
        cam = self.net.evaluation_gradcam(batch["images"], batch["texts"], image_rows(batch))
        return {"maps": cam.maps, "itm_logits": cam.itm_logits}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self.evaluation_maps(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self.evaluation_maps(batch)

    def configure_optimizers(self):
        decay = [p for p in self.net.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.net.parameters() if p.requires_grad and p.ndim < 2]  # biases and norms
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        total = planned_steps(self.trainer)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: (
                warmup_cosine(
                    step, total, self.hparams.lr, self.hparams.warmup_steps, self.hparams.warmup_start_lr, self.hparams.min_lr
                )
                / self.hparams.lr
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def planned_steps(trainer: L.Trainer) -> int:
    """`trainer.estimated_stepping_batches` without touching the data when the datamodule knows its epoch length.

    Lightning computes the estimate by creating the training iterator, before a resumed run's loop state is
    restored: the stream would then replay the finished epoch's data instead of the next one.
    """
    per_epoch = getattr(trainer.datamodule, "batches_per_epoch", None)
    if trainer.max_steps > 0 or per_epoch is None or trainer.max_epochs in (None, -1):
        return max(int(trainer.estimated_stepping_batches), 1)
    limit = trainer.limit_train_batches
    per_epoch = min(per_epoch, limit) if isinstance(limit, int) else int(per_epoch * limit)
    return max(trainer.max_epochs * per_epoch // trainer.accumulate_grad_batches, 1)


def check_normalised(batch: dict[str, Any]) -> None:
    if batch["images"].dtype == torch.uint8:
        raise TypeError(
            "batch['images'] is uint8: GroundingDataModule normalises batches in on_after_batch_transfer, which "
            "Lightning calls; outside a Trainer call datamodule.on_after_batch_transfer(batch, 0) on each batch"
        )


def image_rows(batch: dict[str, Any]) -> torch.Tensor:
    """Each item's row in batch["images"] (collate stores an image shared by several phrases once); one row per item
    in a batch built without it."""
    if "image_index" in batch:
        return batch["image_index"]
    return torch.arange(len(batch["texts"]), device=batch["images"].device)


def warmup_cosine(step: int, total: int, lr: float, warmup_steps: int, warmup_start_lr: float, min_lr: float) -> float:
    """Linear warm-up from warmup_start_lr to lr, then cosine decay to min_lr at `total` steps."""
    if step < warmup_steps:
        return warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total - warmup_steps, 1), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
