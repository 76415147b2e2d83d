"""What `python eval.py` does: the map metrics of a model, off the shelf, from a checkpoint or from a training run's
checkpoints, on every test split."""

from __future__ import annotations

from synground.extras import require

require("train", "synground.evaluation")

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from synground.runs import best_checkpoint, checkpoints_dir
from synground.training import instantiate_group, readable_checkpoint, test_by_checkpoint, test_groups, write_metrics

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).exists():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no such file or directory (a .ckpt written by train.py, e.g. "
            "logs/train/runs/<date>/checkpoints/last.ckpt, or that run's directory)"
        )
    if ckpt_path and Path(ckpt_path).is_file() and (problem := readable_checkpoint(Path(ckpt_path))):
        raise ValueError(f"ckpt_path={ckpt_path} is not a whole checkpoint ({problem}): give another, e.g. last.ckpt")
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    if not datamodule.test_split_names:
        raise ValueError("the data config has no test splits: add one, e.g. +data.test.<name>=<shard directory>")
    if ckpt_path and Path(ckpt_path).is_dir():
        run = Path(ckpt_path)
        selection = getattr(datamodule, "val_split_of", {})
        groups = test_groups(datamodule.test_split_names, selection, str(best_checkpoint(run)), checkpoints_dir(run))
    else:
        groups = {ckpt_path or None: datamodule.test_split_names}
    log.info("model: %s%s", cfg.model.net._target_, f" with weights from {ckpt_path}" if ckpt_path else "")
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks, loggers = instantiate_group(cfg.get("callbacks")), instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    metrics = test_by_checkpoint(trainer, module, datamodule, groups)
    write_metrics(metrics, Path(cfg.paths.output_dir))
    return metrics
