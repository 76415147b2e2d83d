"""A shapes generator for the Slurm requeue test: in a job's first run it stops making progress after a few shards,
as a long generation is mid-way when its time-limit signal arrives, so the run cannot finish before Slurm kills it.
A requeued run (Slurm sets SLURM_RESTART_COUNT) goes through. Its scenes are ShapesGenerator's."""

import os
import time

from synground.shapes import ShapesGenerator


class HeldInFirstRun(ShapesGenerator):
    def __init__(self, hold_after: int, **kwargs):
        super().__init__(**kwargs)
        self.hold_after, self.calls = hold_after, 0

    def generate(self, requests):
        self.calls += 1
        if self.calls > self.hold_after and int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
            while True:  # until Slurm ends the job; signal handlers still run between sleeps
                time.sleep(1)
        return super().generate(requests)
