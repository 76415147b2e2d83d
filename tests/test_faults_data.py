"""Fault injections on the data side: hostile or damaged shards, records and images are planted, and each must be
refused or skipped and counted once, naming the shard and key, whatever the number of workers."""

import io
import logging
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from synground.data.leakage import leakage_report
from synground.data.readers import Record, load_record
from synground.data.shards import Manifest, iterate_shard, write_shard
from test_shards import shapes


def replace_members(source: Path, target: Path, payloads: dict[str, bytes]) -> None:
    """A copy of the tar `source` at `target` with the members named in `payloads` holding those bytes instead."""
    with tarfile.open(source) as original, tarfile.open(target, "w") as copy:
        for member in original.getmembers():
            payload = payloads.get(member.name, original.extractfile(member).read())
            member.size = len(payload)
            copy.addfile(member, io.BytesIO(payload))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels: PIL refuses it on opening, before decoding a pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b"")
    )


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


# 10. decompression bombs are unreadable samples: skipped and counted, naming shard and key


@pytest.fixture
def bomb_shard(tmp_path) -> Path:
    """s-0..s-3; s-1's image is a 20000 x 20000 bomb."""
    write_shard(tmp_path / "clean.tar", shapes(4))
    replace_members(tmp_path / "clean.tar", tmp_path / "bomb.tar", {"s-1.jpg": bomb_png(20_000, 20_000)})
    return tmp_path / "bomb.tar"


def test_a_decompression_bomb_in_a_shard_is_skipped_and_counted_naming_shard_and_key(bomb_shard, caplog):
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        keys = [sample.key for sample in iterate_shard(str(bomb_shard), issues)]
    assert keys == ["s-0", "s-2", "s-3"]
    assert issues == {"corrupt_sample": 1}
    assert "bomb.tar" in caplog.text and "'s-1'" in caplog.text


def test_an_image_over_pil_s_warning_size_is_skipped_like_a_bomb(tmp_path, monkeypatch):
    # PIL warns (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that, and decodes anyway
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    write_shard(tmp_path / "clean.tar", shapes(2))
    replace_members(tmp_path / "clean.tar", tmp_path / "big.tar", {"s-0.jpg": jpeg((80, 80))})
    issues = Counter()
    assert [sample.key for sample in iterate_shard(str(tmp_path / "big.tar"), issues)] == ["s-1"]
    assert issues == {"corrupt_sample": 1}


def test_the_leakage_report_skips_and_counts_a_bomb(bomb_shard, tmp_path):
    for name in ("train", "eval"):
        (tmp_path / name).mkdir()
        manifest = Manifest(tmp_path / name)
        (tmp_path / name / "a.tar").write_bytes(bomb_shard.read_bytes())
        manifest.add({"name": "a.tar", "samples": 4, "sha256": ""})
        manifest.finish({})
    report, _, skipped = leakage_report({"train": str(tmp_path / "train")}, {"eval": str(tmp_path / "eval")})
    assert report["train"]["samples"] == 3
    assert skipped == {"train": {"corrupt_sample": 1}, "eval": {"corrupt_sample": 1}}


def test_a_conversion_counts_a_bomb_as_an_unreadable_image(tmp_path):
    (tmp_path / "bomb.jpg").write_bytes(bomb_png(20_000, 20_000))
    issues = Counter()
    record = Record("vg-1", tmp_path / "bomb.jpg", "", [], "visual_genome")
    assert load_record(record, issues) is None
    assert issues == {"unreadable_image": 1}
