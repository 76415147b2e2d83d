"""Real-dataset readers on fixtures in their exact upstream formats, converted to shards and read back."""

import json
import pickle
from collections import Counter, OrderedDict

import pytest

from support import ROOT
from support.raw_datasets import write_flickr30k, write_image, write_refcoco, write_visual_genome
from synground.data.convert import REPORT_NAME, convert_records
from synground.data.readers import amc_json_records, flickr30k_records, load_refs, refcoco_records, visual_genome_records
from synground.data.shards import iterate_shard, resolve_shards


def read_back(directory):
    return [sample for shard in resolve_shards(str(directory)) for sample in iterate_shard(shard, Counter())]


def test_flickr30k_one_item_per_sentence_phrase_with_boxes_any_box_rule(tmp_path):
    write_flickr30k(tmp_path / "f30k", ["101", "102"])
    issues = Counter()
    report = convert_records(
        flickr30k_records(tmp_path / "f30k", "test", issues=issues), tmp_path / "shards", "flickr30k-test", reader_issues=issues
    )
    samples = read_back(tmp_path / "shards")
    assert [s.key for s in samples] == ["flickr30k-101", "flickr30k-102"]
    regions = samples[0].regions
    # sentence 1: "Two men" (2 boxes), "a woman"; sentence 2: "A woman"; "the street" has no box
    assert [r.phrase for r in regions] == ["Two men", "a woman", "A woman"]
    assert regions[0].boxes == [[0.0, 0.0, 9.0, 19.0], [29.0, 4.0, 59.0, 39.0]]  # the official utility: all four minus 1
    assert samples[0].caption == "Two men talk to a woman in the street ."
    assert report["regions"] == 6 and report["skipped"]["phrase_without_box"] == 2
    assert json.loads((tmp_path / "shards" / REPORT_NAME).read_text()) == report


def write_flickr30k_image(root, image_id, sentence, objects, size=(40, 30)):
    write_flickr30k(root, [image_id], size=size)
    (root / "Sentences" / f"{image_id}.txt").write_text(sentence + "\n")
    (root / "Annotations" / f"{image_id}.xml").write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{objects}</annotation>"
    )


def test_flickr30k_boxes_touching_every_edge_score_as_the_official_utility_makes_them(tmp_path):
    """xmin=1 .. xmax=W is the whole width: the box is 0 .. W-1, so a point on the last column or row is a miss."""
    import torch

    from synground.models.map_metrics import pointing_game_hits

    root = tmp_path / "f30k"
    whole = "<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>"
    write_flickr30k_image(root, "5", "[/EN#1/other The picture] .", whole)
    (record,) = flickr30k_records(root)
    assert record.regions[0].boxes == [[0.0, 0.0, 39.0, 29.0]]
    boxes = [torch.tensor(record.regions[0].boxes)] * 5
    sizes = torch.tensor([[30, 40]] * 5)  # (height, width)
    maps = torch.zeros(5, 30, 40)
    for index, (y, x) in enumerate([(15, 20), (15, 39), (29, 20), (15, 0), (0, 20)]):  # inside; right, bottom, left, top edge
        maps[index, y, x] = 1.0
    assert pointing_game_hits(maps, boxes, sizes).tolist() == [True, False, False, False, False]


def test_flickr30k_phrases_without_boxes_are_counted_by_kind_and_a_malformed_object_is_skipped(tmp_path):
    root = tmp_path / "f30k"
    sentence = (
        "[/EN#1/people A man] and [/EN#2/people a boy] on [/EN#3/scene the beach] see [/EN#0/notvisual it] "
        "near [/EN#4/other a wall] by [/EN#5/other the sea] ."
    )
    objects = (
        "<object><name>1</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
        "<object><name/><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
        "<object><name>2</name><bndbox><xmin>2</xmin><ymin>x</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
        "<object><name>3</name><scene>1</scene></object>"
        "<object><name>4</name><nobndbox>1</nobndbox></object>"
    )
    write_flickr30k_image(root, "6", sentence, objects)
    issues = Counter()
    (record,) = flickr30k_records(root, issues=issues)
    assert [region.phrase for region in record.regions] == ["A man"]
    # "a boy" lost its only box to a malformed object; "the sea" has no object at all
    assert issues == Counter(malformed_object=2, phrase_scene=1, phrase_notvisual=1, phrase_without_box=3)


def test_an_empty_split_is_an_error_that_says_so(tmp_path):
    root = tmp_path / "f30k"
    write_flickr30k(root, ["1"])
    (root / "test.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"split 'test' is empty: .*test.txt lists no image ids"):
        list(flickr30k_records(root))
    with pytest.raises(ValueError, match=r"the split is empty: the reader gave no records for flickr30k-test"):
        convert_records(iter([]), tmp_path / "shards", "flickr30k-test")
    assert not (tmp_path / "shards").exists()


def test_flickr30k_bad_files_are_skipped_and_counted_and_missing_folders_named(tmp_path):
    root = tmp_path / "f30k"
    write_flickr30k(root, ["1", "2", "3", "4"])
    (root / "Annotations" / "2.xml").write_text("<annotation><object><name>1</name><bndbox><xmin>1</xmin>")  # cut short
    (root / "flickr30k-images" / "3.jpg").unlink()
    (root / "flickr30k-images" / "4.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    issues = Counter()
    report = convert_records(flickr30k_records(root, issues=issues), tmp_path / "shards", "f", reader_issues=issues)
    assert [s.key for s in read_back(tmp_path / "shards")] == ["flickr30k-1"]
    assert report["skipped"]["malformed_annotation"] == 1
    assert report["skipped"]["missing_image"] == 1 and report["skipped"]["unreadable_image"] == 1
    assert not list((tmp_path / "shards").glob("*.partial"))
    with pytest.raises(FileNotFoundError, match=r"split list 'test' not found: looked for .*elsewhere/test.txt"):
        next(flickr30k_records(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "test.txt").write_text("1\n")
    with pytest.raises(FileNotFoundError, match=r"Sentences folder not found: looked for .*elsewhere/Sentences"):
        next(flickr30k_records(tmp_path / "elsewhere"))


def test_refcoco_items_per_expression_from_the_split_with_coco_boxes(tmp_path):
    write_refcoco(
        tmp_path,
        {7: [("testA", ["man on left", "left guy"]), ("testA", ["woman"])], 9: [("testB", ["red car"])], 11: [("val", ["dog"])]},
    )
    records = list(refcoco_records(tmp_path, split="testA"))  # the refer API's layout, as its downloads unpack
    assert [r.key for r in records] == ["coco-7"]
    assert [r.phrase for r in records[0].regions] == ["man on left", "left guy", "woman"]
    assert records[0].regions[0].boxes == [[8.0, 6.0, 28.0, 22.0]]  # xywh -> xyxy
    assert records[0].provenance["image_ids"] == ["coco:7"]
    with pytest.raises(ValueError, match=r"no refs in split 'testC'; its splits are \['testA', 'testB', 'val'\]"):
        next(refcoco_records(tmp_path, split="testC"))
    with pytest.raises(FileNotFoundError, match=r"refs pickle not found: looked for .*refcoco\+/refs\(google\).p"):
        next(refcoco_records(tmp_path, split_by="google"))
    elsewhere = {
        "refs_file": tmp_path / "refcoco+" / "refs(unc).p",
        "instances_file": tmp_path / "refcoco+" / "instances.json",
        "image_dir": tmp_path / "images" / "mscoco" / "images" / "train2014",
    }
    assert [r.key for r in refcoco_records(split="testB", **elsewhere)] == ["coco-9"]  # single paths instead of a root


def test_the_refs_pickle_may_hold_plain_data_only(tmp_path):
    with open(tmp_path / "evil.p", "wb") as file:
        pickle.dump([OrderedDict(image_id=1)], file, protocol=2)  # a class, as a malicious file would carry a function
    with pytest.raises(ValueError, match=r"evil.p is not a plain-data refs pickle: refuses to load collections.OrderedDict"):
        load_refs(tmp_path / "evil.p")
    with open(tmp_path / "plain.p", "wb") as file:
        pickle.dump([{"image_id": 1, "sentences": [{"sent": "a"}], "split": "val", "box": (1.0, 2.0)}], file, protocol=2)
    assert load_refs(tmp_path / "plain.p")[0]["box"] == (1.0, 2.0)


def test_visual_genome_regions_with_ids_for_leakage_and_boxes_checked(tmp_path):
    write_visual_genome(tmp_path / "vg", count=3, regions_per_image=2)
    descriptions = json.loads((tmp_path / "vg" / "region_descriptions.json").read_text())
    descriptions[0]["regions"][1].update(x=500, y=500)  # entirely outside the 64 x 48 image
    (tmp_path / "vg" / "region_descriptions.json").write_text(json.dumps(descriptions))
    issues = Counter()
    report = convert_records(
        visual_genome_records(tmp_path / "vg", issues=issues), tmp_path / "shards", "vg", reader_issues=issues
    )
    samples = read_back(tmp_path / "shards")
    assert [s.key for s in samples] == ["vg-1", "vg-2", "vg-3"]
    assert samples[0].provenance["image_ids"] == ["vg:1", "coco:1001"]
    assert [r.phrase for r in samples[0].regions] == ["thing number 0"]
    assert samples[1].regions[1].boxes == [[4.0, 2.0, 20.0, 14.0]]
    assert report["skipped"]["box_degenerate"] == 1 and report["regions"] == 5


def test_amc_json_groups_an_image_s_entries_and_keeps_every_caption(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    write_image(tmp_path / "images" / "b.jpg")
    entries = [
        {"image": "a.jpg", "caption": "a cat", "bbox": [[1, 2, 30, 40]]},
        {"image": "a.jpg", "caption": ["a dog", "the dog"], "bbox": [[[5, 5, 20, 20]], [[30, 5, 50, 20]]]},
        {"image": "b.jpg", "bbox": [[1, 1, 5, 5]]},  # no caption: malformed
        {"image": "b.jpg", "caption": "a box", "bbox": [[1, 1, 5, 5]]},
    ]
    (tmp_path / "amc.json").write_text(json.dumps(entries))
    issues = Counter()
    records = list(amc_json_records(tmp_path / "amc.json", tmp_path / "images", issues=issues))
    assert [(r.image_path.name, [g.phrase for g in r.regions]) for r in records] == [
        ("a.jpg", ["a cat", "a dog", "the dog"]),
        ("b.jpg", ["a box"]),
    ]
    assert records[0].regions[1].boxes == [[5.0, 5.0, 20.0, 20.0], [30.0, 5.0, 50.0, 20.0]]
    assert issues["malformed_annotation"] == 1


def test_a_rerun_keeps_finished_shards_and_ends_identical_to_an_uninterrupted_run(tmp_path):
    write_visual_genome(tmp_path / "vg", count=7)
    convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "whole", "vg", samples_per_shard=2)
    # an interrupted run: two shards finished, a third left half-written
    records = list(visual_genome_records(tmp_path / "vg"))
    convert_records(records[:4], tmp_path / "resumed", "vg", samples_per_shard=2, config={})
    (tmp_path / "resumed" / "vg-000002.tar.partial").write_bytes(b"half a tar")
    (tmp_path / "resumed" / "vg-000099.tar.partial").write_bytes(b"left by an older kill")
    before = (tmp_path / "resumed" / "vg-000000.tar").stat().st_mtime_ns
    convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "resumed", "vg", samples_per_shard=2)
    assert (tmp_path / "resumed" / "vg-000000.tar").stat().st_mtime_ns == before  # not rewritten
    assert not list((tmp_path / "resumed").glob("*.partial"))
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())["shards"]
    resumed = json.loads((tmp_path / "resumed" / "manifest.json").read_text())["shards"]
    assert [(e["name"], e["sha256"]) for e in resumed] == [(e["name"], e["sha256"]) for e in whole]
    assert len(whole) == 4
    with pytest.raises(ValueError, match="holds a conversion with other settings"):  # shard i would hold other records
        convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "resumed", "vg", samples_per_shard=3)


def test_a_conversion_stopped_by_a_truncated_file_is_refused_until_a_rerun_finishes_it_to_the_same_bytes(tmp_path):
    from synground.data import GroundingDataModule, IncompleteShardSet

    write_visual_genome(tmp_path / "vg", count=7)
    convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "whole", "vg", samples_per_shard=2)
    regions_file = tmp_path / "vg" / "region_descriptions.json"
    intact = regions_file.read_bytes()
    regions_file.write_bytes(intact[: int(len(intact) * 0.75)])  # a download cut short: images 6 and 7 are lost
    command = "python convert.py dataset=visual_genome"
    with pytest.raises(
        ValueError, match=r"region_descriptions.json is not a valid JSON list .*truncated.*rerun the same command"
    ):
        convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "out", "vg", samples_per_shard=2, command=command)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["command"] == command and len(manifest["shards"]) == 2

    with pytest.raises(
        IncompleteShardSet,
        match=rf"out is an unfinished shard set \(2 shards so far; .*manifest\.json says.*{command}.*allow_partial",
    ):
        resolve_shards(str(tmp_path / "out"))
    assert len(resolve_shards(str(tmp_path / "out"), allow_partial=True)) == 2
    with pytest.raises(IncompleteShardSet):
        GroundingDataModule(train={"real": str(tmp_path / "out")}).setup("fit")
    GroundingDataModule(train={"real": str(tmp_path / "out")}, allow_partial=True).setup("fit")

    regions_file.write_bytes(intact)
    report = convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "out", "vg", samples_per_shard=2)
    resumed, whole = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("out", "whole"))
    assert resumed["complete"] is True and resumed["command"] == command  # kept from the run that started the set
    assert [(e["name"], e["sha256"]) for e in resumed["shards"]] == [(e["name"], e["sha256"]) for e in whole["shards"]]
    assert resumed["totals"] == whole["totals"] == {k: v for k, v in report.items() if k != "manifest"}
    assert resumed["totals"]["samples"] == 7


@pytest.mark.slow
def test_convert_py_killed_mid_run_is_refused_then_resumes_to_the_same_bytes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from synground.data import IncompleteShardSet

    write_visual_genome(tmp_path / "raw" / "visual_genome", count=400, regions_per_image=2, size=(320, 240))

    def convert(output: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "convert.py"),
                "dataset=visual_genome",
                f"paths.data_dir={tmp_path}",
                f"output_dir={tmp_path / output}",
                "samples_per_shard=10",
                f"hydra.run.dir={tmp_path}/h-{output}",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    assert convert("whole").wait(timeout=300) == 0
    killed = convert("killed")
    manifest = tmp_path / "killed" / "manifest.json"
    deadline = time.time() + 120
    while killed.poll() is None and time.time() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            break
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped = json.loads(manifest.read_text())
    assert stopped["complete"] is False and 2 <= len(stopped["shards"]) < 40, "the kill should land mid-run"
    with pytest.raises(IncompleteShardSet, match=r"python .*convert.py dataset=visual_genome"):
        resolve_shards(str(tmp_path / "killed"))

    assert convert("killed").wait(timeout=300) == 0
    resumed, whole = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("killed", "whole"))
    assert resumed["complete"] is whole["complete"] is True and resumed["totals"] == whole["totals"]
    assert [(e["name"], e["sha256"]) for e in resumed["shards"]] == [(e["name"], e["sha256"]) for e in whole["shards"]]
    assert not list((tmp_path / "killed").glob("*.partial"))


def test_a_conversion_asked_for_paraphrases_writes_them_seeded_by_record_and_counts_them(tmp_path):
    """convert_records(paraphrase=...) (synground-convert paraphrases=llm): each region gets its paraphraser's answer,
    asked with its record's index as seed, so a resumed run writes the same shards; None leaves a region without."""
    write_visual_genome(tmp_path / "vg", count=5, regions_per_image=2)
    asked = []

    def paraphrase(phrases, seeds):
        asked.append(list(seeds))
        return [None if seed == 3 else f"{phrase} paraphrased {seed}" for phrase, seed in zip(phrases, seeds)]

    report = convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "shards", "vg", 2, paraphrase=paraphrase)
    assert asked == [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4]]  # one call per shard, seeds by record index
    assert report["regions"] == 10 and report["paraphrased"] == 8
    for index, sample in enumerate(read_back(tmp_path / "shards")):
        for region in sample.regions:
            assert region.paraphrase == (None if index == 3 else f"{region.phrase} paraphrased {index}")
    plain = convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "plain", "vg", 2)
    assert "paraphrased" not in plain and all(r.paraphrase is None for s in read_back(tmp_path / "plain") for r in s.regions)


def test_convert_composes_the_llm_paraphraser_when_asked():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from synground.conf import CONFIG_DIR
    from synground.generation.paraphrases import Paraphraser

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        assert compose("convert", overrides=["dataset=visual_genome"]).paraphrases is None
        cfg = compose("convert", overrides=["dataset=visual_genome", "paraphrases=llm"])
    paraphraser = instantiate(cfg.paraphrases)  # the LLM loads on first use, not here
    assert isinstance(paraphraser, Paraphraser) and paraphraser.llm.model_id == "lmsys/vicuna-7b-v1.5"
