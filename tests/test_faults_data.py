"""Fault injections on the data side: hostile or damaged shards, records and images are planted, and each must be
refused or skipped and counted once, naming the shard and key, whatever the number of workers."""

import hashlib
import io
import json
import logging
import math
import shutil
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from support.raw_datasets import write_visual_genome
from support.shards import GOOD, image, shapes, shard_set
from synground.callbacks import DataIssueCounts
from synground.data import GroundingDataModule, GroundingSample, Region, streams
from synground.data.convert import convert_records
from synground.data.leakage import leakage_report
from synground.data.readers import Record, load_record, visual_genome_records
from synground.data.shards import Manifest, iterate_shard, listed_shards, resolve_shards, write_shard
from synground.data.transforms import clean_regions
from synground.data.verify import main as verify_main
from synground.generation.writing import generate_shards
from synground.shapes import ShapesGenerator


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


def with_boxes(path: Path, boxes: dict[str, list]) -> dict[str, bytes]:
    """The `<key>.json` payloads of the shard at `path` with their first region's boxes replaced, as raw JSON text."""
    payloads = {}
    with tarfile.open(path) as tar:
        for key, replacement in boxes.items():
            record = json.loads(tar.extractfile(f"{key}.json").read())
            record["regions"][0]["boxes"] = replacement
            payloads[f"{key}.json"] = json.dumps(record).encode()  # NaN and inf as JSON's NaN / Infinity
    return payloads


# 2. non-finite boxes are refused where samples are made and skipped, counted, where they are read


def test_a_non_finite_box_in_a_shard_skips_its_sample_naming_shard_and_key(tmp_path, caplog):
    write_shard(tmp_path / "clean.tar", shapes(4))
    nan_box, inf_box = [["nan", 2, 30, 30]], [[2.0, 2.0, float("inf"), 30.0]]
    replace_members(
        tmp_path / "clean.tar", tmp_path / "nan.tar", with_boxes(tmp_path / "clean.tar", {"s-1": nan_box, "s-2": inf_box})
    )
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        keys = [sample.key for sample in iterate_shard(str(tmp_path / "nan.tar"), issues)]
    assert keys == ["s-0", "s-3"]
    assert issues == {"corrupt_sample": 2}
    assert "nan.tar" in caplog.text and "'s-1'" in caplog.text and "'s-2'" in caplog.text and "not finite" in caplog.text


def test_a_record_of_another_image_size_than_its_image_is_skipped_naming_both_sizes(tmp_path, caplog):
    """Its boxes are in the coordinates of an image that is not the one stored: scored, they would be wrong."""
    write_shard(tmp_path / "clean.tar", shapes(3))
    with tarfile.open(tmp_path / "clean.tar") as tar:
        record = json.loads(tar.extractfile("s-1.json").read())
    width, height = record["width"], record["height"]
    record.update(width=2 * width)
    replace_members(tmp_path / "clean.tar", tmp_path / "resized.tar", {"s-1.json": json.dumps(record).encode()})
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        keys = [sample.key for sample in iterate_shard(str(tmp_path / "resized.tar"), issues)]
    assert keys == ["s-0", "s-2"] and issues == {"corrupt_sample": 1}
    assert f"a {2 * width} x {height} image, the image is {width} x {height}" in caplog.text and "'s-1'" in caplog.text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_the_writer_refuses_a_non_finite_box_naming_shard_and_key(tmp_path, value):
    samples = shapes(2)
    samples[1].regions[0].boxes[0][2] = value
    with pytest.raises(ValueError, match=r"a\.tar.*'s-1'.*not finite"):
        write_shard(tmp_path / "a.tar", samples)
    assert not (tmp_path / "a.tar").exists()


def test_non_finite_boxes_from_a_generator_or_a_reader_are_dropped_as_malformed():
    sample = GroundingSample(
        "k",
        image(0),
        "",
        [Region("a", [[float("nan"), 8.0, 40.0, 40.0], *GOOD]), Region("b", [[0.0, 0.0, float("inf"), 9.0]])],
        "x",
    )
    issues = Counter()
    assert [(r.phrase, r.boxes) for r in clean_regions(sample, issues)] == [("a", GOOD)]
    assert issues == {"box_malformed": 2, "region_dropped": 1}


def test_a_conversion_never_writes_a_non_finite_box(tmp_path):
    write_visual_genome(tmp_path / "vg", count=3, regions_per_image=2)
    descriptions = json.loads((tmp_path / "vg" / "region_descriptions.json").read_text())
    descriptions[0]["regions"][0]["x"] = "nan"
    descriptions[1]["regions"][1]["width"] = "inf"
    (tmp_path / "vg" / "region_descriptions.json").write_text(json.dumps(descriptions))
    issues = Counter()
    report = convert_records(
        visual_genome_records(tmp_path / "vg", issues=issues), tmp_path / "shards", "vg", reader_issues=issues
    )
    assert report["skipped"] == {"box_malformed": 2, "region_dropped": 2}
    read_issues = Counter()
    samples = [s for shard in resolve_shards(str(tmp_path / "shards")) for s in iterate_shard(shard, read_issues)]
    assert len(samples) == 3 and not read_issues
    assert all(math.isfinite(v) for s in samples for r in s.regions for box in r.boxes for v in box)


def test_training_and_evaluation_skip_a_sample_with_a_nan_box_and_count_it(tmp_path):
    write_shard(tmp_path / "clean.tar", shapes(4))
    replace_members(tmp_path / "clean.tar", tmp_path / "a.tar", with_boxes(tmp_path / "clean.tar", {"s-2": [["nan"] * 4]}))
    source = shard_set(tmp_path / "set", {"a.tar": (tmp_path / "a.tar").read_bytes()})
    datamodule = GroundingDataModule(
        train={"real": source}, test={"set": source}, image_size=32, batch_size=3, batches_per_epoch=2, num_workers=0
    )
    batches = list(datamodule.train_dataloader())  # 6 samples of 3 readable: the shard read twice
    assert {key for batch in batches for key in batch["keys"]} == {"s-0", "s-1", "s-3"}
    # met in both passes, named the same each time: DataIssueCounts counts it once
    assert [fault for batch in batches for fault in batch["data_faults"]] == [f"corrupt_sample {source}/a.tar s-2"] * 2
    test = list(datamodule.test_dataloader()[0])
    assert {key for batch in test for key in batch["image_keys"]} == {"s-0", "s-1", "s-3"}


# 7. skips are counted alike whatever the number of workers


class KeysSeen(L.LightningModule):
    """Learns nothing: keeps the sample keys of every batch it is given."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.keys = {"train": [], "val": [], "test": []}

    def training_step(self, batch, batch_idx):
        self.keys["train"] += batch["keys"]
        return self.weight * 0.0

    def validation_step(self, batch, batch_idx):
        self.keys["val"] += batch["image_keys"]

    def test_step(self, batch, batch_idx):
        self.keys["test"] += batch["image_keys"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def counting_trainer(**settings) -> L.Trainer:
    """A quiet CPU Trainer whose only callback counts what the data pipeline skipped."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DataIssueCounts()],
        **settings,
    )


@pytest.fixture
def damaged_set(tmp_path) -> str:
    """8 good samples in d-000000.tar, and d-000001.tar of 0 bytes."""
    return shard_set(tmp_path / "damaged", {"d-000000.tar": ([[Region("a square", GOOD)]] * 8, {}), "d-000001.tar": b""})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_zero_byte_shard_beside_a_good_one_is_counted_once_and_training_goes_on_with_any_number_of_workers(
    damaged_set, workers
):
    source = damaged_set
    datamodule = GroundingDataModule(
        train={"real": source},
        val={"damaged": source},
        test={"damaged": source},
        image_size=32,
        batch_size=4,
        eval_batch_size=4,
        batches_per_epoch=3,  # 12 samples of 8: every worker needs more than its share of the dealt shards
        num_workers=workers,
    )
    module = KeysSeen()
    trainer = counting_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    logged = {name: value.item() for name, value in trainer.callback_metrics.items()}
    (tested,) = trainer.test(module, datamodule=datamodule, verbose=False)
    good = {f"d-000000-{i}" for i in range(8)}
    assert len(module.keys["train"]) == 12 and set(module.keys["train"]) == good
    assert logged["data/corrupt_shard"] == 1  # read in several passes, by one worker or by two: counted once
    assert sorted(module.keys["val"]) == sorted(module.keys["test"]) == sorted(good)
    assert {name: value for name, value in logged.items() if name.startswith("val/data/")} == {
        "val/data/damaged/corrupt_shard": 1
    }
    assert {name: value for name, value in tested.items() if name.startswith("test/data/")} == {
        "test/data/damaged/corrupt_shard": 1
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_sample_met_in_several_training_passes_counts_once_per_epoch_with_any_number_of_workers(tmp_path, workers):
    # 6 readable samples, 1 unreadable and 1 with a clipped box; 5 batches of 4 read the set three times or more, in
    # more passes with 2 workers (each worker draws its own batches from its own pass)
    clipped = [[Region("a square", [[-4.0, 8.0, 40.0, 40.0]])]]
    source = shard_set(
        tmp_path / "set",
        {
            "t-000000.tar": ([[Region("a square", GOOD)]] * 3 + clipped, {1: "jpg"}),
            "t-000001.tar": ([[Region("b", GOOD)]] * 4, {}),
        },
    )
    datamodule = GroundingDataModule(
        train={"real": source}, image_size=32, batch_size=4, batches_per_epoch=5, num_workers=workers
    )
    trainer = counting_trainer(max_epochs=2)
    trainer.fit(KeysSeen(), datamodule=datamodule)
    logged = {name: value.item() for name, value in trainer.callback_metrics.items() if name.startswith("data/")}
    assert logged == {"data/corrupt_sample": 1, "data/box_clipped": 1}  # the last epoch's: each bad sample once


def test_a_rank_whose_whole_share_is_unreadable_still_reports_it(damaged_set, monkeypatch):
    monkeypatch.setattr(streams, "_worker_slot", lambda worker=None: (1, 2))  # rank 1 of 2: d-000001.tar alone
    loader = GroundingDataModule(test={"damaged": damaged_set}, image_size=32, num_workers=0).test_dataloader()[0]
    assert list(loader) == []
    assert loader.data_issues == {"corrupt_shard": 1}


# 8. integrity: what a manifest lists is what is read, once


def test_a_manifest_listing_a_shard_twice_is_refused_naming_it(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.add(write_shard(tmp_path / "a.tar", shapes(2)))
    manifest.add(write_shard(tmp_path / "b.tar", shapes(2, start=2)))
    manifest.finish({})
    record = json.loads((tmp_path / "manifest.json").read_text())
    record["shards"].append(record["shards"][0])
    (tmp_path / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"manifest\.json lists a\.tar 2 times"):
        resolve_shards(str(tmp_path))


def test_a_shard_copied_under_another_name_into_a_manifest_is_refused_naming_both(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.add(write_shard(tmp_path / "a.tar", shapes(2)))
    manifest.finish({})
    shutil.copy(tmp_path / "a.tar", tmp_path / "b.tar")
    record = json.loads((tmp_path / "manifest.json").read_text())
    record["shards"].append({**record["shards"][0], "name": "b.tar"})
    (tmp_path / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"same content \(sha256\) under different names: a\.tar = b\.tar"):
        resolve_shards(str(tmp_path))


def test_a_key_repeated_in_a_shard_is_read_once_and_counted_once_per_repeat(tmp_path, caplog):
    write_shard(tmp_path / "clean.tar", shapes(3))
    with tarfile.open(tmp_path / "clean.tar") as clean, tarfile.open(tmp_path / "repeated.tar", "w") as repeated:
        members = {member.name: (member, clean.extractfile(member).read()) for member in clean.getmembers()}
        # s-0 again after s-1, and s-2 twice in a row (webdataset groups by a change of key: both are two samples)
        for name in ["s-0.jpg", "s-0.json", "s-1.jpg", "s-1.json", "s-0.jpg", "s-0.json", *["s-2.jpg", "s-2.json"] * 2]:
            member, payload = members[name]
            repeated.addfile(member, io.BytesIO(payload))
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        keys = [sample.key for sample in iterate_shard(str(tmp_path / "repeated.tar"), issues)]
    assert keys == ["s-0", "s-1", "s-2"]
    assert issues == {"duplicate_key": 2}
    assert "repeated.tar" in caplog.text and "'s-0'" in caplog.text and "'s-2'" in caplog.text


@pytest.fixture
def written_set(tmp_path) -> Path:
    """A set of two shards of 3 samples as the writer lists them (size, sample count, sha256)."""
    manifest = Manifest(tmp_path / "set")
    manifest.add(write_shard(tmp_path / "set" / "a.tar", shapes(3)))
    manifest.add(write_shard(tmp_path / "set" / "b.tar", shapes(3, start=3)))
    manifest.finish({})
    return tmp_path / "set"


def read_set(directory: Path, issues: Counter) -> list[str]:
    return [sample.key for url, entry in listed_shards(str(directory)).items() for sample in iterate_shard(url, issues, entry)]


def test_the_writer_lists_each_shard_s_size(written_set):
    for entry in json.loads((written_set / "manifest.json").read_text())["shards"]:
        data = (written_set / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_shard_of_another_size_than_its_manifest_lists_is_skipped_unread_and_counted(written_set, caplog):
    write_shard(written_set / "a.tar", shapes(12, start=10))  # replaced after the manifest was written
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        assert read_set(written_set, issues) == ["s-3", "s-4", "s-5"]
    assert issues == {"shard_mismatch": 1}
    assert "a.tar" in caplog.text and "bytes" in caplog.text


def test_a_shard_holding_another_number_of_samples_than_listed_is_counted_naming_both(written_set, caplog):
    record = json.loads((written_set / "manifest.json").read_text())
    for entry in record["shards"]:
        del entry["bytes"]  # a manifest from before sizes were listed: the count is still checked
    record["shards"][1]["samples"] = 5
    (written_set / "manifest.json").write_text(json.dumps(record))
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        assert len(read_set(written_set, issues)) == 6
    assert issues == {"shard_mismatch": 1}
    assert "b.tar" in caplog.text and "holds 3 samples" in caplog.text and "lists 5" in caplog.text


def tamper(path: Path) -> None:
    """One byte changed in the middle of the file: the same size, another sha256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_verify_command_names_every_shard_that_is_not_as_listed(written_set, capsys):
    assert verify_main([str(written_set)]) == 0
    tamper(written_set / "b.tar")
    assert verify_main([str(written_set)]) == 1
    printed = capsys.readouterr().out
    assert "b.tar" in printed and "sha256" in printed and "a.tar" not in printed


def test_resumed_generation_rewrites_a_kept_shard_that_is_not_as_listed(tmp_path, caplog):
    generator = ShapesGenerator("clean", image_size=48)
    generate_shards(generator, tmp_path, num_samples=6, samples_per_shard=3, name="x")
    whole = (tmp_path / "x-000000.tar").read_bytes()
    tamper(tmp_path / "x-000000.tar")
    (tmp_path / "x-000001.tar").unlink()  # and a listed shard is gone
    with caplog.at_level(logging.WARNING):
        generate_shards(generator, tmp_path, num_samples=6, samples_per_shard=3, name="x")
    assert (tmp_path / "x-000000.tar").read_bytes() == whole
    assert (tmp_path / "x-000001.tar").exists()
    assert "x-000000.tar" in caplog.text and "sha256" in caplog.text


def test_resumed_conversion_rewrites_a_kept_shard_that_is_not_as_listed(tmp_path, caplog):
    write_visual_genome(tmp_path / "vg", count=6, regions_per_image=2)

    def convert():
        return convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "shards", "vg", samples_per_shard=2)

    convert()
    whole = (tmp_path / "shards" / "vg-000001.tar").read_bytes()
    tamper(tmp_path / "shards" / "vg-000001.tar")
    (tmp_path / "shards" / "vg-000002.tar").unlink()
    with caplog.at_level(logging.WARNING):
        report = convert()
    assert (tmp_path / "shards" / "vg-000001.tar").read_bytes() == whole
    assert (tmp_path / "shards" / "vg-000002.tar").exists() and report["samples"] == 6
    assert "vg-000001.tar" in caplog.text and "sha256" in caplog.text


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
