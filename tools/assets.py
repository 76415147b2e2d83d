"""The packaged vision encoders (synground/assets/*.safetensors) against the commands that made them.

synground/assets/manifest.json records, per file, its sha256 and the pretraining command that made it (they name the
module by its former path, synground.models.pretraining; it is synground.shapes.pretraining now, the same code).
Pretraining is deterministic (one thread, seeded before the model is built, a sorted header), so the command gives
the same bytes again on this kind of machine.

    python tools/assets.py                 check: every file's sha256 and embedded command match the manifest (fast)
    python tools/assets.py --rebuild       rerun every command into a temporary folder and compare the tensors and
                                           metadata (not the digest: the embedded command names the --output; ~25 min)
    python tools/assets.py --record        write the manifest from the files there are (after rebuilding them)

Exit status 0 when everything matches, 1 with one line per mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "synground" / "assets"
MANIFEST = ASSETS / "manifest.json"
PRETRAINING = "synground.shapes.pretraining"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embedded_command(path: Path) -> str:
    with safe_open(str(path), framework="pt") as file:
        return json.loads(file.metadata()["about"])["command"]


def check(manifest: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    files = {path.name for path in ASSETS.glob("*.safetensors")}
    for name in sorted(files - set(manifest)):
        problems.append(f"{name}: not in {MANIFEST.name} (python tools/assets.py --record)")
    for name, entry in sorted(manifest.items()):
        path = ASSETS / name
        if not path.is_file():
            problems.append(f"{name}: listed in {MANIFEST.name} but missing")
            continue
        digest, command = sha256(path), embedded_command(path)
        if digest != entry["sha256"]:
            problems.append(f"{name}: sha256 {digest} differs from the manifest's {entry['sha256']}")
        if command != entry["command"]:
            problems.append(f"{name}: made by `{command}`, the manifest says `{entry['command']}`")
    return problems


def content_difference(rebuilt: Path, shipped: Path, rebuilt_command: str) -> str | None:
    """What differs between a rebuilt encoder and the shipped one, or None: every tensor (name, dtype, values) and
    every metadata entry. The command embedded in the rebuilt file names its temporary --output (and the module's
    current path), so it must be the shipped command's arguments plus that, and nothing else: that is why the files'
    digests differ and their content must not."""
    with safe_open(str(rebuilt), framework="pt") as new, safe_open(str(shipped), framework="pt") as old:
        if set(new.keys()) != set(old.keys()):
            return f"tensors {sorted(set(new.keys()) ^ set(old.keys()))[:5]} are in one file only"
        for key in sorted(old.keys()):
            a, b = new.get_tensor(key), old.get_tensor(key)
            if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
                return f"tensor {key} differs (largest difference {(a.double() - b.double()).abs().max().item():.3g})"
        new_metadata, old_metadata = new.metadata(), old.metadata()
    new_about, old_about = json.loads(new_metadata.pop("about")), json.loads(old_metadata.pop("about"))
    if new_about.pop("command") != rebuilt_command:
        return f"its embedded command is not `{rebuilt_command}`"
    old_about.pop("command")
    changed = sorted(key for key in new_about.keys() | old_about.keys() if new_about.get(key) != old_about.get(key))
    changed += sorted(key for key in new_metadata.keys() | old_metadata.keys() if new_metadata.get(key) != old_metadata.get(key))
    return f"metadata {', '.join(changed)} differ" if changed else None


def rebuild(manifest: dict[str, dict[str, str]], workers: int) -> list[str]:
    """Run each recorded command with its output in a temporary folder and compare what the files hold."""
    problems = []
    with tempfile.TemporaryDirectory() as folder:

        def one(item: tuple[str, dict[str, str]]) -> str | None:
            name, entry = item
            output = Path(folder) / name
            arguments = shlex.split(entry["command"])[3:]  # after `python -m <the pretraining module>`
            command = [sys.executable, "-m", PRETRAINING, *arguments, "--output", str(output)]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode != 0:
                return f"{name}: `{entry['command']}` failed: {done.stderr.strip().splitlines()[-1:]}"
            expected = f"python -m {PRETRAINING} {' '.join(arguments)} --output {output}"
            difference = content_difference(output, ASSETS / name, expected)
            print(f"{name}: rebuilt, {difference or 'the same tensors and metadata'}", flush=True)
            return f"{name}: the rebuilt file differs: {difference}" if difference else None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = [problem for problem in pool.map(one, sorted(manifest.items())) if problem]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="rerun every command and compare the digests")
    parser.add_argument("--record", action="store_true", help="write the manifest from the files there are")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.record:
        manifest = {
            path.name: {"sha256": sha256(path), "command": embedded_command(path)}
            for path in sorted(ASSETS.glob("*.safetensors"))
        }
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"recorded {len(manifest)} files in {MANIFEST}")
        return
    manifest = json.loads(MANIFEST.read_text())
    problems = rebuild(manifest, args.workers) if args.rebuild else check(manifest)
    for problem in problems:
        print(problem)
    if problems:
        raise SystemExit(1)
    print(f"{len(manifest)} packaged encoders match {MANIFEST.name}" + (" (rebuilt)" if args.rebuild else ""))


if __name__ == "__main__":
    main()
