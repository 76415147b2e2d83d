"""What `python train.py` does: build everything from the config, fit, test, write metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_group(config: DictConfig | None) -> list[Any]:
    """Callbacks or loggers: every entry of the group that has a _target_."""
    return [hydra.utils.instantiate(entry) for entry in (config or {}).values() if entry is not None and "_target_" in entry]


def train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    log.info("data: %s", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info("model: %s", cfg.model.net._target_)
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks, loggers = instantiate_group(cfg.get("callbacks")), instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = scalar_metrics(trainer.callback_metrics, prefixes=("val/", "train/"))
    if cfg.get("test"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint: testing the final weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(scalar_metrics(trainer.callback_metrics, prefixes=("test/",)))
    write_metrics(metrics, Path(cfg.paths.output_dir))
    return metrics


def scalar_metrics(callback_metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    return {name: float(value) for name, value in callback_metrics.items() if name.startswith(prefixes)}


@rank_zero_only
def write_metrics(metrics: dict[str, float], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=2))
    print(results_table(metrics))
    print(f"metrics written to {output_dir / 'metrics.json'}")


def results_table(metrics: dict[str, float]) -> str:
    """Pointing game per split (with the number of items scored), or every metric when there is none."""
    rows = [(name, f"{value:.4f}", metrics.get(name.replace("/pointing_game/", "/items/"))) for name, value in sorted(metrics.items())
            if "/pointing_game/" in name]
    if not rows:
        rows = [(name, f"{value:.4f}", None) for name, value in sorted(metrics.items())]
    width = max([len(name) for name, _, _ in rows] + [6])
    lines = [f"{'metric':<{width}}  value   items", f"{'-' * width}  ------  -----"]
    lines += [f"{name:<{width}}  {value}  {'' if items is None else int(items)}" for name, value, items in rows]
    return "\n".join(lines)
