"""WebDataset shards of GroundingSamples: atomic writing, the manifest, and reading with bad samples skipped."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, TypeVar

import webdataset as wds
from braceexpand import braceexpand

from synground.data.schema import (
    GroundingSample,
    count_skip,
    decode_image,
    sample_from_metadata,
    sample_metadata,
    validate_key,
)
from synground.extras import require

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
T = TypeVar("T")

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")
STORE_EXTRAS = {"s3://": "s3", "gs://": "gcs", "gcs://": "gcs"}  # the extra that installs each object store's fsspec package


def is_remote(spec: str) -> bool:
    return str(spec).startswith(REMOTE_SCHEMES)


def object_store(url: str) -> ModuleType:
    """fsspec, once the package that reads `url`'s object store is known to be installed: s3fs for s3:// (extra s3),
    gcsfs for gs:// (extra gcs); http(s):// needs nothing more. A missing one is named with its extra."""
    for scheme, extra in STORE_EXTRAS.items():
        if url.startswith(scheme):
            require(extra, f"the shard location {url}")
    import fsspec  # imported here: reading local shards, as every data worker does, never loads it

    return fsspec


def open_shard(url: str) -> BinaryIO:
    """A shard's bytes: a local file, an object-store or web URL (fsspec: s3fs for s3://, gcsfs for gs://, HTTP), or
    `pipe:<command>` whose standard output is the shard (webdataset's gopen)."""
    if url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    if is_remote(url):
        return object_store(url).open(url, "rb").open()
    return open(url, "rb")


def encode_sample(sample: GroundingSample, jpeg_quality: int = 95) -> dict[str, bytes]:
    image = sample.image
    if image.format == "JPEG" and getattr(image, "filename", ""):  # opened from a JPEG file: keep its bytes, no re-encoding
        jpeg = Path(image.filename).read_bytes()
    else:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
        jpeg = buffer.getvalue()
    return {"jpg": jpeg, "json": json.dumps(sample_metadata(sample)).encode()}


def write_shard(destination: str | os.PathLike, samples: Iterable[GroundingSample]) -> dict[str, Any]:
    """Write one tar shard, a local file or an object (see `ShardStore`), whole or not at all; returns its manifest entry."""
    directory, name = split_location(str(destination))
    return {"name": name, **ShardStore(directory).write(name, lambda file: _write_tar(file, destination, samples))}


def _write_tar(file: BinaryIO, destination: str | os.PathLike, samples: Iterable[GroundingSample]) -> dict[str, Any]:
    """The shard's samples as a tar into `file`; returns their count and the checksum of what was written."""
    count = 0
    seen: set[str] = set()
    hashed = _HashingWriter(file)
    with tarfile.open(fileobj=hashed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            try:
                key = validate_key(sample.key)
                if key in seen:
                    raise ValueError(f"duplicate sample key {key!r}")
                members = encode_sample(sample)
            except ValueError as error:
                raise ValueError(f"shard {destination}: {error}") from error
            seen.add(key)
            for extension, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))  # mtime 0: identical samples give identical shards
            count += 1
    return {"samples": count, "sha256": hashed.digest.hexdigest(), "bytes": hashed.size}


class _HashingWriter:
    """A write-only file that hashes and measures what passes through it (the shard's checksum and size without
    reading it back)."""

    def __init__(self, file: BinaryIO):
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        self.file.flush()


def split_location(destination: str) -> tuple[str, str]:
    """(the directory or object-store prefix, the file name) of a local path or a URL."""
    if is_remote(destination):
        directory, _, name = destination.rstrip("/").rpartition("/")
        return directory, name
    path = Path(destination)
    return str(path.parent), path.name


class ShardStore:
    """Where a shard set is written: a local directory, or an object-store prefix (`s3://`, `gs://`) through fsspec.

    Every write is whole or absent. A local file is written under `<name>.partial` and renamed; an object is staged
    in a local temporary file and uploaded under its final name, since S3 and GCS show an object only once its upload
    has completed (a killed multipart upload stays invisible) and replace an existing object at once. Renames are
    not used on object stores: there they are a copy and a delete, not atomic.
    """

    def __init__(self, location: str | os.PathLike):
        self.location = str(location).rstrip("/") or "/"
        self.remote = is_remote(self.location)
        if self.location.startswith(("pipe:", "http://", "https://")):
            raise ValueError(
                f"cannot write a shard set to {self.location}: pipe: commands and http(s):// URLs are read "
                "only; write to a local directory, s3://bucket/prefix or gs://bucket/prefix"
            )
        if self.remote:
            self.fs, self.root = object_store(self.location).core.url_to_fs(self.location)
        elif Path(self.location).is_file():
            raise NotADirectoryError(
                f"{self.location} is a file, not a directory: a shard set is a directory of shards and its manifest; "
                "give another output directory"
            )

    def url(self, name: str) -> str:
        return f"{self.location}/{name}" if self.remote else str(Path(self.location) / name)

    def __str__(self) -> str:
        return self.location

    def exists(self, name: str) -> bool:
        return self.fs.exists(f"{self.root}/{name}") if self.remote else os.path.exists(self.url(name))

    def names(self, folder: str = "") -> set[str]:
        """The file names in the set's directory (or one folder under it): one listing, not a request per file."""
        if self.remote:
            path = f"{self.root}/{folder}".rstrip("/")
            self.fs.invalidate_cache(path)  # other ranks and earlier runs write here too
            try:
                return {entry.rstrip("/").rpartition("/")[2] for entry in self.fs.ls(path, detail=False)}
            except FileNotFoundError:
                return set()
        directory = Path(self.location) / folder
        return {path.name for path in directory.iterdir()} if directory.is_dir() else set()

    def read_text(self, name: str) -> str:
        if self.remote:
            with self.fs.open(f"{self.root}/{name}", "r") as file:
                return file.read()
        return Path(self.url(name)).read_text()

    def write(self, name: str, fill: Callable[[BinaryIO], T]) -> T:
        """`fill(file)` writes the content; it appears under `name` only once `fill` has returned."""
        if self.remote:
            with tempfile.NamedTemporaryFile(prefix="synground-", suffix=f"-{name.replace('/', '_')}") as staged:
                result = fill(staged)
                staged.flush()
                self.fs.put_file(staged.name, f"{self.root}/{name}")
            return result
        path = Path(self.url(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:
            result = fill(file)
        os.replace(partial, path)
        return result

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write(name, lambda file: file.write(data))

    @contextlib.contextmanager
    def local_directory(self) -> Iterator[Path]:
        """A local directory whose files end up here: this directory itself, or (for an object store) a temporary one
        whose files are uploaded when the block ends without an error. For writers that only write local files."""
        if not self.remote:
            Path(self.location).mkdir(parents=True, exist_ok=True)
            yield Path(self.location)
            return
        with tempfile.TemporaryDirectory(prefix="synground-") as staging:
            yield Path(staging)
            for path in sorted(Path(staging).rglob("*")):
                if path.is_file():
                    self.fs.put_file(str(path), f"{self.root}/{path.relative_to(staging).as_posix()}")

    def remove(self, name: str) -> None:
        if self.remote:
            if self.exists(name):
                self.fs.rm_file(f"{self.root}/{name}")
        else:
            Path(self.url(name)).unlink(missing_ok=True)

    def remove_partials(self, folder: str = "") -> None:
        """Local `.partial` files a killed run left behind (an object store keeps no partial objects)."""
        if not self.remote:
            for leftover in (Path(self.location) / folder).glob("*.partial"):
                leftover.unlink()


class Manifest:
    """The record of finished shards in a directory: a shard not in the manifest does not exist.

    `complete` says whether the run that writes the set finished: False while it runs and after a crash, True at
    its end, with the totals of what it wrote and skipped. `command` is what finishes an unfinished set (a rerun
    resumes). Manifests written before the flag existed read as complete=None.
    """

    def __init__(self, location: str | os.PathLike | ShardStore, config: dict[str, Any] | None = None):
        self.store = location if isinstance(location, ShardStore) else ShardStore(location)
        self.path = self.store.url(MANIFEST_NAME)
        self.shards: list[dict[str, Any]] = []
        self.config = config or {}
        self.complete: bool | None = False
        self.totals: dict[str, Any] = {}
        self.command: str | None = None
        try:
            record = read_manifest(self.path)
        except FileNotFoundError:  # a set not started yet
            return
        self.shards = record["shards"]
        self.config = record.get("config", self.config)
        self.complete, self.totals, self.command = record.get("complete"), record.get("totals", {}), record.get("command")

    def add(self, entry: dict[str, Any]) -> None:
        self.shards = [e for e in self.shards if e["name"] != entry["name"]] + [entry]
        self.shards.sort(key=lambda e: e["name"])
        self.complete = False
        self.save()

    def finish(self, totals: dict[str, Any]) -> None:
        self.complete, self.totals = True, totals
        self.save()

    def save(self) -> None:
        record = {
            "complete": self.complete,
            "command": self.command,
            "totals": self.totals,
            "shards": self.shards,
            "config": self.config,
        }
        self.store.write_bytes(MANIFEST_NAME, json.dumps(record, indent=1).encode())


def read_manifest(location: str | os.PathLike) -> dict[str, Any]:
    """The record of a manifest file or object (local path or URL), checked for its list of shards."""
    location = str(location)
    try:
        with open_shard(location) as file:
            record = json.loads(file.read())
        shards = record["shards"]
    except FileNotFoundError:
        raise
    except NotADirectoryError as error:
        raise NotADirectoryError(
            f"{Path(location).parent} is a file, not a directory: a shard set is a directory of shards and its "
            "manifest; give the set's directory"
        ) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"manifest {location} is unreadable: {error}") from error
    if not isinstance(shards, list):
        raise ValueError(f"manifest {location}: 'shards' must be a list")
    return record


_WARNED_LEGACY: set[str] = set()


class IncompleteShardSet(ValueError):
    """A shard set whose writing run did not finish: reading it would silently use a part of the data."""


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
    the command that finishes it, unless `allow_partial`; then the shards finished so far are read. A manifest that
    lists a shard twice is refused. Files named by a pattern are taken as they are.
    """
    return list(listed_shards(spec, allow_partial))


def listed_shards(spec: str | os.PathLike, allow_partial: bool = False) -> dict[str, dict[str, Any]]:
    """{shard: its manifest entry} for the shards `resolve_shards` names, in its order; an empty entry for shards named
    by a pattern. `iterate_shard` checks a shard against its entry."""
    spec = str(spec)
    if spec.startswith("pipe:"):
        return {url: {} for url in braceexpand(spec)}
    if is_remote(spec):
        return _remote_shards(spec, allow_partial)
    manifest = manifest_of(spec)
    if manifest is not None:
        manifest_path = Path(manifest)
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"no {MANIFEST_NAME} in {manifest_path.parent}: write shards with generate.py or name the .tar files"
            )
        files = {
            str(manifest_path.parent / entry["name"]): entry
            for entry in _manifest_shards(read_manifest(manifest_path), str(manifest_path), allow_partial)
        }
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"manifest {manifest_path} lists shards that do not exist: {missing[:3]}")
        return files
    files = sorted({match for pattern in braceexpand(spec) for match in glob.glob(os.path.expanduser(pattern))})
    if not files:
        raise FileNotFoundError(f"shard path {spec!r} matches no file")
    return {file: {} for file in files}


def _remote_shards(spec: str, allow_partial: bool) -> dict[str, dict[str, Any]]:
    fsspec = object_store(spec)
    manifest_url = manifest_of(spec)
    if manifest_url is None:  # named .tar objects, brace patterns, globs
        fs, _ = fsspec.core.url_to_fs(spec)
        urls = [
            url
            for pattern in braceexpand(spec)
            for url in ([pattern] if "*" not in pattern else [fs.unstrip_protocol(p) for p in sorted(fs.glob(pattern))])
        ]
        if not urls:
            raise FileNotFoundError(f"shard pattern {spec!r} matches no object")
        return {url: {} for url in urls}
    base = manifest_url[: -len(MANIFEST_NAME)].rstrip("/")
    try:
        record = read_manifest(manifest_url)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} at {base}: write shards there with generate.py or convert.py, or name the .tar objects"
        ) from error
    return {f"{base}/{entry['name']}": entry for entry in _manifest_shards(record, manifest_url, allow_partial)}


def _manifest_shards(record: dict[str, Any], manifest: str, allow_partial: bool) -> list[dict[str, Any]]:
    """The shard entries a manifest lists, once it is known to be whole (or a partial set is asked for) and to list
    each shard once."""
    shards = record["shards"]
    location = manifest[: -len(MANIFEST_NAME)].rstrip("/")
    if record.get("complete") is False and not allow_partial:
        command = record.get("command") or "the conversion or generation that wrote it, with the same settings"
        raise IncompleteShardSet(
            f"{location} is an unfinished shard set ({len(shards)} shards so far; {manifest} says the run that writes "
            f"it did not finish). Finish it by running again: {command} (it resumes where it stopped); or read the "
            "shards finished so far with allow_partial=True (data.allow_partial=true)"
        )
    if record.get("complete") is None and manifest not in _WARNED_LEGACY:
        _WARNED_LEGACY.add(manifest)
        log.warning("%s was written before manifests recorded whether their run finished: taken as complete", manifest)
    if not shards:
        raise ValueError(f"manifest {manifest} lists no shards")
    repeated = {name: count for name, count in Counter(entry["name"] for entry in shards).items() if count > 1}
    if repeated:
        listed = ", ".join(f"{name} {count} times" for name, count in sorted(repeated.items()))
        raise ValueError(
            f"manifest {manifest} lists {listed}: every sample of a repeated shard would be read and scored again. "
            "A writer lists each shard once: remove the repeated entries, or write the set again"
        )
    by_content: dict[str, list[str]] = {}
    for entry in shards:
        if entry.get("sha256") and entry.get("samples"):
            by_content.setdefault(entry["sha256"], []).append(entry["name"])
    copies = [names for names in by_content.values() if len(names) > 1]
    if copies:  # one shard under two names: its samples would be read and scored twice
        raise ValueError(
            f"manifest {manifest} lists shards with the same content (sha256) under different names: "
            + "; ".join(" = ".join(names) for names in copies[:3])
            + ". A writer never writes the same samples twice: remove the copies, or write the set again"
        )
    return shards


def iterate_shard(url: str, issues: Counter[str], entry: Mapping[str, Any] | None = None) -> Iterator[GroundingSample]:
    """The samples of one shard in order; a corrupt image or record, and a key met again, is skipped with a warning
    and counted. With its manifest `entry` (`listed_shards`), a local shard of another size than listed is not read
    (counted as `shard_mismatch`), and a shard read whole that holds another number of samples than listed is counted
    so too; its samples have been read by then. The sha256 is not checked here: that reads the shard twice (see
    `shard_difference`, checked when a writer resumes and by `synground-verify-shards`)."""
    entry = entry or {}
    if entry.get("bytes") is not None and not is_remote(url) and not url.startswith("pipe:") and os.path.isfile(url):
        size = os.path.getsize(url)
        if size != entry["bytes"]:
            count_skip(issues, "shard_mismatch", url)
            log.warning(
                "shard %s is %d bytes, its manifest lists %d: not the shard that was written, so none of it is read. "
                "Running the command that wrote the set again rewrites it; synground-verify-shards checks a set",
                url,
                size,
                entry["bytes"],
            )
            return
    # webdataset's own tar expansion; grouping and decoding are ours (nothing is unpickled, a repeated key is seen)
    failed = False

    def warn_tar(error: Exception) -> bool:  # webdataset reports a broken tar at each of its stages: count it once
        nonlocal failed
        if not failed:
            failed = True
            count_skip(issues, "corrupt_shard", url)
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

    files = wds.tariterators.tar_file_expander(opened(), handler=warn_tar, eof_value=None)
    seen: Counter[str] = Counter()
    for key, raw in _by_key(files):
        seen[key] += 1
        if seen[key] > 1:  # keys are unique: a repeat would be read, trained on and scored twice
            count_skip(issues, "duplicate_key", url, key, seen[key])
            log.warning("shard %s, sample %r met again; the repeat is skipped", url, key)
            continue
        try:
            if "jpg" not in raw or "json" not in raw:
                raise ValueError(f"missing {'jpg' if 'jpg' not in raw else 'json'} member")
            image = decode_image(io.BytesIO(raw["jpg"]))
            yield sample_from_metadata(key, image if image.mode == "RGB" else image.convert("RGB"), raw["json"])
        except ValueError as error:
            count_skip(issues, "corrupt_sample", url, key)
            log.warning("shard %s, sample %r skipped: %s", url, key, error)
    if not failed and entry.get("samples") is not None and len(seen) != entry["samples"]:  # a broken tar is counted already
        count_skip(issues, "shard_mismatch", url)
        log.warning(
            "shard %s holds %d samples, its manifest lists %d: not the shard that was written (its samples were read). "
            "Running the command that wrote the set again rewrites it; synground-verify-shards checks a set",
            url,
            len(seen),
            entry["samples"],
        )


def _by_key(files: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of consecutive tar members sharing a key, as webdataset groups them; a member name met
    again within a group starts another sample under the same key (webdataset calls that a broken tar)."""
    key, members = None, {}
    for file in files:
        prefix, extension = wds.tariterators.base_plus_ext(file["fname"])
        if prefix is None:
            continue
        if prefix != key or extension.lower() in members:
            if members:
                yield key, members
            key, members = prefix, {}
        members[extension.lower()] = file["data"]
    if members:
        yield key, members


def shard_difference(url: str, entry: Mapping[str, Any], checksum: bool = True) -> str | None:
    """How the shard at `url` differs from its manifest entry, or None: missing, another size, or (`checksum`, which
    reads the whole shard) another sha256. Entries written before sizes were listed have their size unchecked."""
    try:
        if is_remote(url):
            fs, path = object_store(url).core.url_to_fs(url)
            size = fs.size(path)
        else:
            size = os.path.getsize(url)
    except FileNotFoundError:
        return "missing"
    if entry.get("bytes") is not None and size != entry["bytes"]:
        return f"{size} bytes, the manifest lists {entry['bytes']}"
    if checksum and entry.get("sha256"):
        digest = hashlib.sha256()
        with open_shard(url) as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry["sha256"]:
            return f"sha256 {digest.hexdigest()}, the manifest lists {entry['sha256']}"
    return None


def kept_shards(store: ShardStore, entries: Iterable[Mapping[str, Any]]) -> set[str]:
    """The names of the listed shards whose files are as listed, which a resumed writer keeps; it writes the others
    again (it makes each shard the same way every time), with a warning naming each and what differs. Local shards are
    checked by size and sha256; objects by size only: an object appears only once its upload completed, and hashing
    would download the whole set."""
    kept = set()
    for entry in entries:
        difference = shard_difference(store.url(entry["name"]), entry, checksum=not store.remote)
        if difference is None:
            kept.add(entry["name"])
        else:
            log.warning("%s is not the shard its manifest lists (%s): it is written again", store.url(entry["name"]), difference)
    return kept
