import json
import random
from collections import Counter

import pytest
import torch

from synground.data import GenerationRequest, GeneratorSource, GroundingDataModule
from synground.generation.writing import generate_shards
from synground.shapes import ShapesGenerator


def test_the_mixed_stream_follows_the_synthetic_ratio():
    datamodule = GroundingDataModule(
        train={"synthetic": ShapesGenerator("clean", 32), "real": ShapesGenerator("textured", 32)},
        synthetic_ratio=0.25,
        image_size=32,
        batch_size=32,
        batches_per_epoch=40,
        num_workers=0,
    )
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 40
    synthetic = torch.cat([b["synthetic"] for b in batches]).float()
    assert abs(synthetic.mean().item() - 0.25) < 0.05
    # the domain flag is true to the source: clean scenes have a flat grey border
    sources = [b["synthetic"][0].item() for b in batches]
    assert any(sources) and not all(sources)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_ratios_zero_and_one_draw_from_one_domain_only(ratio):
    datamodule = GroundingDataModule(
        train={"synthetic": ShapesGenerator("clean", 32), "real": ShapesGenerator("textured", 32)},
        synthetic_ratio=ratio,
        image_size=32,
        batch_size=8,
        batches_per_epoch=5,
        num_workers=0,
    )
    flags = torch.cat([b["synthetic"] for b in datamodule.train_dataloader()])
    assert flags.float().mean().item() == ratio


def test_a_ratio_outside_zero_one_is_rejected():
    with pytest.raises(ValueError, match="synthetic_ratio"):
        GroundingDataModule(train={"synthetic": ShapesGenerator()}, synthetic_ratio=1.5)


def test_every_worker_shares_the_epoch_and_epochs_differ():
    datamodule = GroundingDataModule(
        train={"synthetic": ShapesGenerator("clean", 32)}, image_size=32, batch_size=4, batches_per_epoch=5, num_workers=2
    )
    loader = datamodule.train_dataloader()
    first, second = list(loader), list(loader)
    assert len(first) == len(second) == 5
    keys = [k for b in first for k in b["keys"]]
    assert len(set(keys)) == len(keys)  # the two workers draw different scenes
    assert set(keys).isdisjoint(k for b in second for k in b["keys"])


def test_batches_carry_what_the_loss_and_the_pointing_game_need():
    datamodule = GroundingDataModule(
        train={"real": ShapesGenerator("textured", 48)},
        image_size=32,
        mask_size=16,
        batch_size=4,
        batches_per_epoch=1,
        num_workers=0,
    )
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["images"].shape == (4, 3, 32, 32) and batch["masks"].shape == (4, 16, 16)
    assert len(batch["texts"]) == 4 and all(isinstance(t, str) for t in batch["texts"])
    assert batch["original_sizes"].tolist() == [[48, 48]] * 4
    assert all(b.shape[-1] == 4 for b in batch["boxes"])


def test_eval_splits_from_shards_cover_every_region_once_across_workers(tmp_path):
    manifest = generate_shards(ShapesGenerator("clean", 32), tmp_path / "eval", num_samples=7, samples_per_shard=3, name="e")
    datamodule = GroundingDataModule(test={"held_out": str(tmp_path / "eval")}, image_size=32, eval_batch_size=5, num_workers=2)
    assert datamodule.test_split_names == ["held_out"]
    (loader,) = datamodule.test_dataloader()
    keys = [k for batch in loader for k in batch["keys"]]
    expected = sum(
        len(s.regions) for s in ShapesGenerator("clean", 32).generate([GenerationRequest(f"e-{i:09d}", i) for i in range(7)])
    )
    assert len(keys) == len(set(keys)) == expected
    assert sum(e["samples"] for e in manifest.shards) == 7


def test_generated_eval_split_is_fixed_and_split_across_workers():
    source = GeneratorSource(ShapesGenerator("textured", 32), num_samples=6, seed=100, name="v")
    one = GroundingDataModule(val={"v": source}, image_size=32, eval_batch_size=4, num_workers=0)
    two = GroundingDataModule(val={"v": source}, image_size=32, eval_batch_size=4, num_workers=2)
    keys_one = sorted(k for b in one.val_dataloader()[0] for k in b["keys"])
    keys_two = sorted(k for b in two.val_dataloader()[0] for k in b["keys"])
    assert keys_one == keys_two and len(keys_one) >= 12


def test_training_reads_shards_and_counts_skipped_samples(tmp_path):
    generate_shards(ShapesGenerator("clean", 32), tmp_path / "syn", num_samples=6, samples_per_shard=3, name="s")
    datamodule = GroundingDataModule(
        train={"synthetic": str(tmp_path / "syn")}, image_size=32, batch_size=4, batches_per_epoch=3, num_workers=0
    )
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 3 and all(k.startswith("s-") for b in batches for k in b["keys"])


def test_a_missing_shard_path_fails_at_setup_of_the_stage_that_reads_it(tmp_path):
    datamodule = GroundingDataModule(
        train={"real": ShapesGenerator()},
        val={"held_out": str(tmp_path / "missing-val")},
        test={"t": GeneratorSource(ShapesGenerator(), num_samples=2)},
    )
    datamodule.setup("test")  # eval.py reads the test splits only: a missing validation split is not its business
    with pytest.raises(FileNotFoundError, match="missing-val"):
        datamodule.setup("fit")
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        GroundingDataModule(test={"t": str(tmp_path / "missing-dir" / "*.tar")}).setup("test")


def test_unknown_train_keys_are_rejected():
    with pytest.raises(ValueError, match=r"train \(data\.train\) has unknown keys \['synthtic'\]"):
        GroundingDataModule(train={"synthtic": ShapesGenerator()})


def test_errors_name_the_argument_as_the_constructor_takes_it_and_as_a_config_sets_it():
    from synground.data import GroundingTransform, MixedTrainStream

    with pytest.raises(ValueError, match=r"give synthetic and/or real sources \(data\.train\.synthetic, data\.train\.real\)"):
        MixedTrainStream([], [], 0.5, GroundingTransform(64), batch_size=2, batches_per_epoch=1, seed=0)
    with pytest.raises(FileNotFoundError, match=r"exclude_keys \(data\.exclude_keys\)=missing\.txt: no such file"):
        GroundingDataModule(train={"real": ShapesGenerator()}, exclude_keys="missing.txt")


def test_ranks_read_disjoint_shards_and_no_sample_twice_in_an_epoch(tmp_path, monkeypatch):
    import synground.data.streams as streams

    generate_shards(ShapesGenerator("clean", 32), tmp_path / "syn", num_samples=48, samples_per_shard=4, name="s")
    datamodule = GroundingDataModule(
        train={"synthetic": str(tmp_path / "syn")}, image_size=32, batch_size=4, batches_per_epoch=5, num_workers=0
    )  # 20 of each rank's 24 samples
    seen = {}
    for rank in (0, 1):
        monkeypatch.setattr(streams, "_worker_slot", lambda worker=None, rank=rank: (rank, 2))
        seen[rank] = [key for batch in datamodule.train_dataloader() for key in batch["keys"]]
    assert len(seen[0]) == len(seen[1]) == 20  # every rank the same number of batches
    assert len(set(seen[0])) == 20 and len(set(seen[1])) == 20 and not set(seen[0]) & set(seen[1])


def test_every_skipped_sample_reaches_the_batches_named_at_each_read(tmp_path):
    """One shard of 8 samples, 2 of them corrupt (first and fifth): 3 batches of 4 read it exactly twice; each read
    names the sample in a batch's data_faults (DataIssueCounts counts each name once an epoch)."""
    import io
    import tarfile

    from synground.data import GenerationRequest, Manifest, write_shard
    from synground.data.streams import MixedTrainStream
    from synground.data.transforms import GroundingTransform
    from synground.shapes import ShapesGenerator

    samples = ShapesGenerator("clean", image_size=64).generate([GenerationRequest(f"s-{i}", i) for i in range(8)])
    write_shard(tmp_path / "good.tar", samples)
    (tmp_path / "set").mkdir()
    with tarfile.open(tmp_path / "good.tar") as source, tarfile.open(tmp_path / "set" / "x.tar", "w") as target:
        for member in source.getmembers():
            payload = source.extractfile(member).read()
            payload = b"not a jpeg" if member.name == "s-0.jpg" else b"{broken" if member.name == "s-4.json" else payload
            member.size = len(payload)
            target.addfile(member, io.BytesIO(payload))
    manifest = Manifest(tmp_path / "set")
    manifest.add({"name": "x.tar", "samples": 8, "sha256": ""})
    manifest.finish({"samples": 8})
    stream = MixedTrainStream(
        [], [str(tmp_path / "set")], 0.0, GroundingTransform(64, 32, 0.0), batch_size=4, batches_per_epoch=3, seed=0
    )
    batches = list(stream)
    assert len(batches) == 3
    shard = tmp_path / "set" / "x.tar"
    named = Counter(fault for batch in batches for fault in batch["data_faults"])
    assert named == {f"corrupt_sample {shard} s-0": 2, f"corrupt_sample {shard} s-4": 2}  # 2 per pass, 2 passes


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_an_epoch_resumed_after_k_batches_yields_exactly_the_rest_of_the_uninterrupted_epoch(tmp_path, workers):
    generate_shards(ShapesGenerator("textured", 32), tmp_path / "real", num_samples=24, samples_per_shard=4, name="r")

    def loader():
        return GroundingDataModule(
            train={"synthetic": ShapesGenerator("clean", 32), "real": str(tmp_path / "real")},
            image_size=32,
            batch_size=3,
            batches_per_epoch=7,
            num_workers=workers,
        ).train_dataloader()

    whole = list(loader())  # epoch 0
    for trained in (1, 2, 5, 7):  # a DataLoader hands out batch j from worker j % workers
        resumed = loader()
        resumed.load_state_dict({"epoch": 0, "batches": trained})  # as Lightning does with a checkpoint's state
        rest = list(resumed)
        assert [b["keys"] for b in rest] == [b["keys"] for b in whole[trained:]]
        assert all(
            torch.equal(a["images"], b["images"]) and torch.equal(a["masks"], b["masks"]) for a, b in zip(rest, whole[trained:])
        )
    later = loader()
    later.load_state_dict({"epoch": 0, "batches": 3})  # a state of another epoch than the pass's is not applied
    list(later)
    assert len(list(later)) == 7


def _keys(samples, count: int) -> list[str]:
    return [next(samples).key for _ in range(count)]


def test_a_generator_pool_in_training_reads_its_n_scenes_once_per_pass_dealt_to_the_slots():
    from collections import Counter

    from synground.data.streams import _endless_samples, _split_samples

    source = GeneratorSource(ShapesGenerator("textured", 32), num_samples=10, seed=10_000_000, requests_per_call=4, name="p")
    split = list(_split_samples(source, 0, 1, Counter()))  # the same scenes, under the same keys, as an eval split
    assert [s.provenance["seed"] for s in split] == list(range(10_000_000, 10_000_010))
    passes = {}
    for slot in (0, 1):
        stream = _endless_samples(source, random.Random(f"x:{slot}"), Counter(), slot, 2, partition_seed="epoch")
        passes[slot] = [_keys(stream, 5) for _ in range(3)]  # 10 scenes dealt to 2 slots: 5 a pass
        assert all(sorted(p) == sorted(passes[slot][0]) for p in passes[slot])  # each pass the slot's whole share
        assert passes[slot][1] != passes[slot][0]  # in a fresh order
    assert not set(passes[0][0]) & set(passes[1][0])
    assert sorted(passes[0][0] + passes[1][0]) == sorted(s.key for s in split)
    stream = _endless_samples(source, random.Random(0), Counter(), 0, 1)
    first = next(stream)
    twin = next(s for s in split if s.key == first.key)
    assert first.caption == twin.caption and first.image.tobytes() == twin.image.tobytes()


def test_a_training_pool_smaller_than_the_slots_is_read_whole_by_every_slot():
    from collections import Counter

    from synground.data.streams import _endless_samples

    source = GeneratorSource(ShapesGenerator("clean", 32), num_samples=3, seed=5, name="p")
    for slot in range(4):
        stream = _endless_samples(source, random.Random(slot), Counter(), slot, 4, partition_seed="epoch")
        assert sorted(_keys(stream, 3)) == ["p-00000000", "p-00000001", "p-00000002"]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_over_a_training_pool_sees_every_scene_once_across_workers(workers):
    pool = GeneratorSource(ShapesGenerator("textured", 32), num_samples=16, seed=10_000_000, name="real-pool")
    datamodule = GroundingDataModule(train={"real": pool}, image_size=32, batch_size=4, batches_per_epoch=4, num_workers=workers)
    loader = datamodule.train_dataloader()
    first, second = ([k for b in loader for k in b["keys"]] for _ in range(2))
    assert sorted(first) == sorted(second) == [f"real-pool-{i:08d}" for i in range(16)]
    assert first != second  # every epoch deals and orders the pool anew


def test_an_endless_generator_source_still_draws_fresh_62_bit_seeds():
    from collections import Counter

    from synground.data.streams import _endless_samples

    source = GeneratorSource(ShapesGenerator("clean", 32), requests_per_call=3, name="g")
    keys = _keys(_endless_samples(source, random.Random(7), Counter()), 7)
    expected = random.Random(7)
    assert keys == [f"g-{expected.getrandbits(62):016x}" for _ in range(7)]


def test_an_empty_training_pool_is_refused():
    with pytest.raises(ValueError, match=r"train \(data\.train\)\['real'\]: source 'p'.*num_samples=0"):
        GroundingDataModule(train={"real": GeneratorSource(ShapesGenerator(), num_samples=0, name="p")})


def test_eval_items_carry_candidate_boxes_from_a_proposals_file_or_the_samples_annotations(tmp_path):
    generate_shards(ShapesGenerator("clean", 32), tmp_path / "eval", num_samples=3, samples_per_shard=3, name="e")
    keys = [f"e-{index:09d}" for index in range(3)]  # generate_shards' keys, checked by the lookup below
    proposals = {key: [[0, 0, 10, 10], [float(index), 2.0, 20.0, 30.0]] for index, key in enumerate(keys)}
    (tmp_path / "proposals.json").write_text(json.dumps(proposals))
    splits = {"from_file": str(tmp_path / "eval"), "from_annotations": str(tmp_path / "eval")}
    datamodule = GroundingDataModule(
        test=splits,
        proposals={"from_file": str(tmp_path / "proposals.json"), "from_annotations": "annotations"},
        image_size=32,
        num_workers=0,
    )
    from_file, from_annotations = (next(iter(loader)) for loader in datamodule.test_dataloader())
    for key, candidates in zip(from_file["image_keys"], from_file["candidate_boxes"]):
        assert candidates.tolist() == proposals[key]
    for key, candidates in zip(from_annotations["image_keys"], from_annotations["candidate_boxes"]):
        every_box = {
            tuple(box.tolist())
            for k, b in zip(from_annotations["image_keys"], from_annotations["original_boxes"])
            if k == key
            for box in b
        }
        assert {tuple(box) for box in candidates.tolist()} == every_box and len(every_box) >= 2  # every shape in the scene

    one_for_all = GroundingDataModule(test=splits, proposals="annotations", image_size=32, num_workers=0)
    for loader in one_for_all.test_dataloader():
        assert torch.equal(torch.cat(next(iter(loader))["candidate_boxes"]), torch.cat(from_annotations["candidate_boxes"]))

    del proposals[keys[1]]
    (tmp_path / "proposals.json").write_text(json.dumps(proposals))
    datamodule = GroundingDataModule(test=splits, proposals={"from_file": str(tmp_path / "proposals.json")}, num_workers=0)
    with pytest.raises(ValueError, match=r"from_file.*proposals.json has no boxes for sample 'e-000000001'"):
        list(datamodule.test_dataloader()[0])


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"a": [[0, 0, 5]]}', r"key 'a', box 0: expected 4 finite numbers"),
        ('{"a": [[5, 0, 2, 4]]}', r"key 'a', box 0: \[5, 0, 2, 4\] has x1 < x0"),
        ('{"a": [[0, 0, NaN, 4]]}', r"key 'a', box 0: expected 4 finite numbers"),
        ("[1, 2]", r"expected an object"),
    ],
)
def test_a_malformed_proposals_file_is_refused_naming_the_key_and_box(tmp_path, content, message):
    (tmp_path / "p.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        GroundingDataModule(test={"t": str(tmp_path)}, proposals={"t": str(tmp_path / "p.json")})
    with pytest.raises(ValueError, match=r"proposals \(data.proposals\) names splits that are not in val or test: \['other'\]"):
        GroundingDataModule(test={"t": str(tmp_path)}, proposals={"other": "annotations"})


def test_amcs_detections_become_a_proposals_file_keyed_as_the_refcoco_shards(tmp_path, monkeypatch):
    from synground.data.proposals import load_proposals, main

    # AMC's det_file: per COCO image id, [x, y, w, h, category, score] rows
    (tmp_path / "dets.json").write_text(json.dumps({"581857": [[10, 20, 30, 40, 1, 0.9], [0, 0, 5, 5, 3, 0.2]], "42": []}))
    monkeypatch.setattr("sys.argv", ["proposals", str(tmp_path / "dets.json"), str(tmp_path / "out" / "p.json")])
    main()
    assert load_proposals(tmp_path / "out" / "p.json") == {"coco-581857": [[10, 20, 40, 60], [0, 0, 5, 5]], "coco-42": []}


PLAIN_LOOP = """
import sys, typing
import torch
from torch.utils.data import DataLoader
from synground.data import EvalSplit, GeneratorSource, GroundingBatch, GroundingTransform, MixedTrainStream, collate
from synground.shapes import ShapesGenerator

clean, textured = ShapesGenerator("clean", image_size=64), ShapesGenerator("textured", image_size=64)
train = MixedTrainStream([GeneratorSource(clean)], [GeneratorSource(textured)], 0.5, GroundingTransform(64, 32), 4, 2, 0)
test = EvalSplit("textured", GeneratorSource(textured, num_samples=3, seed=7), GroundingTransform(64))
# the training stream batches itself; evaluation items are batched by collate (phrases of one image share its row)
batches = [*DataLoader(train, batch_size=None, num_workers=1), *DataLoader(test, batch_size=64, collate_fn=collate)]
assert "lightning" not in sys.modules, "the data package imported Lightning"
declared = typing.get_type_hints(GroundingBatch)
for batch in batches:
    batch = {key: value for key, value in batch.items() if key != "data_issues"}
    assert set(batch) <= set(declared), set(batch) - set(declared)
    for key, value in batch.items():
        kind = typing.get_origin(declared[key]) or declared[key]
        assert isinstance(value, kind), (key, type(value))
    items, rows = len(batch["texts"]), len(batch["images"])
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, 64, 64)
    assert batch["image_index"].shape == (items,) and int(batch["image_index"].max()) < rows
    assert batch["original_sizes"].shape == (items, 2) and batch["original_sizes"].dtype == torch.int64
    assert all(boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.dtype == torch.float32 for boxes in batch["boxes"])
    assert len(batch["keys"]) == len(batch["image_keys"]) == len(batch["original_boxes"]) == items
    if "masks" in batch:
        assert batch["masks"].shape == (items, 32, 32) and batch["masks"].dtype == torch.uint8 and rows == items
    else:
        assert rows == len(set(batch["image_keys"])) == 3 and items > rows  # 3 scenes, several phrases each
print(len(batches), sum("masks" in batch for batch in batches))
"""


def test_the_streams_batch_as_documented_in_a_plain_pytorch_loop_without_lightning():
    """A project without Lightning: the training stream and an evaluation split through torch's DataLoader, every
    batch key declared in GroundingBatch with its type, shapes and dtypes as documented, Lightning never imported."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PLAIN_LOOP], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["3", "2"]  # 2 training batches with masks, 1 evaluation batch
