"""Check that requirements.lock still installs what pyproject.toml asks for.

pyproject.toml keeps version ranges (for projects that use synground as a library); requirements.lock pins the exact
version and the hashes of every package `make demo`, `make test` and CI install. This check reads no network and
installs nothing: each requirement of `[project] dependencies`, of the `dev` extra (and of the extras it includes,
which is all of them) and of `[build-system] requires` (the Makefile installs the project without build isolation)
must be pinned in the lock at a version inside its range, for the platform the lock is resolved for (CPython 3.11 on
Linux x86_64; a requirement whose marker excludes that platform is skipped). Every lock entry must be an exact `==`
pin with at least one hash, and the lock must not pin synground itself. That the pinned packages fit one another is
`pip check`'s part, after the install.

    python tools/check_lock.py [--pyproject pyproject.toml] [--lock requirements.lock]

Exit status 0 when the lock matches, 1 with one line per problem and the command that fixes it (`make lock`).
Runs on a bare interpreter too (before anything is installed): packaging and the TOML parser fall back to pip's copies.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a fresh venv: pip carries a copy
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

FIX = "make lock"
EXTRAS = ("dev",)
# the environment `make lock` resolves for (uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28)
TARGET = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.0",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.11.0",
    "python_version": "3.11",
    "sys_platform": "linux",
}
HASH = re.compile(r"--hash[=\s]+(\S+)")
HASH_VALUE = re.compile(r"(sha256|sha384|sha512):[0-9a-f]+")


@dataclass
class Pin:
    name: str
    version: str
    line: int
    hashes: list[str] = field(default_factory=list)
    marker: Marker | None = None


def applies(marker: Marker | None, extra: str = "") -> bool:
    return marker is None or marker.evaluate({**TARGET, "extra": extra})


def project_requirements(pyproject: dict, extras: tuple[str, ...] = EXTRAS) -> list[tuple[str, Requirement]]:
    """(where it is written, requirement) for the requirements the lock must satisfy on its target platform. An extra
    that includes others (`synground[all]`) stands for their requirements."""
    project = pyproject["project"]
    own_name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    sources = [("[project] dependencies", "", project.get("dependencies", []))]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (optional-dependencies: {', '.join(optional) or 'none'})")
        sources.append((f"[project.optional-dependencies] {extra}", extra, optional[extra]))
        pending += [
            name for line in optional[extra] if canonicalize_name((r := Requirement(line)).name) == own_name for name in r.extras
        ]
    sources.append(("[build-system] requires", "", pyproject.get("build-system", {}).get("requires", [])))
    requirements = []
    for where, extra, lines in sources:
        for line in lines:
            requirement = Requirement(line)
            if applies(requirement.marker, extra) and canonicalize_name(requirement.name) != own_name:
                requirements.append((where, requirement))
    return requirements


def logical_lines(text: str):
    """(first line number, line) with continuations joined and comments dropped, as pip reads a requirements file."""
    start, parts = None, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if start is None:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(part.strip() for part in parts).strip()
        if joined:
            yield start, joined
        start, parts = None, []
    if parts and " ".join(parts).strip():
        yield start, " ".join(part.strip() for part in parts).strip()


def parse_lock(text: str) -> tuple[dict[str, Pin], list[str]]:
    """The lock's pins by normalised name, and what is wrong with its lines."""
    pins, problems = {}, []
    for number, line in logical_lines(text):
        if line.startswith("-"):
            problems.append(f"line {number}: option {line.split()[0]!r}: a lock written by `{FIX}` has only pinned packages")
            continue
        hashes = HASH.findall(line)
        spec = HASH.sub("", line).strip()
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as error:
            problems.append(f"line {number}: {spec!r} is not a requirement ({error})")
            continue
        name = canonicalize_name(requirement.name)
        specifiers = list(requirement.specifier)
        if requirement.url or len(specifiers) != 1 or specifiers[0].operator not in ("==", "===") or "*" in specifiers[0].version:
            problems.append(f"line {number}: {spec!r} is not an exact pin (name==version)")
            continue
        if not hashes:
            problems.append(
                f"line {number}: {name}=={specifiers[0].version} has no --hash (pip install --require-hashes refuses it)"
            )
        problems += [
            f"line {number}: {name}: {value!r} is not a hash pip knows" for value in hashes if not HASH_VALUE.fullmatch(value)
        ]
        if name in pins:
            problems.append(f"line {number}: {name} is pinned twice (first on line {pins[name].line})")
            continue
        pins[name] = Pin(name, specifiers[0].version, number, hashes, requirement.marker)
    return pins, problems


def check(pyproject_path: Path, lock_path: Path) -> list[str]:
    """What keeps the lock from installing what pyproject asks for; empty when it matches."""
    pyproject = tomllib.loads(pyproject_path.read_text())
    if not lock_path.exists():
        return [f"{lock_path} does not exist"]
    pins, problems = parse_lock(lock_path.read_text())
    problems = [f"{lock_path.name} {problem}" for problem in problems]
    project = canonicalize_name(pyproject["project"]["name"])
    if project in pins:
        problems.append(
            f"{lock_path.name} line {pins[project].line}: pins {project} itself (the Makefile installs it "
            "from the work tree with --no-deps)"
        )
    for where, requirement in project_requirements(pyproject):
        name = canonicalize_name(requirement.name)
        pin = pins.get(name)
        wanted = f"{pyproject_path.name} {where}: {str(requirement)!r}"
        if pin is None:
            problems.append(f"{wanted} is not in {lock_path.name}")
        elif not applies(pin.marker):
            problems.append(f"{wanted}: {lock_path.name} pins {name}=={pin.version} only where {pin.marker} (line {pin.line})")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{wanted}: {lock_path.name} pins {name}=={pin.version}, outside that range (line {pin.line})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    args = parser.parse_args(argv)
    problems = check(args.pyproject, args.lock)
    if problems:
        print(f"{args.lock} does not match {args.pyproject}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"Regenerate the lock with `{FIX}` (it keeps every pin that still fits) and commit it.", file=sys.stderr)
        return 1
    print(f"{args.lock} matches {args.pyproject}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
