"""What `python eval.py` does: pointing game of a model, off the shelf or from a checkpoint, on every test split."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from synground.training import instantiate_group, scalar_metrics, write_metrics

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no such file (a .ckpt written by train.py, e.g. "
            "logs/train/runs/<date>/checkpoints/last.ckpt)"
        )
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    if not datamodule.test_split_names:
        raise ValueError("the data config has no test splits: add one, e.g. +data.test.<name>=<shard directory>")
    log.info("model: %s%s", cfg.model.net._target_, f" with weights from {ckpt_path}" if ckpt_path else "")
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks, loggers = instantiate_group(cfg.get("callbacks")), instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path or None, weights_only=True)
    metrics = scalar_metrics(trainer.callback_metrics, prefixes=("test/",))
    write_metrics(metrics, Path(cfg.paths.output_dir))
    return metrics
