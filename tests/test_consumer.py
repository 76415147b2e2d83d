"""synground as another project's dependency, for real: benchmarks/consumer_install.py builds the sdist and the wheel,
installs the wheel (core only) into a fresh venv beside torch 2.13 at every floor version, runs a third-party script
that trains its own LightningModule on the datamodule and loops over the data in plain PyTorch, checks what a
core-only install says about the extras, then installs the models extra and compares the installed Grounder's points
with this checkout's. About 2 minutes; needs PyPI for the core's packages (torch 2.13 comes from this machine's disk)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT


@pytest.mark.slow
def test_a_project_on_torch_2_13_installs_the_core_without_its_torch_touched_and_trains_on_the_datamodule(tmp_path):
    command = [sys.executable, "benchmarks/consumer_install.py", "--work", str(tmp_path), "--results", str(tmp_path / "results")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert (tmp_path / "results" / "consumer_install.json").exists(), done.stderr[-4000:]
    report = json.loads((tmp_path / "results" / "consumer_install.json").read_text())
    assert report["failed_checks"] == [] and done.returncode == 0, report["failed_checks"] or done.stderr[-4000:]
    core, models = report["install_core"], report["install_models"]
    assert core["torch_before"] == core["torch_after"] == models["torch_after"] == "2.13.0+cpu"
    assert not core["cuda_packages"] and not models["cuda_packages"]
    assert "transformers" not in core["added"] and core["added"]["lightning"] == "2.5.0"  # the core at its floors
    assert models["added"]["transformers"] == "5.0.0"
    assert report["third_party"]["steps"] == 30 and report["third_party"]["torch"] == "2.13.0+cpu"
    assert report["third_party"]["synground"].startswith(str(tmp_path / "venv"))  # the wheel's, not this checkout
    assert "pip install 'synground[models]'" in report["missing_extras"]["import synground.models"]
    assert report["grounder"]["largest_point_difference_px"] <= 1
    assert report["build"]["sdist_test_files"] == [] and report["build"]["wheel_configs"] > 40
