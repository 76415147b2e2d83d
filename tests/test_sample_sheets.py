"""Sample sheets in the dataset report: samples drawn at random (seeded) from any shard set, and the rejected candidates
generation keeps (a bounded number per reason) drawn per reason."""

import json
import sys
from collections import Counter

import pytest
from PIL import Image

from support.raw_datasets import write_flickr30k
from support.shards import OddRejecter
from synground.data.convert import convert_records
from synground.data.readers import flickr30k_records
from synground.data.schema import GenerationRequest
from synground.data.shards import iterate_shard, resolve_shards, write_shard
from synground.generation import sheets
from synground.generation.report import dataset_report, main
from synground.generation.writing import REJECTED_DIR, generate_shards
from synground.shapes import ShapesGenerator


def write_set(directory, shards: int, per_shard: int) -> list[str]:
    """A shard set of `shards` shards of `per_shard` shapes scenes, with its manifest; the keys in set order."""
    generator = ShapesGenerator("clean", 32)
    entries, keys = [], []
    for shard in range(shards):
        requests = [GenerationRequest(f"s-{shard * per_shard + i:05d}", shard * per_shard + i) for i in range(per_shard)]
        entries.append(write_shard(directory / f"s-{shard:06d}.tar", generator.generate(requests)))
        keys += [request.key for request in requests]
    (directory / "manifest.json").write_text(json.dumps({"complete": True, "shards": entries, "config": {}}))
    return keys


def read_all(directory):
    return {s.key: s for shard in resolve_shards(str(directory)) for s in iterate_shard(shard, Counter())}


def test_the_sheet_shows_the_requested_number_of_samples_drawn_by_the_seed(tmp_path):
    keys = write_set(tmp_path, shards=6, per_shard=5)
    shards = json.loads((tmp_path / "manifest.json").read_text())["shards"]
    written = read_all(tmp_path)

    drawn = sheets.drawn_samples(f"{tmp_path}/", shards, 12, seed=3)
    assert len(drawn) == 12 and len({s.key for s in drawn}) == 12
    assert [s.key for s in drawn] == sorted(s.key for s in drawn)  # in the order of the set
    for sample in drawn:  # the very samples at those positions: image, phrases and boxes
        assert sample.image.tobytes() == written[sample.key].image.tobytes() and sample.regions == written[sample.key].regions

    figure = sheets.sheet([sheets.sample_panel(s) for s in drawn], "title")
    panels = [axes for axes in figure.axes if axes.images]
    assert [axes.get_title() for axes in panels] == [s.key for s in drawn]
    assert [len(axes.patches) for axes in panels] == [sum(len(r.boxes) for r in s.regions) for s in drawn]

    again = sheets.drawn_samples(f"{tmp_path}/", shards, 12, seed=3)
    other = sheets.drawn_samples(f"{tmp_path}/", shards, 12, seed=4)
    assert [s.key for s in again] == [s.key for s in drawn] and [s.key for s in other] != [s.key for s in drawn]
    assert [s.key for s in sheets.drawn_samples(f"{tmp_path}/", shards, 100, seed=0)] == keys  # more than there are: all


class CountingOpen:
    """`open_shard` that records what is opened and how many bytes are read from each."""

    def __init__(self, real_open):
        self.real_open, self.opened, self.read = real_open, [], Counter()

    def __call__(self, url):
        self.opened.append(url)
        file = self.real_open(url)
        counting = self

        class Counted:
            def read(self, size=-1):
                data = file.read(size)
                counting.read[url] += len(data)
                return data

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                file.close()

        return Counted()


def test_only_the_shards_holding_drawn_samples_are_opened_and_read_up_to_them(tmp_path, monkeypatch):
    write_set(tmp_path / "many", shards=40, per_shard=3)
    shards = json.loads((tmp_path / "many" / "manifest.json").read_text())["shards"]
    counting = CountingOpen(sheets.open_shard)
    monkeypatch.setattr(sheets, "open_shard", counting)
    drawn = sheets.drawn_samples(f"{tmp_path}/many/", shards, 4, seed=1)
    assert len(drawn) == 4 and len(counting.opened) <= 4
    holding = {f"s-{int(sample.key[2:]) // 3:06d}.tar" for sample in drawn}
    assert sorted(url.rpartition("/")[2] for url in counting.opened) == sorted(holding)

    # one long shard: a sample near its start is read without the rest of the shard
    write_set(tmp_path / "long", shards=1, per_shard=80)
    shards = json.loads((tmp_path / "long" / "manifest.json").read_text())["shards"]
    seed = next(seed for seed in range(100) if sheets.draw_positions([80], 1, seed)[0][1] < 10)
    (sample,) = sheets.drawn_samples(f"{tmp_path}/long/", shards, 1, seed)
    assert int(sample.key[2:]) < 10
    assert counting.read[f"{tmp_path}/long/s-000000.tar"] < (tmp_path / "long" / "s-000000.tar").stat().st_size / 2


def test_rejected_candidates_are_kept_up_to_the_bound_beside_the_shards_and_drawn(tmp_path):
    generate_shards(OddRejecter(), tmp_path, num_samples=20, samples_per_shard=4, name="o", chunk_size=2, keep_rejected=3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    listed = [key for entry in manifest["shards"] for key in entry["kept_rejected"].get("odd_index", [])]
    assert listed == ["o-000000001", "o-000000003", "o-000000005"]  # the first 3 of the run, then none
    folder = tmp_path / REJECTED_DIR / "odd_index"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{key}.{ext}" for key in listed for ext in ("jpg", "json"))
    record = json.loads((folder / "o-000000003.json").read_text())
    assert record["reason"] == "odd_index" and record["score"] == 3.0 and record["threshold"] == 0.0
    assert record["regions"] and all(region["boxes"] for region in record["regions"])
    with Image.open(folder / record["image"]) as image:
        assert image.size == (32, 32)
    assert not set(read_all(tmp_path)) & set(listed)  # readers of the training data never see them

    # a resumed run counts what the finished shards kept: regenerating the first shard keeps no more than the bound
    (tmp_path / "o-000000.tar").unlink()
    (tmp_path / "manifest.d" / "o-000000.tar.json").unlink()
    (folder / "o-000000001.json.partial").write_text("{")  # a killed run's half-written file
    generate_shards(OddRejecter(), tmp_path, num_samples=20, samples_per_shard=4, name="o", chunk_size=2, keep_rejected=3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    kept = [key for entry in manifest["shards"] for key in entry["kept_rejected"].get("odd_index", [])]
    assert len(kept) == 3 and set(kept) <= {f"o-{i:09d}" for i in (1, 3, 5)}
    assert not list(folder.glob("*.partial")) and json.loads((folder / "o-000000001.json").read_text())["score"] == 1.0

    summary = dataset_report(tmp_path, samples=2, seed=0)
    assert summary["kept_rejected"] == {"odd_index": 3} and summary["rejections"] == {"odd_index": 10}
    assert len(summary["sheets"]["rejected"]["odd_index"]) == 2 and set(summary["sheets"]["rejected"]["odd_index"]) <= set(kept)
    report = tmp_path / "report"
    with Image.open(report / "rejected_odd_index.png") as image:
        assert image.format == "PNG"
    text = (report / "report.md").read_text()
    assert "| odd index | 10 | 3 |" in text and "![odd_index](rejected_odd_index.png)" in text

    # a candidate whose files are gone is left off its sheet, not fatal
    for key in kept:
        (folder / f"{key}.json").unlink()
    assert "odd_index" not in dataset_report(tmp_path, samples=2)["sheets"]["rejected"]
    assert not (report / "rejected_odd_index.png").exists()  # no stale sheet from the last report


def test_the_command_line_draws_sheets_of_converted_and_generated_sets(tmp_path, monkeypatch, capsys):
    write_flickr30k(tmp_path / "f30k", [str(i) for i in range(7)])
    issues = Counter()
    convert_records(flickr30k_records(tmp_path / "f30k", issues=issues), tmp_path / "converted", "f", 3, issues)
    generate_shards(ShapesGenerator("textured", 48), tmp_path / "generated", num_samples=9, samples_per_shard=4, name="g")

    for name, total in (("converted", 7), ("generated", 9)):
        monkeypatch.setattr(sys, "argv", ["report", str(tmp_path / name), "--samples", "5", "--seed", "2"])
        main()
        report = tmp_path / name / "report"
        drawn = json.loads((report / "report.json").read_text())["sheets"]
        assert drawn["seed"] == 2 and len(drawn["samples"]) == 5 and set(drawn["samples"]) <= set(read_all(tmp_path / name))
        with Image.open(report / "samples.png") as image:
            assert image.format == "PNG" and image.width >= 5 * 200
        assert "![samples](samples.png)" in (report / "report.md").read_text()
        assert f"| samples | {total} |" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", ["report", str(tmp_path / "generated")])  # no --samples: no sheet, no stale one
    main()
    assert not (tmp_path / "generated" / "report" / "samples.png").exists()


@pytest.mark.parametrize("samples", ["0", "-3", "many"])
def test_a_bad_number_of_samples_is_refused_by_name(tmp_path, monkeypatch, capsys, samples):
    write_set(tmp_path, shards=1, per_shard=2)
    monkeypatch.setattr(sys, "argv", ["report", str(tmp_path), "--samples", samples])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "--samples" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
    if samples != "many":
        with pytest.raises(ValueError, match=rf"samples must be a positive number.*got {samples}"):
            dataset_report(tmp_path, samples=int(samples))


def test_a_directory_without_a_manifest_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["report", str(tmp_path), "--samples", "4"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1 and f"no manifest.json in {tmp_path}" in capsys.readouterr().err
