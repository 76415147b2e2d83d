"""The dataset report: what was generated, what was rejected and why, as numbers and plots."""

import io
import json
import tarfile

import pytest
from PIL import Image

from synground.data.schema import GenerationRequest, GroundingSample, Region
from synground.data.shards import write_shard
from synground.generation import ShapesGenerator
from synground.generation.report import dataset_report
from synground.generation.writing import generate_shards


def add_telemetry(directory, rejections, stage_seconds):
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry, counts, seconds in zip(manifest["shards"], rejections, stage_seconds):
        entry.update(requests=entry["samples"] + sum(counts.values()), rejections=counts,
                     stage_seconds=seconds, stage_items={stage: 10 for stage in seconds})
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_counts_distributions_and_rejections_match_what_was_written(tmp_path):
    generate_shards(ShapesGenerator("clean", 64), tmp_path, num_samples=10, samples_per_shard=4, name="s")
    written = ShapesGenerator("clean", 64).generate([GenerationRequest(f"s-{i}", i) for i in range(10)])
    add_telemetry(tmp_path, [{"no_phrases": 2}, {"no_phrases": 1, "low_clip_score": 3}, {}],
                  [{"text_to_image": 2.0}, {"text_to_image": 3.0, "detect": 1.0}, {}])

    summary = dataset_report(tmp_path)
    assert summary["samples"] == 10 and summary["shards"] == 3
    assert summary["regions"] == sum(len(s.regions) for s in written)
    assert summary["boxes"] == sum(len(r.boxes) for s in written for r in s.regions)
    assert summary["requests"] == 16 and summary["acceptance_rate"] == pytest.approx(10 / 16, abs=1e-4)
    assert summary["rejections"] == {"low_clip_score": 3, "no_phrases": 3}
    assert summary["stages"]["text_to_image"] == {"seconds": 5.0, "items": 20, "items_per_second": 4.0}
    area = summary["distributions"]["box_area"]
    assert 0 < area["min"] <= area["max"] <= 1
    assert "detector_score" not in summary["distributions"]  # shapes have exact boxes, no detector

    report = tmp_path / "report"
    assert json.loads((report / "report.json").read_text()) == summary
    for plot in ("boxes_per_image", "phrase_length", "box_area", "rejections", "stage_throughput"):
        with Image.open(report / f"{plot}.png") as image:
            assert image.format == "PNG" and image.width > 100
    assert not (report / "detector_score.png").exists() and not (report / "clip_score.png").exists()
    assert "no phrases | 3" in (report / "report.md").read_text()


def test_a_malformed_record_is_counted_and_a_missing_shard_is_named(tmp_path):
    good = GroundingSample("g-0", Image.new("RGB", (32, 32)), "c", [Region("a dog", [[1, 1, 9, 9]], 0.7)], "synground",
                           {"clip_score": 0.31})
    bad = GroundingSample("g-1", Image.new("RGB", (32, 32)), "c", [], "synground")
    entry = write_shard(tmp_path / "g-000000.tar", [good, bad])
    manifest = {"shards": [entry], "config": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    # break the second record: not JSON any more
    with tarfile.open(tmp_path / "g-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members["g-1.json"] = b"{" + members["g-1.json"][1:].replace(b'"', b"'")
    with tarfile.open(tmp_path / "g-000000.tar", "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    summary = dataset_report(tmp_path)
    assert summary["unreadable_records"] == 1 and summary["samples"] == 2
    assert summary["distributions"]["detector_score"]["mean"] == 0.7
    assert summary["distributions"]["clip_score"]["mean"] == 0.31
    assert (tmp_path / "report" / "detector_score.png").exists()

    manifest["shards"].append({"name": "g-000001.tar", "samples": 1, "sha256": ""})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="g-000001.tar"):
        dataset_report(tmp_path)
