"""The layout of a run directory, known here only. train.py (Hydra) writes one per run:

    <run>/.hydra/config.yaml      the run's whole config        <run>/.hydra/overrides.yaml   its command-line overrides
    <run>/checkpoints/            epoch*.ckpt (best by the selection metric) and last.ckpt
    <run>/metrics.json            every final metric, written when the run ends
    <run>/failed.json             {"error": ...} instead, when the run crashed

Each checkpoint also carries what loading its model needs of the run config (CHECKPOINT_CONFIG: `model` and the input
settings of `data`, resolved), so a checkpoint copied out of its run still loads (Grounder.load).

The offline demo's runs live in <log_dir>/shapes/runs/<date>/.
"""

from __future__ import annotations

from synground.extras import require

require("models", "synground.runs (reading a run directory)")

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
FAILURE = "failed.json"
CHECKPOINT_CONFIG = "synground_config"  # the checkpoint key of checkpoint_config(cfg)
INPUT_SETTINGS = ("image_size", "mean", "std")


def config_path(run: Path) -> Path:
    return Path(run) / CONFIG


def overrides_path(run: Path) -> Path:
    return Path(run) / OVERRIDES


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS


def metrics_path(run: Path) -> Path:
    return Path(run) / METRICS


def failure_path(run: Path) -> Path:
    return Path(run) / FAILURE


def checkpoint_config(cfg: DictConfig) -> dict:
    """What building and feeding a run's model needs of its config, resolved into plain values (so that
    `torch.load(weights_only=True)` reads it back): {"model": cfg.model, "data": the input settings present}."""
    data = cfg.get("data") or {}
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": {
            key: OmegaConf.to_container(data[key], resolve=True) if OmegaConf.is_config(data[key]) else data[key]
            for key in INPUT_SETTINGS
            if key in data
        },
    }


def run_config(checkpoint: Path) -> DictConfig:
    """The config of the train.py run that wrote `checkpoint` (<run>/checkpoints/x.ckpt -> <run>/.hydra/config.yaml)."""
    return OmegaConf.load(run_config_path(checkpoint))


def run_config_path(checkpoint: Path) -> Path:
    """<run>/.hydra/config.yaml of the run that wrote `checkpoint`: beside its checkpoints folder, or beside it."""
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        if config_path(run_dir).is_file():
            return config_path(run_dir)
    raise FileNotFoundError(
        f"no run config found for {checkpoint}: train.py keeps it in <run dir>/.hydra/config.yaml beside the checkpoints "
        "folder (newer checkpoints also carry it themselves); pass config=<that file> (or the run's experiment as "
        "model=... / data.image_size=...)"
    )


def demo_checkpoint(log_dir: str | Path = "logs") -> Path | None:
    """The best checkpoint of the newest finished offline demo run (`make demo`, `python train.py experiment=shapes`):
    <log_dir>/shapes/runs/<date>/checkpoints/epoch*.ckpt of a run that wrote metrics.json; None if there is none."""
    runs = sorted((Path(log_dir) / "shapes" / "runs").glob(f"*/{METRICS}"), reverse=True)
    for metrics in runs:
        best = sorted(checkpoints_dir(metrics.parent).glob("epoch*.ckpt"))
        if best:
            return best[-1]
    return None


def run_dir_of(checkpoint: Path) -> Path:
    """The train.py run directory of a checkpoint: <run>/checkpoints/x.ckpt, or the checkpoint's own folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def best_checkpoint(run: Path) -> Path:
    """A train.py run's checkpoint best on the mean validation pointing game (checkpoints/epoch*.ckpt), else its last."""
    best = sorted(checkpoints_dir(run).glob("epoch*.ckpt")) or sorted(checkpoints_dir(run).glob("last.ckpt"))
    if not best:
        raise FileNotFoundError(f"ckpt_path={run}: a directory, but not a train.py run with checkpoints/*.ckpt")
    return best[-1]
