"""Stopping on a cluster's requeue signal and resuming: the resumed run ends with the metrics of an uninterrupted one.

The signal is sent by tests/support/signal_at.py from inside the run, at an exact point (mid-epoch, on an epoch's last batch,
during validation; on one DDP rank only); tests/test_slurm.py sends it through a real Slurm.
"""

import json
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from support import run, run_ok
from support.resume import TWO_EPOCHS, assert_same_metrics
from support.signal_at import SignalAt
from synground.callbacks.requeue import Preempted, Requeue


def signal_at(hook: str, epoch: int, batch: int, rank: int = 0) -> list[str]:
    return [
        "+callbacks.signal._target_=tests.support.signal_at.SignalAt",
        f"+callbacks.signal.hook={hook}",
        f"+callbacks.signal.epoch={epoch}",
        f"+callbacks.signal.batch={batch}",
        f"+callbacks.signal.rank={rank}",
    ]


def interrupt_and_resume(tmp_path: Path, name: str, overrides: list[str], stop: list[str], stopped_at_step: int) -> dict:
    """Run until the signal stops it, check where it stopped, rerun the same run; the resumed run's metrics."""
    run_dir = tmp_path / name
    stopped = run("train.py", *overrides, *stop, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    assert not (run_dir / "metrics.json").exists()
    checkpoint = torch.load(run_dir / "checkpoints" / "requeue.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == stopped_at_step
    assert "resume with the same command" in stopped.stdout + stopped.stderr

    resumed = run_ok("train.py", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert f"resuming from {run_dir}/checkpoints/requeue.ckpt" in resumed.stdout + resumed.stderr
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    run_ok("train.py", *TWO_EPOCHS, "data.num_workers=2", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, stop, step",
    [
        # mid-epoch: the signal comes at the end of step 3 and training stops there, after 3 of the epoch's 6 batches
        # (dealt to 2 data workers: the resumed loader starts with the other worker's batch)
        ("mid_epoch", signal_at("train_batch_end", epoch=0, batch=2), 3),
        # an epoch's last batch and its validation come first: it stops at the start of the next epoch
        ("last_batch", signal_at("train_batch_end", epoch=0, batch=5), 6),
        ("validation", signal_at("validation_batch_end", epoch=0, batch=0), 6),
    ],
)
def test_a_run_stopped_by_the_requeue_signal_resumes_to_the_metrics_of_an_uninterrupted_run(
    tmp_path, uninterrupted, where, stop, step
):
    resumed = interrupt_and_resume(tmp_path, where, [*TWO_EPOCHS, "data.num_workers=2"], stop, stopped_at_step=step)
    assert_same_metrics(resumed, uninterrupted)


@pytest.mark.slow
def test_two_ddp_ranks_stop_at_the_same_step_when_only_one_gets_the_signal(tmp_path):
    overrides = [*TWO_EPOCHS, "trainer=ddp_cpu", "data.num_workers=1"]
    run_ok("train.py", *overrides, f"hydra.run.dir={tmp_path}/straight", cwd=tmp_path)
    # rank 1 alone is signalled, in the second epoch: both ranks save step 6 + 2 and stop
    resumed = interrupt_and_resume(tmp_path, "ddp", overrides, signal_at("train_batch_end", epoch=1, batch=1, rank=1), 8)
    assert_same_metrics(resumed, json.loads((tmp_path / "straight" / "metrics.json").read_text()))


def test_a_run_resumed_in_its_directory_logs_into_the_same_wandb_run(tmp_path, monkeypatch):
    from synground.training import wandb_logger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    first, resumed, other = (wandb_logger("synground", str(tmp_path / name)) for name in ("run", "run", "other"))
    assert first.version == resumed.version != other.version
    assert wandb_logger("synground", str(tmp_path / "run"), id="chosen").version == "chosen"


class Regression(L.LightningModule):
    """The smallest module with a validation score: Requeue's ordering against ModelCheckpoint, in-process."""

    def __init__(self, validate: bool):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        if not validate:
            self.validation_step = None  # Lightning then runs no validation

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, module: L.LightningModule, checkpoint: ModelCheckpoint, *callbacks: L.Callback) -> L.Trainer:
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[*callbacks, checkpoint, Requeue(tmp_path)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data if module.validation_step else None)
    return trainer


def test_a_run_requeued_in_its_first_validation_has_saved_that_epochs_best_checkpoint(tmp_path):
    # a ModelCheckpoint as a user writes it, save_on_train_epoch_end unset: Lightning would save after validation
    # ends, at the epoch's end, which the requeue stop never reaches
    best = ModelCheckpoint(tmp_path / "best", "{epoch}", monitor="val/score", mode="max")
    with pytest.raises(Preempted):
        fit(tmp_path, Regression(validate=True), best, SignalAt("validation_batch_end", epoch=0, batch=1))
    assert [path.name for path in (tmp_path / "best").iterdir()] == ["epoch=0.ckpt"]
    assert best.best_model_path.endswith("epoch=0.ckpt")
    assert torch.load(tmp_path / Requeue.FILENAME, weights_only=True)["global_step"] == 4


def test_without_validation_checkpoints_are_still_saved_at_every_epochs_end(tmp_path):
    every = ModelCheckpoint(tmp_path / "every", "{epoch}", save_top_k=-1)
    fit(tmp_path, Regression(validate=False), every)
    assert sorted(path.name for path in (tmp_path / "every").iterdir()) == ["epoch=0.ckpt", "epoch=1.ckpt"]


def test_a_checkpoint_set_to_save_at_the_epochs_end_is_refused(tmp_path):
    late = ModelCheckpoint(tmp_path / "late", monitor="val/score", mode="max", save_on_train_epoch_end=True)
    with pytest.raises(ValueError, match="save_on_train_epoch_end=True"):
        fit(tmp_path, Regression(validate=True), late)
