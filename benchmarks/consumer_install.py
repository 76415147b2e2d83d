"""synground as another project's dependency: built, installed into a fresh venv beside that project's own torch at
every floor version, used by a script of that project's own, and measured.

    python benchmarks/consumer_install.py [--python python3.11] [--torch 2.13.0] [--work DIR] [--results DIR]

1. Build: `python -m build` makes the sdist, then the wheel from the sdist (so the sdist is complete). Both are
   checked: the wheel holds the configs, py.typed and LICENSE; the sdist ships no tests (they need the checkout).
2. A fresh venv of `--python` with `pip install torch==<--torch>` first, as a project on that torch has it. Then
   `pip install <wheel>` (the core, no extra) with every other floor of the core and the models extra pinned at once
   (`name>=X` in pyproject.toml becomes `name==X`). The torch install must be left untouched and no CUDA package
   may appear.
3. Measured: what the core added to the venv (packages, MB) and its import time against torch's, side by side in
   fresh interpreters, round-robin, median of 7 with min-max.
4. tests/consumer/third_party.py runs in the venv (outside this checkout): a LightningModule of its own trained for
   30 steps on GroundingDataModule, then a plain PyTorch loop over the same data.
5. Parts that need an extra, imported from the core-only venv, must name it (synground.models: models;
   synground-train: train).
6. `pip install '<wheel>[models]'` at the same floors, torch again untouched; tests/consumer/grounder.py loads a tiny
   checkpoint and its export (written here by the checkout) with the installed Grounder, and its points are compared
   with the checkout's own.
Writes <results>/consumer_install.{json,md}; exits 1 (after writing) when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

from synground.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONSUMER = ROOT / "tests" / "consumer"
IMPORTS = {  # what a project's first line costs, each timed in a fresh interpreter
    "torch": "import torch",
    "synground.data": "import synground.data",
    "synground.data + GroundingDataModule": "import synground.data; synground.data.GroundingDataModule",
}
REPEATS = 7


def run(command: list[str], cwd: Path, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    """A command in `cwd` with no trace of this checkout on its path."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return done


def floors(pyproject: dict, extras: tuple[str, ...] = ("models",)) -> list[str]:
    """`name==X` for every `name>=X` of the core and of `extras`: the oldest versions pyproject.toml admits."""
    from packaging.requirements import Requirement

    texts = pyproject["project"]["dependencies"] + [t for e in extras for t in pyproject["project"]["optional-dependencies"][e]]
    pins = []
    for text in texts:
        requirement = Requirement(text)
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if requirement.name != "synground" and lower:
            pins.append(f"{requirement.name}=={lower[0]}")
    return pins


def build(work: Path) -> tuple[Path, dict]:
    dist = work / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)], cwd=work)
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    with tarfile.open(sdist) as archive:
        sdist_files = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    with zipfile.ZipFile(wheel) as archive:
        wheel_files = archive.namelist()
    facts = {
        "sdist": sdist.name,
        "sdist_files": len(sdist_files),
        "sdist_test_files": sorted(name for name in sdist_files if name.startswith("tests/")),
        "wheel": wheel.name,
        "wheel_MB": round(wheel.stat().st_size / 1e6, 2),
        "wheel_configs": sum(name.startswith("synground/conf/") and name.endswith(".yaml") for name in wheel_files),
        "wheel_py_typed": "synground/py.typed" in wheel_files,
        "wheel_license": any(re.fullmatch(r"synground-[^/]+\.dist-info/licenses/LICENSE", name) for name in wheel_files),
    }
    return wheel, facts


def site_packages(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python*/site-packages")
    return found


def size_MB(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and not file.is_symlink()) / 1e6


def freeze(python: Path, work: Path) -> dict[str, str]:
    lines = run([str(python), "-m", "pip", "freeze", "--all"], cwd=work).stdout.splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def import_times(python: Path, work: Path) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(REPEATS):  # round-robin, so load on the machine touches every statement alike
        for name, statement in IMPORTS.items():
            code = f"import time; start = time.perf_counter(); {statement}; print(time.perf_counter() - start)"
            times[name].append(float(run([str(python), "-c", code], cwd=work).stdout.split()[-1]))
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for name, v in times.items()}


def install(python: Path, work: Path, requirement: str, constraints: Path) -> dict:
    """pip install `requirement` under the floor constraints; what it added and whether torch stayed as it was."""
    before, size_before = freeze(python, work), size_MB(site_packages(python.parents[1]))
    started = time.perf_counter()
    run([str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints), requirement], cwd=work)
    after = freeze(python, work)
    added = sorted(set(after) - set(before))
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "packages_added": len(added),
        "added": {name: after[name] for name in added},
        "MB_added": round(size_MB(site_packages(python.parents[1])) - size_before, 1),
        "torch_before": before.get("torch"),
        "torch_after": after.get("torch"),
        "cuda_packages": sorted(name for name in after if name.lower().startswith(("nvidia", "cuda", "triton"))),
    }


def missing_extra_messages(python: Path, work: Path) -> dict[str, str]:
    """What a core-only install says when a part that needs an extra is used."""
    messages = {}
    probes = {
        "import synground.models": [str(python), "-c", "import synground.models"],
        "synground-train --help": [str(python.parent / "synground-train"), "--help"],
    }
    for name, command in probes.items():
        done = run(command, cwd=work, check=False)
        lines = done.stderr.strip().splitlines()
        messages[name] = lines[-1] if done.returncode and lines else f"exit {done.returncode}: no error"
    return messages


def grounder_sources(work: Path) -> tuple[list[str], dict[str, list[list[float]]]]:
    """A tiny checkpoint and its export written by this checkout, and the points the checkout's Grounder gives."""
    sys.path[:0] = [str(ROOT / "tests"), str(CONSUMER)]
    from grounder import points

    from support.checkpoints import tiny_checkpoint
    from synground.inference.export import export_model

    checkpoint = tiny_checkpoint(work / "run", seed=0)
    export = export_model(checkpoint, work / "export")
    sources = [str(checkpoint), str(export)]
    return sources, {source: points(source) for source in sources}


def largest_difference(ours: dict, theirs: dict) -> float:
    return max(abs(a - b) for source in ours for p, q in zip(ours[source], theirs[source]) for a, b in zip(p, q))


def checks(report: dict) -> list[str]:
    """What a user of the library relies on; each failed one named."""
    core, models = report["install_core"], report["install_models"]
    wanted_torch = report["torch_requested"]
    found = []
    if report["build"]["sdist_test_files"]:
        found.append(f"the sdist ships tests: {report['build']['sdist_test_files'][:3]}")
    if not (report["build"]["wheel_configs"] and report["build"]["wheel_py_typed"] and report["build"]["wheel_license"]):
        found.append("the wheel lacks configs, py.typed or LICENSE")
    for name, step in (("core", core), ("models", models)):
        if not (step["torch_before"] or "").startswith(wanted_torch) or step["torch_after"] != step["torch_before"]:
            found.append(f"installing the {name} changed torch: {step['torch_before']} -> {step['torch_after']}")
        if step["cuda_packages"]:
            found.append(f"installing the {name} brought CUDA packages: {step['cuda_packages'][:3]}")
    project = report["third_party"]
    if project.get("steps") != 30 or project.get("plain_batches", 0) < 2:
        found.append(f"the third-party script did not train 30 steps and loop over the data: {project}")
    for probe, extra in (("import synground.models", "models"), ("synground-train --help", "train")):
        if f"pip install 'synground[{extra}]'" not in report["missing_extras"][probe]:
            found.append(f"{probe} without its extra said: {report['missing_extras'][probe]}")
    if report["grounder"]["largest_point_difference_px"] > 1:
        found.append(f"the installed Grounder's points differ from the checkout's by {report['grounder']}")
    return found


def markdown(report: dict) -> str:
    core, models, times = report["install_core"], report["install_models"], report["import_times"]
    torch_median = times["torch"]["median_s"]
    lines = [
        "# synground as a dependency (benchmarks/consumer_install.py)",
        "",
        f"`{report['command']}` on {report['machine']}, {report['date']}.",
        "",
        (
            f"A fresh venv of Python {report['python']} with torch {core['torch_before']} installed first; then the wheel "
            f"({report['build']['wheel']}, {report['build']['wheel_MB']} MB) with every floor of the core and the models "
            "extra pinned (`name>=X` as `name==X`)."
        ),
        "",
        "| step | packages added | MB added | torch after | seconds |",
        "|---|---|---|---|---|",
        f"| `pip install synground` (core) | {core['packages_added']} | {core['MB_added']} | {core['torch_after']} | {core['seconds']} |",
        (
            f"| `pip install 'synground[models]'` | {models['packages_added']} | {models['MB_added']} | {models['torch_after']} "
            f"| {models['seconds']} |"
        ),
        "",
        f"Import time in a fresh interpreter, median of {REPEATS} (min-max), round-robin in one run:",
        "",
        "| statement | median s | min-max s | over `import torch` |",
        "|---|---|---|---|",
        *(
            f"| `{IMPORTS[name]}` | {t['median_s']:.2f} | {t['min_s']:.2f}-{t['max_s']:.2f} | "
            f"{t['median_s'] / torch_median:.2f}x |"
            for name, t in times.items()
        ),
        "",
        f"The core's packages: {', '.join(f'{name} {version}' for name, version in core['added'].items())}.",
        "",
        (
            f"Third-party script (tests/consumer/third_party.py): {report['third_party'].get('steps')} training steps of its "
            f"own LightningModule on GroundingDataModule (loss {report['third_party'].get('loss_first_5', float('nan')):.4f} "
            f"over the first 5 steps, {report['third_party'].get('loss_last_5', float('nan')):.4f} over the last 5), "
            f"then {report['third_party'].get('plain_batches')} batches in a plain PyTorch loop."
        ),
        "",
        "Without an extra:",
        "",
        *(f"- `{probe}`: {message}" for probe, message in report["missing_extras"].items()),
        "",
        (
            f"The installed Grounder (transformers {models['added'].get('transformers', '?')}) against the checkout's on a "
            f"tiny checkpoint and its export: largest point difference {report['grounder']['largest_point_difference_px']} px."
        ),
        "",
        (
            f"Sdist: {report['build']['sdist_files']} files, {len(report['build']['sdist_test_files'])} of them tests. Wheel: "
            f"{report['build']['wheel_configs']} configs, py.typed {report['build']['wheel_py_typed']}, LICENSE "
            f"{report['build']['wheel_license']}."
        ),
        "",
        "Checks: " + ("all passed." if not report["failed_checks"] else "; ".join(report["failed_checks"])),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="python3.11", help="the interpreter of the consumer's venv")
    parser.add_argument("--torch", default="2.13.0", help="the consumer's torch, installed before synground")
    parser.add_argument("--work", type=Path, help="where to build and make the venv (default: a temporary directory)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="synground-consumer-")) if args.work is None else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    constraints = work / "floors.txt"
    constraints.write_text(
        "\n".join([f"torch=={args.torch}", *[p for p in floors(pyproject) if not p.startswith("torch==")]]) + "\n"
    )

    wheel, built = build(work)
    venv = work / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    run([args.python, "-m", "venv", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", f"torch=={args.torch}"], cwd=work)
    for script in ("third_party.py", "grounder.py"):
        shutil.copy(CONSUMER / script, work / script)

    report = {
        "command": "python benchmarks/consumer_install.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": run([str(python), "-c", "import platform; print(platform.python_version())"], cwd=work).stdout.strip(),
        "torch_requested": args.torch,
        "floors": constraints.read_text().split(),
        "build": built,
    }
    report["install_core"] = install(python, work, str(wheel), constraints)
    report["import_times"] = import_times(python, work)
    project = run([str(python), "third_party.py"], cwd=work)
    report["third_party"] = json.loads(project.stdout.strip().splitlines()[-1])
    report["missing_extras"] = missing_extra_messages(python, work)
    report["install_models"] = install(python, work, f"{wheel}[models]", constraints)
    sources, ours = grounder_sources(work)
    theirs = json.loads(run([str(python), "grounder.py", *sources], cwd=work).stdout.strip().splitlines()[-1])
    report["grounder"] = {"points_checkout": ours, "points_installed": theirs}
    report["grounder"]["largest_point_difference_px"] = largest_difference(ours, theirs)
    report["failed_checks"] = checks(report)

    args.results.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results / "consumer_install.json", json.dumps(report, indent=2) + "\n")
    write_atomic(args.results / "consumer_install.md", markdown(report))
    print(markdown(report))
    return 1 if report["failed_checks"] else 0


if __name__ == "__main__":
    sys.exit(main())
