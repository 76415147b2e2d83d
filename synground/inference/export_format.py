"""Reading an export directory (what synground.inference.export writes): synground.json's settings, the model files
checked against their recorded sha256, and the model built from them. The Grounder loads exports through this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synground.models.albef import AlbefGroundingModel
from synground.models.base import GroundingModel
from synground.models.blip import BlipGroundingModel
from synground.models.checkpoints import CheckpointError

log = logging.getLogger(__name__)


SETTINGS_FILE = "synground.json"


FORMAT = 1  # of synground.json; bump when an export written before can no longer be read the same way


ARCHITECTURES: dict[str, type[GroundingModel]] = {"blip": BlipGroundingModel, "albef": AlbefGroundingModel}


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file of an export's model (weights, config, tokenizer), by path relative to it."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def verify_files(directory: Path, settings: dict[str, Any]) -> None:
    """Every model file synground.json lists is there, unchanged (sha256); exports written before the list are
    loaded with a warning."""
    files = settings.get("files")
    if files is None:
        log.warning("%s was exported before synground recorded checksums: its files are not verified", directory)
        return
    if not isinstance(files, dict):
        raise CheckpointError(
            f"{directory / SETTINGS_FILE}: files is a {type(files).__name__}, not the sha256 of each file by name: the "
            "export was edited or damaged; export the checkpoint again"
        )
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the export {directory} is incomplete; export it again")
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise CheckpointError(
                f"{path} differs from the sha256 that {SETTINGS_FILE} recorded when it was exported: the file is damaged "
                "or was changed. Export the checkpoint again (synground-export <checkpoint> <directory>)"
            )


def load_export(directory: Path) -> tuple[GroundingModel, dict[str, Any]]:
    """The model of an export directory and its synground.json settings, its files verified against the checksums
    recorded at export."""
    settings_file = directory / SETTINGS_FILE
    if not settings_file.is_file():
        raise FileNotFoundError(f"{directory} is not a synground export: it has no {SETTINGS_FILE} (synground-export)")
    try:
        settings = json.loads(settings_file.read_text())
    except (ValueError, OSError) as error:  # empty, cut short, not UTF-8
        problem = f"{type(error).__name__}: {error}"
    else:
        problem = None if isinstance(settings, dict) else f"it holds a {type(settings).__name__}"
    if problem:
        raise ValueError(
            f"{settings_file} is not a JSON object of settings ({problem}): the export is damaged; export the checkpoint "
            "again (synground-export <checkpoint> <directory>)"
        )
    settings = ExportSettings(settings, settings_file)
    if settings.get("format") != FORMAT or settings.get("architecture") not in ARCHITECTURES:
        raise ValueError(
            f"{settings_file}: format {settings.get('format')} of architecture {settings.get('architecture')!r}; this "
            f"synground reads format {FORMAT} of {sorted(ARCHITECTURES)}"
        )
    check_input_settings(settings.get("image_size"), settings.get("mean", []), settings.get("std", []), str(settings_file))
    verify_files(directory, settings)
    return ARCHITECTURES[settings["architecture"]].from_export(directory, settings), settings


class ExportSettings(dict):
    """synground.json's settings; reading one it lacks is an error naming the file and the key."""

    def __init__(self, settings: dict[str, Any], path: Path):
        super().__init__(settings)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise ValueError(
            f"{self.path} has no {key!r}: the export is incomplete or was edited; export the checkpoint again "
            "(synground-export <checkpoint> <directory>)"
        )


def check_input_settings(image_size: Any, mean: Any, std: Any, where: str, prefix: str = "") -> None:
    """The input size and normalisation a run config or an export gives: a positive size (or None) and three finite
    means and three positive finite standard deviations (a zero std would make every score NaN). Errors name `where`
    and the key (`prefix` + image_size, mean or std)."""
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"{where}: {prefix}image_size {image_size!r} is not a positive whole number of pixels")
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise ValueError(f"{where}: {prefix}{name} {values!r} is not three finite numbers (one per RGB channel)")
        values = list(values)
        numbers = [value for value in values if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if len(values) != 3 or len(numbers) != 3 or not all(math.isfinite(value) for value in numbers):
            raise ValueError(f"{where}: {prefix}{name} {values!r} is not three finite numbers (one per RGB channel)")
    if not all(value > 0 for value in std):
        raise ValueError(
            f"{where}: {prefix}std {list(std)!r} has a value that is not positive; the images would be divided by it"
        )
