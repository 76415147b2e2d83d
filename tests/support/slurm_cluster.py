"""A real single-node Slurm for tests: Debian's slurm-wlm (slurmctld + slurmd) on this machine, on free ports, with
its configuration, state and logs under one directory. Needs root and `apt-get install slurm-wlm munge`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.free_port import free_port

MUNGE_KEY = Path("/etc/munge/munge.key")


def missing() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    absent = [tool for tool in ("slurmctld", "slurmd", "sbatch", "scontrol", "munged") if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not found: apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "slurmd runs jobs as root here: run the tests as root"
    return None


@contextmanager
def slurm_cluster(directory: Path, timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Starts munged (if it is not running), slurmctld and slurmd; yields the environment Slurm's commands need
    (SLURM_CONF). On exit, cancels every job of this cluster and stops what it started, by the PIDs in their files."""
    started_munge = _start_munge(timeout)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state").mkdir(exist_ok=True)
    (directory / "spool").mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    memory_mb = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.8)
    ctld_port, node_port = free_port(), free_port()
    config = directory / "slurm.conf"
    config.write_text(
        "\n".join(
            [
                "ClusterName=tests",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={node_port}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={directory}/state",
                f"SlurmdSpoolDir={directory}/spool",
                f"SlurmctldPidFile={directory}/slurmctld.pid",
                f"SlurmdPidFile={directory}/slurmd.pid",
                f"SlurmctldLogFile={directory}/slurmctld.log",
                f"SlurmdLogFile={directory}/slurmd.log",
                "AuthType=auth/munge",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SwitchType=switch/none",
                "MpiDefault=none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "ReturnToService=2",
                "JobRequeue=1",
                "KillWait=5",  # seconds from a requeue's SIGTERM (which submitit ignores) to SIGKILL; 30 by default
                "MinJobAge=600",
                # a requeued job may start again once its credentials expire (default 120 s)
                "AuthInfo=cred_expire=10",
                f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = {**os.environ, "SLURM_CONF": str(config)}
    pid_files = [directory / "slurmctld.pid", directory / "slurmd.pid"]
    try:
        subprocess.run(["slurmctld", "-f", str(config)], env=env, check=True)
        subprocess.run(["slurmd", "-f", str(config)], env=env, check=True)
        deadline = time.time() + timeout
        while _node_state(env) != "idle":
            if time.time() > deadline:
                log = (directory / "slurmctld.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Slurm node is {_node_state(env)!r}, not idle, after {timeout:.0f} s: {log}")
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        for pid_file in pid_files:
            _stop(pid_file)
        if started_munge:
            _stop(Path("/run/munge/munged.pid"))


def _node_state(env: dict[str, str]) -> str:
    result = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True)
    return result.stdout.strip()


def _start_munge(timeout: float) -> bool:
    """Whether munged had to be started (with a new key if there is none)."""
    if _munge_works():
        return False
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    deadline = time.time() + timeout
    while not _munge_works():
        if time.time() > deadline:
            raise RuntimeError("munged did not answer within the timeout")
        time.sleep(0.2)
    return True


def _munge_works() -> bool:
    if shutil.which("munge") is None:
        return False
    credential = subprocess.run(["munge", "-n"], capture_output=True)
    return (
        credential.returncode == 0 and subprocess.run(["unmunge"], input=credential.stdout, capture_output=True).returncode == 0
    )


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 15)
    except (OSError, ValueError):
        return
    for _ in range(50):  # until it is gone, so the next cluster can take its place
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
