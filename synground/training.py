"""What `python train.py` does: build everything from the config, fit, test, write metrics.json."""

from __future__ import annotations

from synground.extras import require

require("train", "synground.training")

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from synground import runs
from synground.callbacks.map_metrics import GroundingMetrics, with_split_means
from synground.callbacks.requeue import Preempted, Requeue
from synground.data.shards import is_remote, manifest_of
from synground.files import save_atomic, write_atomic

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writing, made whole-or-absent on local disks: Lightning's own goes through fsspec's
    transaction, which writes into the system's temporary directory and, when that is another filesystem, copies the
    file into place, so a full disk or a kill leaves a truncated last.ckpt or requeue.ckpt under its final name.
    Here the file is written beside its destination and renamed (synground.files). Object stores keep Lightning's
    path, where an upload appears whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or is_remote(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            save_atomic(path, lambda file: torch.save(checkpoint, file))
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            raise OSError(f"cannot save the checkpoint {path} ({error}); any earlier file of that name is unchanged") from error


def readable_checkpoint(path: Path) -> str | None:
    """None if `path` is a whole checkpoint (torch.save's zip, whose index is at its end, opens), else what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def instantiate_group(config: DictConfig | None) -> list[Any]:
    """Callbacks or loggers: every entry of the group that has a _target_."""
    return [hydra.utils.instantiate(entry) for entry in (config or {}).values() if entry is not None and "_target_" in entry]


def run_or_record_failure(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one job. In a multirun (a sweep), a failing run writes failed.json into its directory and the sweep goes
    on with the next run; a single run fails as usual."""
    try:
        return job(cfg)
    except Exception as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("this run failed; the sweep goes on with the next one")
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(runs.failure_path(output_dir), json.dumps({"error": f"{type(error).__name__}: {error}"}, indent=2))
        return None


def train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    log.info("data: %s", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    if cfg.get("test"):
        datamodule.setup("test")  # a missing test set fails now, not after training
    log.info("model: %s", cfg.model.net._target_)
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks, loggers = instantiate_group(cfg.get("callbacks")), instantiate_group(cfg.get("logger"))
    selection = getattr(datamodule, "val_split_of", {})
    requeue = next((index for index, callback in enumerate(callbacks) if isinstance(callback, Requeue)), len(callbacks))
    callbacks[requeue:requeue] = selection_checkpoints(selection, checkpoint_dir(cfg))  # Requeue comes after checkpoints
    callbacks.append(ConfigInCheckpoints(cfg))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=trainer_plugins(cfg.trainer)
    )
    record_run(cfg, loggers)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg, callbacks), weights_only=True)
    except Preempted as stop:
        if trainer.global_rank == 0:
            stop.requeue()
        raise
    metrics = scalar_metrics(trainer.callback_metrics, prefixes=("val/", "train/", "data/"))
    metrics["train/global_step"] = float(trainer.global_step)
    write_metrics(metrics, Path(cfg.paths.output_dir), quiet=True)  # kept if testing fails
    if cfg.get("test"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint: testing the final weights")
        groups = test_groups(datamodule.test_split_names, selection, best or None, checkpoint_dir(cfg))
        metrics.update(test_by_checkpoint(trainer, module, datamodule, groups))
    write_metrics(metrics, Path(cfg.paths.output_dir))
    return metrics


def checkpoint_dir(cfg: DictConfig) -> Path:
    return runs.checkpoints_dir(Path(cfg.paths.output_dir))


class ConfigInCheckpoints(L.Callback):
    """Puts what loading the model needs of the run config (runs.checkpoint_config) into every checkpoint, so that a
    checkpoint copied out of its run directory still loads with Grounder.load."""

    def __init__(self, cfg: DictConfig):
        self.config = runs.checkpoint_config(cfg)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[runs.CHECKPOINT_CONFIG] = self.config


def selection_checkpoints(selection: dict[str, str], dirpath: Path) -> list[ModelCheckpoint]:
    """One ModelCheckpoint per validation split that `selection` ({test split: validation split}, the datamodule's
    `val_split_of`) names: checkpoints/best-<split>.ckpt, the weights best by val/pointing_game/<split>. AMC reports
    each benchmark with the checkpoint best on that benchmark's validation split."""
    return [
        ModelCheckpoint(
            dirpath=dirpath,
            filename=f"best-{split}",
            monitor=f"val/pointing_game/{split}",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        for split in dict.fromkeys(selection.values())
    ]


def test_groups(
    test_splits: list[str], selection: dict[str, str], default: str | None, dirpath: Path
) -> dict[str | None, list[str]]:
    """{checkpoint: the test splits it scores}: a selected split's best-<validation split>.ckpt in `dirpath`, `default`
    for the others (None: the weights as they are, tested first, before any checkpoint replaces them)."""
    groups: dict[str | None, list[str]] = {}
    for split in test_splits:
        path = str(dirpath / f"best-{selection[split]}.ckpt") if split in selection else default
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"test split {split}: no checkpoint {path} (did validation on {selection.get(split)} run?)")
        if path is not None and (problem := readable_checkpoint(Path(path))):
            raise ValueError(f"test split {split}: {path} is not a whole checkpoint ({problem}); train the run again")
        groups.setdefault(path, []).append(split)
    return dict(sorted(groups.items(), key=lambda group: group[0] is not None))


def test_by_checkpoint(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, groups: dict[str | None, list[str]]
) -> dict[str, float]:
    """Test each group of splits with its checkpoint; the per-split metrics of every group, and each metric's mean over
    all the splits (logged again, as each group's test logged the mean of its own splits)."""
    metrics: dict[str, float] = {}
    every_split = datamodule.test_sources
    for checkpoint, splits in groups.items():
        if len(groups) > 1:
            log.info("testing %s with %s", ", ".join(splits), checkpoint or "the weights as they are")
        datamodule.test_sources = {name: every_split[name] for name in splits}
        try:
            trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        finally:
            datamodule.test_sources = every_split
        metrics.update({k: v for k, v in scalar_metrics(trainer.callback_metrics, ("test/",)).items() if not k.endswith("/mean")})
    if len(groups) == 1:
        return scalar_metrics(trainer.callback_metrics, ("test/",))
    means = {name: float(value) for name, value in with_split_means(metrics).items() if name not in metrics}
    for logger in trainer.loggers:
        logger.log_metrics(means, step=trainer.global_step)
    return {**metrics, **means}


def trainer_plugins(trainer: DictConfig) -> list[Any]:
    """The trainer config's own plugins, with AtomicCheckpointIO unless one of them already writes checkpoints."""
    plugins = [hydra.utils.instantiate(plugin) for plugin in trainer.get("plugins") or []]
    return plugins if any(isinstance(plugin, CheckpointIO) for plugin in plugins) else [*plugins, AtomicCheckpointIO()]


def resume_path(cfg: DictConfig, callbacks: list[Any]) -> str | None:
    """`ckpt_path` when given, else the checkpoint a requeued run left in its run directory. A requeue checkpoint that
    is not whole (written by an older version, or damaged since) is set aside as requeue.ckpt.damaged and the run
    starts again rather than failing on every requeue; a damaged `ckpt_path` is an error naming it."""
    if cfg.get("ckpt_path"):
        problem = readable_checkpoint(Path(cfg.ckpt_path)) if not is_remote(str(cfg.ckpt_path)) else None
        if problem:
            raise ValueError(f"ckpt_path={cfg.ckpt_path} is not a whole checkpoint ({problem}): give another, e.g. last.ckpt")
        return cfg.ckpt_path
    found = next((path for callback in callbacks if isinstance(callback, Requeue) and (path := callback.resume_path())), None)
    if found and (problem := readable_checkpoint(Path(found))):
        damaged = Path(found).with_name(Path(found).name + ".damaged")
        os.replace(found, damaged)
        log.error("%s is not a whole checkpoint (%s): kept as %s; this run starts from the beginning", found, problem, damaged)
        return None
    if found:
        log.info("resuming from %s, left by this run when it was stopped to be requeued", found)
    return found


def wandb_logger(project: str, save_dir: str, offline: bool = False, **settings: Any) -> WandbLogger:
    """Lightning's WandbLogger that never prompts: without a W&B login (WANDB_API_KEY or `wandb login`) it logs
    offline, with a warning; `wandb sync <run dir>` uploads the run later.

    The W&B run id is derived from the run directory (unless `id` is given), so a run that is stopped and resumed in
    its directory (a requeued Slurm job) goes on logging into the same W&B run.
    """
    mode = os.environ.get("WANDB_MODE", "")
    if not offline and mode not in ("offline", "disabled", "dryrun") and not _wandb_credentials():
        log.warning(
            "W&B: no login found (set WANDB_API_KEY or run `wandb login`): logging offline under %s; "
            "upload later with `wandb sync`",
            save_dir,
        )
        offline = True
    settings.setdefault("id", hashlib.sha256(str(Path(save_dir).resolve()).encode()).hexdigest()[:16])
    settings.setdefault("resume", "allow")
    return WandbLogger(project=project, save_dir=save_dir, offline=offline, **settings)


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


@rank_zero_only
def record_run(cfg: DictConfig, loggers: list[Any]) -> None:
    """Log the resolved config once, and keep the manifests of the training shards with the run, so that a result
    traces back to the exact data it was trained on."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    manifests = training_manifests(cfg.data.get("train") or {})
    if not manifests:
        return
    folder = Path(cfg.paths.output_dir) / "data_manifests"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (domain, manifest) in enumerate(manifests):
        with fsspec.open(manifest, "rb") as source:  # a local file or an object-store URL alike
            (folder / f"{index}-{domain}-{manifest.rstrip('/').split('/')[-2]}.json").write_bytes(source.read())
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            artifact = wandb.Artifact(f"training-data-{logger.experiment.id}", type="dataset")
            artifact.add_dir(str(folder))
            logger.experiment.log_artifact(artifact)


def training_manifests(train: Any) -> list[tuple[str, str]]:
    """(domain, manifest.json path or URL) of every training shard set given by a directory, prefix or manifest."""
    found = []
    for domain in ("synthetic", "real"):
        sources = train.get(domain) or []
        for source in [sources] if isinstance(sources, str) else sources:
            manifest = manifest_of(source) if isinstance(source, str) else None
            if manifest is not None and (is_remote(manifest) or Path(manifest).is_file()):
                found.append((domain, manifest))
    return found


def scalar_metrics(callback_metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    return {name: float(value) for name, value in callback_metrics.items() if name.startswith(prefixes)}


@rank_zero_only
def write_metrics(metrics: dict[str, float], output_dir: Path, quiet: bool = False) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(runs.metrics_path(output_dir), json.dumps(dict(sorted(metrics.items())), indent=2))
    if quiet:
        return
    print(results_table(metrics))
    print(f"metrics written to {output_dir / 'metrics.json'}")


def results_table(metrics: dict[str, float]) -> str:
    """The map metrics as a table, a row per stage and split (with the number of items scored), a column per metric;
    every metric as a list when there is none."""
    cells: dict[str, dict[str, str]] = {}
    for name, value in sorted(metrics.items()):
        stage, metric, split = [*name.split("/", 2), "", ""][:3]
        if metric in GroundingMetrics.names:
            row = cells.setdefault(f"{stage}/{split}", {})
            row[metric] = f"{value:.4f}"
            items = metrics.get(f"{stage}/items/{split}")
            row["items"] = "" if items is None else str(int(items))
    if not cells:
        width = max([len(name) for name in metrics] + [6])
        return "\n".join(
            [f"{'metric':<{width}}  value"] + [f"{name:<{width}}  {value:.4f}" for name, value in sorted(metrics.items())]
        )
    columns = [name for name in GroundingMetrics.names if any(name in row for row in cells.values())] + ["items"]
    width = max(len(split) for split in cells)
    lines = ["  ".join([f"{'split':<{width}}", *columns])]
    for split, row in cells.items():
        lines.append("  ".join([f"{split:<{width}}", *(f"{row.get(column, '-'):>{len(column)}}" for column in columns)]))
    return "\n".join(lines)
