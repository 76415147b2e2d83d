"""WebDataset shards of GroundingSamples: atomic writing, the manifest, and reading with bad samples skipped."""

from __future__ import annotations

from collections import Counter
import glob
import hashlib
import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from synground.data.schema import GroundingSample, sample_from_metadata, sample_metadata, validate_key

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


def encode_sample(sample: GroundingSample, jpeg_quality: int = 95) -> dict[str, bytes]:
    image = sample.image
    if image.format == "JPEG" and getattr(image, "filename", ""):  # opened from a JPEG file: keep its bytes, no re-encoding
        jpeg = Path(image.filename).read_bytes()
    else:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
        jpeg = buffer.getvalue()
    return {"jpg": jpeg, "json": json.dumps(sample_metadata(sample)).encode()}


def write_shard(path: Path, samples: Iterable[GroundingSample]) -> dict[str, Any]:
    """Write one tar shard atomically (temporary name, then rename); returns its manifest entry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    count = 0
    seen: set[str] = set()
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            key = validate_key(sample.key)
            if key in seen:
                raise ValueError(f"shard {path}: duplicate sample key {key!r}")
            seen.add(key)
            for extension, payload in encode_sample(sample).items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))  # mtime 0: identical samples give identical shards
            count += 1
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    os.replace(partial, path)
    return {"name": path.name, "samples": count, "sha256": digest}


class Manifest:
    """The record of finished shards in a directory: a shard not in the manifest does not exist.

    `complete` says whether the run that writes the set finished: False while it runs and after a crash, True at
    its end, with the totals of what it wrote and skipped. `command` is what finishes an unfinished set (a rerun
    resumes). Manifests written before the flag existed read as complete=None.
    """

    def __init__(self, directory: str | Path, config: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST_NAME
        self.shards: list[dict[str, Any]] = []
        self.config = config or {}
        self.complete: bool | None = False
        self.totals: dict[str, Any] = {}
        self.command: str | None = None
        if self.path.exists():
            record = read_manifest(self.path)
            self.shards = record["shards"]
            self.config = record.get("config", self.config)
            self.complete, self.totals, self.command = record.get("complete"), record.get("totals", {}), record.get("command")

    @property
    def finished(self) -> set[str]:
        return {entry["name"] for entry in self.shards}

    def add(self, entry: dict[str, Any]) -> None:
        self.shards = [e for e in self.shards if e["name"] != entry["name"]] + [entry]
        self.shards.sort(key=lambda e: e["name"])
        self.complete = False
        self.save()

    def finish(self, totals: dict[str, Any]) -> None:
        self.complete, self.totals = True, totals
        self.save()

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        record = {"complete": self.complete, "command": self.command, "totals": self.totals, "shards": self.shards,
                  "config": self.config}
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, self.path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        shards = record["shards"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"manifest {path} is unreadable: {error}") from error
    if not isinstance(shards, list):
        raise ValueError(f"manifest {path}: 'shards' must be a list")
    return record


_WARNED_LEGACY: set[str] = set()


class IncompleteShardSet(ValueError):
    """A shard set whose writing run did not finish: reading it would silently use a part of the data."""


REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")


def is_remote(spec: str) -> bool:
    return str(spec).startswith(REMOTE_SCHEMES)


def open_shard(url: str) -> BinaryIO:
    """A shard's bytes: a local file, an object-store or web URL (fsspec: s3fs for s3://, gcsfs for gs://, HTTP), or
    `pipe:<command>` whose standard output is the shard (webdataset's gopen)."""
    if url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    if is_remote(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def manifest_of(spec: str) -> str | None:
    """The manifest.json a shard spec names: a set's directory or object-store prefix, or the manifest itself. None
    for `.tar` files, brace or glob patterns and `pipe:` commands, which name their shards directly."""
    if spec.startswith("pipe:"):
        return None
    if is_remote(spec):
        if spec.endswith(".tar") or "{" in spec or "*" in spec:
            return None
        return spec if spec.endswith(MANIFEST_NAME) else f"{spec.rstrip('/')}/{MANIFEST_NAME}"
    path = Path(spec)
    if path.is_dir():
        return str(path / MANIFEST_NAME)
    return spec if path.name == MANIFEST_NAME else None


def resolve_shards(spec: str | os.PathLike, allow_partial: bool = False) -> list[str]:
    """Shard files named by a directory or object-store prefix (its manifest), a manifest, or a glob / brace pattern.

    Local paths, `s3://`, `gs://` and `http(s)://` URLs are read alike (fsspec); `pipe:<command>` names one shard per
    command (brace patterns expand to several). A set whose manifest says its run did not finish is refused, naming
    the command that finishes it, unless `allow_partial`; then the shards finished so far are read. Files named by a
    pattern are taken as they are.
    """
    spec = str(spec)
    if spec.startswith("pipe:"):
        return list(braceexpand(spec))
    if is_remote(spec):
        return _remote_shards(spec, allow_partial)
    manifest = manifest_of(spec)
    if manifest is not None:
        manifest_path = Path(manifest)
        if not manifest_path.exists():
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {manifest_path.parent}: write shards with generate.py or name the .tar files")
        files = [str(manifest_path.parent / name) for name in _manifest_shards(read_manifest(manifest_path), str(manifest_path), allow_partial)]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"manifest {manifest_path} lists shards that do not exist: {missing[:3]}")
        return files
    files = sorted({match for pattern in braceexpand(spec) for match in glob.glob(os.path.expanduser(pattern))})
    if not files:
        raise FileNotFoundError(f"shard path {spec!r} matches no file")
    return files


def _remote_shards(spec: str, allow_partial: bool) -> list[str]:
    import fsspec

    manifest_url = manifest_of(spec)
    if manifest_url is None:  # named .tar objects, brace patterns, globs
        fs, _ = fsspec.core.url_to_fs(spec)
        urls = [url for pattern in braceexpand(spec) for url in ([pattern] if "*" not in pattern else
                                                                [fs.unstrip_protocol(p) for p in sorted(fs.glob(pattern))])]
        if not urls:
            raise FileNotFoundError(f"shard pattern {spec!r} matches no object")
        return urls
    base = manifest_url[: -len(MANIFEST_NAME)].rstrip("/")
    try:
        with fsspec.open(manifest_url, "r") as file:
            record = json.load(file)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no {MANIFEST_NAME} at {base}: write shards there with generate.py or convert.py, or name "
                                "the .tar objects") from error
    except (OSError, ValueError) as error:
        raise ValueError(f"manifest {manifest_url} is unreadable: {error}") from error
    if not isinstance(record, dict) or not isinstance(record.get("shards"), list):
        raise ValueError(f"manifest {manifest_url}: 'shards' must be a list")
    return [f"{base}/{name}" for name in _manifest_shards(record, manifest_url, allow_partial)]


def _manifest_shards(record: dict[str, Any], manifest: str, allow_partial: bool) -> list[str]:
    """The shard names a manifest lists, once it is known to be whole (or a partial set is asked for)."""
    shards = record["shards"]
    location = manifest[: -len(MANIFEST_NAME)].rstrip("/")
    if record.get("complete") is False and not allow_partial:
        command = record.get("command") or "the conversion or generation that wrote it, with the same settings"
        raise IncompleteShardSet(
            f"{location} is an unfinished shard set ({len(shards)} shards so far; {manifest} says the run that writes "
            f"it did not finish). Finish it by running again: {command} (it resumes where it stopped); or read the "
            "shards finished so far with allow_partial=True (data.allow_partial=true)")
    if record.get("complete") is None and manifest not in _WARNED_LEGACY:
        _WARNED_LEGACY.add(manifest)
        log.warning("%s was written before manifests recorded whether their run finished: taken as complete", manifest)
    if not shards:
        raise ValueError(f"manifest {manifest} lists no shards")
    return [entry["name"] for entry in shards]


def iterate_shard(url: str, issues: Counter[str]) -> Iterator[GroundingSample]:
    """The samples of one shard in order; a corrupt image or record is skipped with a warning and counted."""
    # webdataset's own tar expansion and key grouping; decoding is ours so that nothing is unpickled.
    failed = False

    def warn_tar(error: Exception) -> bool:  # webdataset reports a broken tar at each of its stages: count it once
        nonlocal failed
        if not failed:
            failed = True
            issues["corrupt_shard"] += 1
            log.warning("shard %s: %s; reading goes on with the next shard", url, error)
        return True

    def opened() -> Iterator[dict[str, Any]]:
        try:
            stream = open_shard(url)
        except (OSError, ValueError) as error:  # a missing object, a refused connection, a failing pipe command
            warn_tar(error)
            return
        try:
            yield {"url": url, "stream": stream}
        finally:
            stream.close()

    files = wds.tariterators.tar_file_expander(opened(), handler=warn_tar)
    for raw in wds.tariterators.group_by_keys(files, handler=warn_tar):
        key = raw["__key__"]
        try:
            if "jpg" not in raw or "json" not in raw:
                raise ValueError(f"missing {'jpg' if 'jpg' not in raw else 'json'} member")
            image = Image.open(io.BytesIO(raw["jpg"]))
            image.load()
            yield sample_from_metadata(key, image if image.mode == "RGB" else image.convert("RGB"), raw["json"])
        except (OSError, ValueError, SyntaxError) as error:
            issues["corrupt_sample"] += 1
            log.warning("shard %s, sample %r skipped: %s", url, key, error)
