"""Surviving a cluster's time limit: on the signal Slurm sends before it stops a job, save a checkpoint at the next
optimiser step, ask Slurm to run the job again, and let the rerun resume from that checkpoint exactly.

Slurm sends the signal `--signal=USR1@<seconds>` asks for (submitit, behind `hydra/launcher=slurm`, asks for USR2)
to every task of the job. The handler only notes it: a checkpoint taken inside a step would hold half an
optimiser update, and under DDP the ranks get the signal at different moments, so they decide together at the next
step boundary and all save the same step. A rerun of the same run (`train.py` in the same run directory: the
requeued Slurm job) finds the checkpoint and resumes from it; the data stream picks up at the next batch.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """Training stopped on a requeue signal after saving `checkpoint`. A SystemExit (status 128 + signal, as a
    process the signal had ended): a run stopped to be requeued has not failed, and a sweep records no failure."""

    def __init__(self, received: signal.Signals, checkpoint: Path):
        super().__init__(128 + received)
        self.received, self.checkpoint = received, checkpoint

    def requeue(self) -> None:
        """Ask Slurm to run this job again (call it on rank 0 only); outside Slurm, say how to resume."""
        job = slurm_job_id()
        if job is None:
            log.warning(
                "stopped on %s: resume with the same command and hydra.run.dir=%s, or ckpt_path=%s",
                self.received.name,
                self.checkpoint.parent.parent,
                self.checkpoint,
            )
            return
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            log.error(
                "stopped on %s, but `scontrol requeue %s` failed: %s; resubmit the same job to resume from %s",
                self.received.name,
                job,
                result.stderr.strip(),
                self.checkpoint,
            )
        else:
            log.warning("stopped on %s: Slurm job %s requeued; it resumes from %s", self.received.name, job, self.checkpoint)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes for this job (an array task is `<array job>_<task>`), or None outside Slurm."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Requeue(Checkpoint):
    """On any of `signals` during fitting, save `<dirpath>/requeue.ckpt` at the next step boundary and stop with
    `Preempted` (train.py then requeues the Slurm job). `resume_path()` is what a rerun resumes from.

    Step boundaries: the end of a batch whose optimiser step ran (not between the micro-batches of an accumulated
    step: their gradients are in no checkpoint), except an epoch's last batch, whose validation comes first; and the
    end of each validation, after every ModelCheckpoint has taken its result (resuming skips that validation, so
    the best checkpoint must already know it). So once validation runs, a ModelCheckpoint left to choose
    (`save_on_train_epoch_end=None`) saves when validation ends, not at the epoch's end after it; one set to save at
    the epoch's end is refused. A run without validation keeps Lightning's default, a save at each epoch's end.

    A signal during the last epoch's validation or the test is only logged and the run goes on: its checkpoints are
    complete and train.py wrote metrics.json before testing. Outside fitting and testing the signal keeps its usual
    handler (submitit's requeues the job; the rerun resumes from the last requeue checkpoint, if any).
    """

    FILENAME = "requeue.ckpt"

    def __init__(self, dirpath: str | Path, signals: Sequence[str] = ("SIGUSR1", "SIGUSR2")):
        unknown = [name for name in signals if name not in signal.Signals.__members__]
        if unknown:
            raise ValueError(f"callbacks.requeue.signals: {unknown} are not signal names (e.g. SIGUSR1, SIGUSR2)")
        self.path = Path(dirpath) / self.FILENAME
        self.signals = [signal.Signals[name] for name in signals]
        self.received: signal.Signals | None = None
        self.previous_handlers: dict[signal.Signals, Any] = {}
        self.last_step = -1

    def resume_path(self) -> str | None:
        return str(self.path) if self.path.is_file() else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.received, self.last_step = None, trainer.global_step
        # a Checkpoint: Lightning runs those last, in their given order; this one must see every other's result
        later = [type(c).__name__ for c in trainer.callbacks[trainer.callbacks.index(self) + 1 :] if isinstance(c, Checkpoint)]
        if later:
            raise ValueError(f"the Requeue callback must come after every checkpoint callback; {later} come after it")
        if stage == "fit" and any(c._save_on_train_epoch_end for c in model_checkpoints(trainer)):
            raise ValueError(
                "ModelCheckpoint(save_on_train_epoch_end=True) saves after the point where the Requeue callback stops a "
                "run at an epoch's end, so a requeued run would never save that epoch's checkpoint: leave it unset"
            )
        for signum in self.signals:  # installed before Lightning's own SLURM handler, which then stays out
            self.previous_handlers[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}
        if self.received is not None and not trainer.interrupted:
            log.warning(
                "%s came after the last point at which training could stop; the %s stage went on to its end",
                self.received.name,
                stage,
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped, self.last_step = trainer.global_step != self.last_step, trainer.global_step
        if stepped and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._stop_if_signalled(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for checkpoint in model_checkpoints(trainer):  # validation runs: its end is where the epoch's result is saved
            if checkpoint._save_on_train_epoch_end is None:
                checkpoint._save_on_train_epoch_end = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        # every rank asks, so every rank makes the same decision at the same step (a collective of one number)
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        received = self.received or self.signals[0]  # another rank got it first
        trainer.save_checkpoint(self.path)
        log.warning("%s received: saved %s at step %d", received.name, self.path, trainer.global_step)
        raise Preempted(received, self.path)


def model_checkpoints(trainer: L.Trainer) -> list[ModelCheckpoint]:
    return [callback for callback in trainer.checkpoint_callbacks if isinstance(callback, ModelCheckpoint)]
