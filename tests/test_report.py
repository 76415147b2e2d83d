"""The dataset report: what was generated, what was rejected and why, as numbers and plots."""

import io
import json
import sys
import tarfile

import pytest
from PIL import Image

from synground.data.schema import GenerationRequest, GroundingSample, Region
from synground.data.shards import write_shard
from synground.generation.report import dataset_report, main
from synground.generation.writing import generate_shards
from synground.shapes import ShapesGenerator


def edit_manifest(directory, edit):
    manifest = json.loads((directory / "manifest.json").read_text())
    for index, entry in enumerate(manifest["shards"]):
        edit(index, entry)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_counts_distributions_and_rejections_match_what_was_written(tmp_path):
    generate_shards(ShapesGenerator("clean", 64), tmp_path, num_samples=10, samples_per_shard=4, name="s")
    written = ShapesGenerator("clean", 64).generate([GenerationRequest(f"s-{i}", i) for i in range(10)])
    rejections = [{"no_phrases": 2}, {"no_phrases": 1, "low_clip_score": 3}, {}]
    stage_seconds = [{"text_to_image": 2.0}, {"text_to_image": 3.0, "detect": 1.0}, {}]
    edit_manifest(
        tmp_path,
        lambda i, entry: entry.update(
            requests=entry["samples"] + sum(rejections[i].values()),
            rejections=rejections[i],
            stage_seconds=stage_seconds[i],
            stage_items=dict.fromkeys(stage_seconds[i], 10),
        ),
    )

    summary = dataset_report(tmp_path)
    assert summary["samples"] == summary["records"] == 10 and summary["shards"] == 3
    assert summary["regions"] == sum(len(s.regions) for s in written)
    assert summary["boxes"] == sum(len(r.boxes) for s in written for r in s.regions)
    assert summary["sources"] == {"shapes-clean": 10} and summary["unreadable_records"] == 0
    assert summary["requests"] == 16 and summary["acceptance_rate"] == pytest.approx(10 / 16, abs=1e-4)
    assert summary["rejections"] == {"low_clip_score": 3, "no_phrases": 3}
    assert summary["stages"]["text_to_image"] == {"seconds": 5.0, "items": 20, "items_per_second": 4.0}
    area = summary["distributions"]["box_area"]
    assert area["count"] == summary["boxes"] and 0 < area["min"] <= area["max"] <= 1
    assert "detector_score" not in summary["distributions"]  # shapes have exact boxes, no detector

    report = tmp_path / "report"
    assert json.loads((report / "report.json").read_text()) == summary
    for plot in ("boxes_per_image", "phrase_length", "box_area", "rejections", "stage_throughput"):
        with Image.open(report / f"{plot}.png") as image:
            assert image.format == "PNG" and image.width > 100
    assert not (report / "detector_score.png").exists() and not (report / "clip_score.png").exists()
    text = (report / "report.md").read_text()
    assert "no phrases | 3" in text and "](rejections.png)" in text

    # without the pipeline's telemetry: no rejection or throughput plots, not even stale ones from the last report
    edit_manifest(
        tmp_path, lambda i, entry: [entry.pop(key) for key in ("requests", "rejections", "stage_seconds", "stage_items")]
    )
    summary = dataset_report(tmp_path)
    assert summary["requests"] is None and summary["acceptance_rate"] is None
    assert summary["rejections"] == {} and summary["stages"] == {}
    assert not (report / "rejections.png").exists() and not (report / "stage_throughput.png").exists()
    assert "rejections.png" not in (report / "report.md").read_text()


def rewrite_record(shard, key, payload):
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members[f"{key}.json"] = payload
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_malformed_records_are_counted_not_fatal_and_a_missing_shard_is_named(tmp_path):
    image = Image.new("RGB", (32, 32))
    good = GroundingSample("g-0", image, "c", [Region("a dog", [[1, 1, 9, 9]], 0.7)], "synground", {"clip_score": 0.31})
    samples = [good] + [GroundingSample(f"g-{i}", image, "c", [], "synground") for i in (1, 2)]
    entry = write_shard(tmp_path / "g-000000.tar", samples)
    manifest = {"shards": [entry], "config": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    rewrite_record(tmp_path / "g-000000.tar", "g-1", b"{'caption': 'not JSON'")
    # valid JSON whose second box is broken: none of its numbers may reach the distributions
    rewrite_record(
        tmp_path / "g-000000.tar",
        "g-2",
        json.dumps(
            {
                "caption": "c",
                "width": 32,
                "height": 32,
                "regions": [
                    {"phrase": "a long phrase here", "boxes": [[0, 0, 32, 32]], "score": 0.1},
                    {"phrase": "x", "boxes": [[1, 2, 3]], "score": None},
                ],
            }
        ).encode(),
    )

    summary = dataset_report(tmp_path)
    assert summary["unreadable_records"] == 2 and summary["records"] == summary["samples"] == 3
    assert summary["regions"] == 1 and summary["sources"] == {"synground": 1}
    assert summary["distributions"]["detector_score"] == pytest.approx(
        {"count": 1, "mean": 0.7, "p10": 0.7, "median": 0.7, "p90": 0.7, "min": 0.7, "max": 0.7}
    )
    assert summary["distributions"]["clip_score"]["mean"] == 0.31
    assert summary["distributions"]["phrase_length"]["max"] == 2
    for plot in ("detector_score", "clip_score"):
        with Image.open(tmp_path / "report" / f"{plot}.png") as png:
            assert png.format == "PNG"
    assert "| unreadable records | 2 |" in (tmp_path / "report" / "report.md").read_text()

    manifest["shards"].append({"name": "g-000001.tar", "samples": 1, "sha256": ""})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"g-000001\.tar"):
        dataset_report(tmp_path)


def test_a_missing_or_unreadable_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        dataset_report(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        dataset_report(tmp_path)


def test_command_line_prints_the_table_and_writes_where_told(tmp_path, monkeypatch, capsys):
    generate_shards(ShapesGenerator("textured", 64), tmp_path / "shards", num_samples=3, samples_per_shard=3, name="t")
    monkeypatch.setattr(sys, "argv", ["report", str(tmp_path / "shards"), "--output", str(tmp_path / "out")])
    main()
    assert "| samples | 3 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["sources"] == {"shapes-textured": 3}
    assert (tmp_path / "out" / "report.md").exists() and not (tmp_path / "shards" / "report").exists()
