"""Shard sets as tests need them: shapes samples, random images, shards with planted faults and their manifests."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from synground.data import GroundingSample, Manifest, Region, write_shard
from synground.data.schema import GenerationRequest
from synground.generation.runtime import Rejected, StageClock
from synground.shapes import ShapesGenerator


def shapes(n, start=0):
    return ShapesGenerator("clean", image_size=64).generate([GenerationRequest(f"s-{i}", i) for i in range(start, start + n)])


GOOD = [[8.0, 8.0, 40.0, 40.0]]


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def planted_shard(path: Path, regions: list[list[Region]], broken: dict[int, str]) -> None:
    """One shard of len(regions) samples; broken[i] = "jpg" or "json" makes sample i's image or record unreadable."""
    samples = [
        GroundingSample(f"{path.stem}-{i}", image(i), "", sample_regions, "planted") for i, sample_regions in enumerate(regions)
    ]
    write_shard(path.with_suffix(".tmp.tar"), samples)
    with tarfile.open(path.with_suffix(".tmp.tar")) as source, tarfile.open(path, "w") as target:
        for member in source.getmembers():
            key, extension = member.name.rsplit(".", 1)
            payload = source.extractfile(member).read()
            if broken.get(int(key.rsplit("-", 1)[1])) == extension:
                payload = b"not a jpeg" if extension == "jpg" else b'{"regions": [broken'
            member.size = len(payload)
            target.addfile(member, io.BytesIO(payload))
    path.with_suffix(".tmp.tar").unlink()


def shard_set(directory: Path, shards: dict[str, tuple[list[list[Region]], dict[int, str]] | bytes]) -> str:
    """A finished set of planted shards (see `planted_shard`) or files of the given bytes, its manifest listing each as
    it is, as the writer that made them would have: only the planted faults are met."""
    directory.mkdir(parents=True)
    manifest = Manifest(directory)
    for name, content in shards.items():
        if isinstance(content, bytes):
            (directory / name).write_bytes(content)
        else:
            planted_shard(directory / name, *content)
        manifest.add(listed_entry(directory / name))
    manifest.finish({})
    return str(directory)


def listed_entry(path: Path) -> dict:
    """A manifest entry for the file as it is: its size, sha256 and, if it is a readable tar, the keys it holds."""
    data = path.read_bytes()
    try:
        with tarfile.open(path) as tar:
            samples = len({member.name.split(".", 1)[0] for member in tar.getmembers()})
    except tarfile.TarError:
        samples = 0
    return {"name": path.name, "samples": samples, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


class OddRejecter:
    """Shapes scenes of which every odd request is rejected as `odd_index`, kept with its index as the failing score."""

    def __init__(self):
        self.shapes, self.clock = ShapesGenerator("clean", 32), StageClock()

    def generate(self, requests):
        kept = []
        for request, sample in zip(requests, self.shapes.generate(requests)):
            if request.index % 2:
                candidate = Rejected(sample.key, sample.caption, sample.image, sample.regions)
                self.clock.reject("odd_index", candidate=candidate, score=float(request.index), threshold=0.0)
            else:
                kept.append(sample)
        return kept
