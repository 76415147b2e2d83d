"""Fault injections for what training writes: a full disk or a damaged checkpoint loses nothing already written.
The full-disk cases run on a small tmpfs the test mounts (root on Linux), and are skipped with the reason where
mounting is not allowed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from support import ROOT
from synground.callbacks.requeue import Requeue
from synground.files import write_atomic
from synground.training import AtomicCheckpointIO, resume_path, trainer_plugins


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB filesystem, another than the system's temporary directory (as a cluster's run disk is)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


def checkpoint_of(size: int) -> dict:
    return {"state_dict": {"net.weight": torch.ones(size // 4)}, "global_step": size}


@pytest.mark.parametrize("io", [AtomicCheckpointIO(), TorchCheckpointIO()], ids=["ours", "lightning"])
def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_whole(small_disk, io):
    last = small_disk / "last.ckpt"
    io.save_checkpoint(checkpoint_of(40_000), last)
    with pytest.raises((OSError, RuntimeError)) as full:  # torch.save reports ENOSPC as a RuntimeError
        io.save_checkpoint(checkpoint_of(400_000), last)  # larger than the disk
    assert "No space left" in str(full.value) or "unexpected pos" in str(full.value)
    if isinstance(io, AtomicCheckpointIO):
        assert "cannot save the checkpoint" in str(full.value) and "last.ckpt" in str(full.value)
        assert torch.load(last, weights_only=True)["global_step"] == 40_000
        assert sorted(os.listdir(small_disk)) == ["last.ckpt"]  # no partial file left behind
    else:  # Lightning's own writes through the system's temporary directory and copies: the copy is cut short
        with pytest.raises(RuntimeError):
            torch.load(last, weights_only=True)


def test_train_py_trainers_write_checkpoints_atomically_and_keep_a_configured_checkpoint_io():
    trainer = L.Trainer(plugins=trainer_plugins(OmegaConf.create({})), logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    own = OmegaConf.create({"plugins": [{"_target_": "lightning.pytorch.plugins.io.TorchCheckpointIO"}]})
    assert [type(plugin) for plugin in trainer_plugins(own)] == [TorchCheckpointIO]


def test_a_truncated_requeue_checkpoint_is_set_aside_and_the_rerun_starts_instead_of_failing_forever(tmp_path):
    requeue = Requeue(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").mkdir()
    AtomicCheckpointIO().save_checkpoint(checkpoint_of(4_000), requeue.path)
    whole = requeue.path.read_bytes()
    assert resume_path(OmegaConf.create({}), [requeue]) == str(requeue.path)
    requeue.path.write_bytes(whole[: len(whole) // 2])  # what a full disk left before checkpoints were atomic
    assert resume_path(OmegaConf.create({}), [requeue]) is None
    assert not requeue.path.exists() and (tmp_path / "checkpoints" / "requeue.ckpt.damaged").is_file()
    with pytest.raises(ValueError, match=r"ckpt_path=.*requeue\.ckpt\.damaged is not a whole checkpoint"):
        resume_path(OmegaConf.create({"ckpt_path": str(tmp_path / "checkpoints" / "requeue.ckpt.damaged")}), [])


def test_result_files_are_written_whole_or_keep_their_former_content(small_disk):
    metrics = small_disk / "metrics.json"
    write_atomic(metrics, '{"test/pointing_game": 0.5}')
    with pytest.raises(OSError, match="No space left"):
        write_atomic(metrics, "x" * 400_000)
    assert metrics.read_text() == '{"test/pointing_game": 0.5}'
    assert sorted(os.listdir(small_disk)) == ["metrics.json"]
    name = small_disk / f"{uuid.uuid4().hex}.json"
    with pytest.raises(OSError, match="No space left"):
        write_atomic(name, "x" * 400_000)
    assert not name.exists()


@pytest.mark.slow
def test_a_missing_test_split_stops_train_py_before_training(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=shapes",
            f"+data.test.refcoco_plus_testA={tmp_path / 'not_converted'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "not_converted" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # no epoch was spent first


def test_a_damaged_checkpoint_chosen_for_a_test_split_is_named_before_testing(tmp_path):
    from synground.training import test_groups

    (tmp_path / "best-refcoco_plus_val.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(
        ValueError, match=r"test split refcoco_plus_testA: .*best-refcoco_plus_val\.ckpt is not a whole checkpoint"
    ):
        test_groups(["refcoco_plus_testA"], {"refcoco_plus_testA": "refcoco_plus_val"}, None, tmp_path)
