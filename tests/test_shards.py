import io
import json
import logging
import tarfile
from collections import Counter

import pytest

from support.shards import shapes
from synground.data import IncompleteShardSet, Manifest, read_manifest, resolve_shards, write_shard
from synground.data.shards import iterate_shard
from synground.generation.writing import generate_shards
from synground.shapes import ShapesGenerator


def test_round_trip_keeps_keys_text_boxes_and_image(tmp_path):
    samples = shapes(5)
    entry = write_shard(tmp_path / "a.tar", samples)
    assert entry["samples"] == 5 and (tmp_path / "a.tar").exists() and not list(tmp_path.glob("*.partial"))
    read = list(iterate_shard(str(tmp_path / "a.tar"), Counter()))
    assert [s.key for s in read] == [s.key for s in samples]
    for original, loaded in zip(samples, read):
        assert loaded.caption == original.caption
        assert [(r.phrase, r.boxes) for r in loaded.regions] == [(r.phrase, [list(b) for b in r.boxes]) for r in original.regions]
        assert loaded.image.size == original.image.size
        assert loaded.provenance == original.provenance and loaded.source == original.source


def test_paraphrases_round_trip_and_records_without_one_stay_as_they_were(tmp_path):
    """SelfEQ's paraphrases are a region field of the record; a region without one writes no key, so shards written
    before the field (and their checksums) are unchanged, and read back with paraphrase None."""
    plain, paired = shapes(2)
    paired.regions[0].paraphrase = "the red disc"
    write_shard(tmp_path / "a.tar", [plain, paired])
    with tarfile.open(tmp_path / "a.tar") as archive:
        records = {name: json.loads(archive.extractfile(name).read()) for name in archive.getnames() if name.endswith(".json")}
    assert not any("paraphrase" in region for record in records.values() for region in record["regions"][1:])
    assert not any("paraphrase" in region for region in records[f"{plain.key}.json"]["regions"])
    assert records[f"{paired.key}.json"]["regions"][0]["paraphrase"] == "the red disc"
    read = {sample.key: sample for sample in iterate_shard(str(tmp_path / "a.tar"), Counter())}
    assert [r.paraphrase for r in read[paired.key].regions] == ["the red disc"] + [None] * (len(paired.regions) - 1)
    assert all(r.paraphrase is None for r in read[plain.key].regions)


def test_a_paraphrase_that_is_not_text_names_the_sample(tmp_path):
    from synground.data.schema import sample_from_metadata

    record = {"caption": "", "regions": [{"phrase": "a cup", "boxes": [[0, 0, 2, 2]], "paraphrase": ["a mug"]}]}
    with pytest.raises(ValueError, match=r"sample 'k': malformed JSON record .*paraphrase of 'a cup' is \['a mug'\], not text"):
        sample_from_metadata("k", shapes(1)[0].image, json.dumps(record).encode())


def test_keys_with_a_dot_are_rejected_before_anything_is_written(tmp_path):
    sample = shapes(1)[0]
    sample.key = "bad.key"
    with pytest.raises(ValueError, match=r"bad\.key"):
        write_shard(tmp_path / "a.tar", [sample])
    assert not (tmp_path / "a.tar").exists()


def test_a_pattern_that_matches_nothing_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        resolve_shards(str(tmp_path / "nothing-here-{000..003}.tar"))


def test_an_empty_manifest_names_the_file(tmp_path):
    Manifest(tmp_path).finish({})
    with pytest.raises(ValueError, match=r"manifest\.json lists no shards"):
        resolve_shards(str(tmp_path))
    Manifest(tmp_path / "started").save()  # a run that has written nothing yet
    with pytest.raises(IncompleteShardSet, match=r"manifest\.json says the run that writes it did not finish"):
        resolve_shards(str(tmp_path / "started"))


def test_a_directory_resolves_to_the_shards_of_its_manifest_only(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.add(write_shard(tmp_path / "a.tar", shapes(2)))
    manifest.finish({"samples": 2})
    write_shard(tmp_path / "stray.tar", shapes(2, start=2))  # not in the manifest: does not exist
    assert resolve_shards(str(tmp_path)) == [str(tmp_path / "a.tar")]


def test_corrupt_image_and_json_are_skipped_with_a_warning_naming_shard_and_key(tmp_path, caplog):
    good = write_shard(tmp_path / "good.tar", shapes(3))
    assert good["samples"] == 3
    with tarfile.open(tmp_path / "good.tar") as source, tarfile.open(tmp_path / "bad.tar", "w") as target:
        for member in source.getmembers():
            payload = source.extractfile(member).read()
            if member.name == "s-0.jpg":
                payload = b"not a jpeg"
            if member.name == "s-1.json":
                payload = b"{broken"
            member.size = len(payload)
            target.addfile(member, io.BytesIO(payload))
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        read = list(iterate_shard(str(tmp_path / "bad.tar"), issues))
    assert [s.key for s in read] == ["s-2"]
    assert issues == {"corrupt_sample": 2}
    assert "bad.tar" in caplog.text and "'s-0'" in caplog.text and "'s-1'" in caplog.text


def test_generation_resumes_after_a_crash_with_the_same_shards(tmp_path):
    generator = ShapesGenerator("textured", image_size=48)
    full = generate_shards(generator, tmp_path / "full", num_samples=10, samples_per_shard=4, name="x")
    assert [e["samples"] for e in full.shards] == [4, 4, 2]

    crashed = tmp_path / "crashed"
    generate_shards(generator, crashed, num_samples=10, samples_per_shard=4, name="x")
    # simulate a crash while writing the second shard: its entry and file are gone, a partial file is left
    manifest = json.loads((crashed / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    (crashed / "manifest.json").write_text(json.dumps(manifest))
    (crashed / "x-000001.tar").rename(crashed / "x-000001.tar.partial")
    (crashed / "x-000002.tar").unlink()
    first_shard_time = (crashed / "x-000000.tar").stat().st_mtime_ns

    resumed = generate_shards(generator, crashed, num_samples=10, samples_per_shard=4, name="x")
    assert (crashed / "x-000000.tar").stat().st_mtime_ns == first_shard_time  # finished shards are kept
    identity = lambda shards: [(e["name"], e["samples"], e["sha256"]) for e in shards]  # noqa: E731
    assert identity(resumed.shards) == identity(full.shards)
    assert identity(read_manifest(crashed / "manifest.json")["shards"]) == identity(full.shards)


def test_a_truncated_shard_is_counted_once_and_its_whole_samples_are_read(tmp_path, caplog):
    write_shard(tmp_path / "a.tar", shapes(4))
    whole = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[: int(len(whole) * 0.6)])  # s-2's image is the last complete member
    issues = Counter()
    with caplog.at_level(logging.WARNING):
        read = [s.key for s in iterate_shard(str(tmp_path / "cut.tar"), issues)]
    assert read == ["s-0", "s-1"]
    assert issues == {"corrupt_shard": 1, "corrupt_sample": 1}  # the shard, and s-2 cut off from its json
    assert caplog.text.count("reading goes on with the next shard") == 1
