"""train.py and generate.py through hydra/launcher=slurm against a real single-node Slurm (tests/slurm_cluster.py):
a sweep is one job per run, a job signalled before its time limit requeues itself and resumes exactly, and the tasks
of one job are Lightning's DDP ranks. Skipped where Slurm is not installed, except in CI (.ci/run installs it).
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ROOT
from support.resume import TWO_EPOCHS, assert_same_metrics
from support.slurm_cluster import missing, slurm_cluster

pytestmark = pytest.mark.slurm

# CPU jobs of one task on one core each: both runs of a sweep fit the 2-core node at once
CPU_JOBS = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=15",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {reason}")
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := condition():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def steps_logged(run_dir: Path) -> int:
    log = run_dir / "csv" / "version_0" / "metrics.csv"
    return sum(1 for line in log.read_text().splitlines()[1:] if line.split(",")[0] == "0") if log.exists() else 0


def run_and_signal(script: str, overrides: list[str], tmp_path: Path, env: dict, job_folder: str, started, what: str):
    """Runs `script -m` through the launcher; once `started()` holds, Slurm signals the job in `.submitit/<job_folder>`
    with USR2, as it does signal_delay_s before the time limit (submitit asks for USR2), to every task of the job.
    Returns (the job id, the launcher's output) once the launcher returns, after the requeued job ends."""
    sweep = tmp_path / "sweep"
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / script), "-m", *CPU_JOBS, *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        job = wait_for(lambda: next((p.name for p in (sweep / ".submitit").glob(job_folder)), None), 120, "the job")
        wait_for(started, 300, what)
        subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
        output, _ = launcher.communicate(timeout=900)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output[-3000:]
    return job, output


def test_a_sweep_runs_one_job_per_run_and_a_job_signalled_before_its_time_limit_resumes_exactly(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    # two runs of one configuration: run 1 gets the time-limit signal, run 0 shows where it should end
    overrides = [
        *TWO_EPOCHS,
        "data.batches_per_epoch=12",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.log_every_n_steps=1",
        "+logger.csv.flush_logs_every_n_steps=1",
        "seed=42,42",
    ]
    job, _ = run_and_signal(
        "train.py", overrides, tmp_path, slurm, "*_1", lambda: steps_logged(sweep / "1") >= 3, "run 1 to train 3 steps"
    )

    log = (sweep / "1" / "train.log").read_text()  # Hydra appends: both the stopped and the resumed job wrote here
    assert re.search(rf"Slurm job {job} requeued", log), log[-3000:]
    assert f"resuming from {sweep}/1/checkpoints/requeue.ckpt" in log
    stopped_at = int(re.search(r"SIGUSR2 received: saved \S+ at step (\d+)", log).group(1))
    assert 3 <= stopped_at < 24  # it stopped during training, not after it

    def job_details():  # the job may still be completing when its result is written
        details = subprocess.run(["scontrol", "show", "job", job], env=slurm, capture_output=True, text=True).stdout
        return details if re.search(r"\bJobState=COMPLETED\b", details) else None

    assert re.search(r"\bRestarts=1\b", wait_for(job_details, 60, f"job {job} to complete"))
    assert_same_metrics(
        json.loads((sweep / "1" / "metrics.json").read_text()), json.loads((sweep / "0" / "metrics.json").read_text())
    )


def test_a_generation_job_runs_its_tasks_as_ranks_and_a_signalled_job_requeues_to_the_same_shards(slurm, tmp_path):
    settings = [
        "generation=shapes",
        "generation.num_samples=240",
        "generation.samples_per_shard=6",
        "generation.generator.image_size=64",
        "report=false",
    ]
    local = subprocess.run(
        [
            sys.executable,
            str(ROOT / "generate.py"),
            *settings,
            f"output_dir={tmp_path}/local",
            f"hydra.run.dir={tmp_path}/local_run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert local.returncode == 0, local.stderr[-3000:]

    sweep = tmp_path / "sweep"
    # submitit's own handler takes the signal (generate.py installs none): it requeues the job, whose rerun skips the
    # finished shards. The whole set takes under a second, so in the first run each rank holds after 2 shards (one
    # generate call per shard): without it the run could finish before Slurm kills it, and the rerun would do nothing.
    held = [
        "generation.generator._target_=support.held_generator.HeldInFirstRun",
        "+generation.generator.hold_after=2",
    ]
    job, _ = run_and_signal(
        "generate.py",
        ["hydra.launcher.tasks_per_node=2", *settings, *held, f"output_dir={tmp_path}/slurm"],
        tmp_path,
        {**slurm, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), slurm.get("PYTHONPATH")]))},
        "[0-9]*",
        lambda: len(list((tmp_path / "slurm" / "manifest.d").glob("*.json"))) >= 4,
        "4 shards written",
    )

    logs = "".join(path.read_text() for path in (sweep / ".submitit" / job).glob("*_log.*"))
    assert f"Requeued job {job}" in logs, logs[-3000:]
    # Lightning saw the job's 2 Slurm tasks as 2 ranks, and both wrote shards
    assert re.search(r"rank 1 wrote shapes-clean-\d+\.tar", logs) and re.search(r"rank 0 wrote shapes-clean-\d+\.tar", logs)
    assert re.search(r"\d+ of 40 shards already finished", logs)

    def shards(folder: str) -> dict:
        manifest = json.loads((tmp_path / folder / "manifest.json").read_text())
        assert manifest["complete"] and manifest["totals"]["requests"] == 240
        return {entry["name"]: (entry["samples"], entry["sha256"]) for entry in manifest["shards"]}

    assert shards("slurm") == shards("local")
