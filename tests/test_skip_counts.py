"""Counts that add up: known numbers of each fault are planted in raw data and in shard sets, and every skipped
shard, sample, box and region must appear exactly once in the conversion report and in a DDP run's logged totals."""

import json
from collections import Counter

import pytest

from support import run
from support.raw_datasets import write_visual_genome
from support.shards import GOOD, shard_set
from synground.data import Region
from synground.data.convert import convert_records
from synground.data.readers import visual_genome_records


@pytest.mark.slow
def test_planted_faults_are_counted_once_in_a_ddp_run_s_training_and_test_logs(tmp_path):
    # training: 2 shards, one per rank, each 8 samples of which 2 unreadable and 1 with a clipped box. 4 batches of 3
    # per rank read each rank's shard exactly twice; each bad sample counts once: 4 samples skipped, 2 boxes clipped.
    train_shard = (
        [[Region("a square", GOOD)]] * 5 + [[Region("a square", [[-4.0, 8.0, 40.0, 40.0]])]] + [[Region("a square", GOOD)]] * 2,
        {0: "jpg", 4: "json"},
    )
    shard_set(tmp_path / "train", {"t-000000.tar": train_shard, "t-000001.tar": train_shard})
    # evaluation: planted once each, dealt over 2 ranks x 1 worker
    shard_set(
        tmp_path / "eval",
        {
            "e-000000.tar": (
                [[Region("one", GOOD)], [Region("two", GOOD), Region("three", GOOD)], [Region("four", GOOD)]],
                {0: "jpg"},
            ),
            "e-000001.tar": (
                [
                    [Region("five", [*GOOD, [10.0, 10.0, 10.0, 30.0]])],  # a degenerate box beside a good one
                    [Region("six", [[10.0, 10.0, 10.0, 30.0]])],  # only degenerate: the sample is left with nothing
                    [Region("seven", [[-5.0, -5.0, 30.0, 30.0]]), Region("  ", GOOD)],
                ],
                {},
            ),  # clipped; empty phrase
            "e-000002.tar": ([[Region("eight", GOOD)], [Region("nine", GOOD)], [Region("ten", GOOD)]], {1: "json", 2: "jpg"}),
            "e-000003.tar": b"this shard is not a tar file at all" * 30,
            "e-000004.tar": ([[Region("eleven", GOOD)], [Region("twelve", [[8.0, 8.0, 90.0, 40.0]])]], {}),  # clipped
        },
    )
    planted = {
        "corrupt_sample": 3,
        "corrupt_shard": 1,
        "box_degenerate": 2,
        "box_clipped": 2,
        "region_dropped": 2,
        "sample_without_regions": 1,
    }
    items = 8  # two, three, four, five, seven, eight, eleven, twelve: the regions left in the readable samples

    result = run(
        "train.py",
        "data=shards",
        "trainer=ddp_cpu",
        "data.image_size=64",
        "data.mask_size=32",
        f"data.train.real=[{tmp_path / 'train'}]",
        f"+data.val.planted={tmp_path / 'eval'}",
        f"+data.test.planted={tmp_path / 'eval'}",
        "data.batch_size=3",
        "data.eval_batch_size=4",
        "data.batches_per_epoch=4",
        "data.num_workers=0",
        "data.pin_memory=false",
        "trainer.max_epochs=1",
        "model.net.image_size=64",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        env={"WANDB_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {k.removeprefix("data/"): v for k, v in metrics.items() if k.startswith("data/")} == {
        "corrupt_sample": 4,
        "box_clipped": 2,
    }
    for stage in ("val", "test"):
        prefix = f"{stage}/data/planted/"
        assert {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)} == planted, stage
    assert metrics["test/items/planted"] == items


def test_planted_faults_in_raw_data_are_counted_once_by_a_conversion_that_was_stopped_and_resumed(tmp_path):
    raw = tmp_path / "vg"
    write_visual_genome(raw, count=12, regions_per_image=2)  # images 1..12, regions "thing number 0/1" inside 64x48
    for image_id in (3, 10):  # missing
        next(raw.glob(f"*/{image_id}.jpg")).unlink()
    next(raw.glob("*/5.jpg")).write_bytes(b"not a jpeg")  # unreadable
    descriptions = json.loads((raw / "region_descriptions.json").read_text())
    regions = {entry["id"]: entry["regions"] for entry in descriptions}
    del regions[2][0]["x"]  # malformed region
    regions[4][1].update(x=50, width=30)  # clipped at the right edge
    regions[6][0]["width"] = 0  # degenerate: region dropped
    regions[7][0]["width"] = regions[7][1]["width"] = 0  # every region degenerate: the image is skipped
    descriptions.append({"id": 99, "regions": regions[1]})  # an image that image_data.json does not know
    (raw / "region_descriptions.json").write_text(json.dumps(descriptions))
    planted = {
        "missing_image": 2,
        "unreadable_image": 1,
        "malformed_annotation": 2,
        "box_clipped": 1,
        "box_degenerate": 3,
        "region_dropped": 3,
        "image_without_regions": 1,
    }

    def convert(records, **kwargs):
        issues = Counter()
        return convert_records(
            visual_genome_records(raw, issues=issues) if records is None else records,
            tmp_path / "out",
            "vg",
            samples_per_shard=3,
            reader_issues=issues,
            **kwargs,
        )

    convert(list(visual_genome_records(raw))[:6], config={})  # a run that stopped after two shards
    report = convert(None, config={})
    assert report["skipped"] == planted
    assert report["records"] == 12 and report["samples"] == 12 - 2 - 1 - 1
    assert report["regions"] == 2 * 8 - 1 - 1  # 8 images written, minus the malformed region and the dropped one
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["totals"]["skipped"] == planted
