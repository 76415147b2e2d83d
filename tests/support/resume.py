"""Runs that are stopped and resumed (requeue, Slurm): a short two-epoch run and the comparison of its metrics."""

from __future__ import annotations

import math

TWO_EPOCHS = [
    "experiment=shapes",
    "data.batches_per_epoch=6",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.test.shapes_clean.num_samples=20",
    "data.test.shapes_textured.num_samples=20",
    "data.val.shapes_textured.num_samples=20",
]


def assert_same_metrics(got: dict, expected: dict) -> None:
    """Pointing game and step count exactly; losses to float noise (two uninterrupted runs differ by as much)."""
    assert got.keys() == expected.keys() and "test/pointing_game/mean" in got
    timed = "train/seconds_per_step"
    assert all(math.isclose(got[name], value, rel_tol=1e-5) for name, value in expected.items() if name != timed), (got, expected)
    exact = [name for name in expected if "pointing_game" in name or "items" in name or name == "train/global_step"]
    assert {name: got[name] for name in exact} == {name: expected[name] for name in exact}
