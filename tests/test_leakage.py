"""Leakage report: shared image ids and near-duplicate images between training and evaluation shards."""

import shutil

from PIL import Image

from support.raw_datasets import write_refcoco, write_visual_genome
from synground.data import GroundingDataModule
from synground.data.convert import convert_records
from synground.data.leakage import difference_hash, main
from synground.data.readers import refcoco_records, visual_genome_records


def test_difference_hash_survives_resizing_and_recompression_but_not_another_image(tmp_path):
    image = Image.effect_mandelbrot((256, 192), (-2, -1.5, 1, 1.5), 60).convert("RGB")
    image.resize((200, 150)).save(tmp_path / "small.jpg", quality=60)
    near = difference_hash(Image.open(tmp_path / "small.jpg"))
    assert (difference_hash(image) ^ near).bit_count() <= 4
    assert (difference_hash(image) ^ difference_hash(image.transpose(Image.FLIP_LEFT_RIGHT))).bit_count() > 10


def test_report_counts_shared_coco_ids_and_copied_images_and_training_can_exclude_them(tmp_path, capsys):
    write_visual_genome(tmp_path / "vg", count=6)  # odd VG ids are COCO images 1001, 1003, 1005
    write_refcoco(tmp_path / "coco", {1003: [("testA", ["a thing"])], 77: [("testA", ["another"])]})
    # the RefCOCO+ image 77 is VG image 4's picture under another name: a near duplicate, not an id match
    shutil.copy(
        tmp_path / "vg" / "VG_100K_2" / "4.jpg",
        tmp_path / "coco" / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000077.jpg",
    )
    convert_records(visual_genome_records(tmp_path / "vg"), tmp_path / "visual_genome", "vg")
    convert_records(refcoco_records(tmp_path / "coco"), tmp_path / "refcoco_plus-testA", "testA")
    exclude = tmp_path / "leaked.txt"
    main(
        [
            "--train",
            str(tmp_path / "visual_genome"),
            "--eval",
            str(tmp_path / "refcoco_plus-testA"),
            "--exclude-file",
            str(exclude),
        ]
    )
    printed = capsys.readouterr().out
    assert "| visual_genome | 6 | refcoco_plus-testA | 1 | " in printed
    assert exclude.read_text().split() == ["vg-3", "vg-4"]

    datamodule = GroundingDataModule(
        train={"real": str(tmp_path / "visual_genome")},
        image_size=32,
        batch_size=4,
        batches_per_epoch=5,
        num_workers=0,
        exclude_keys=str(exclude),
    )
    batches = list(datamodule.train_dataloader())
    keys = {key for batch in batches for key in batch["keys"]}
    assert keys and not keys & {"vg-3", "vg-4"}
    excluded = {fault for batch in batches for fault in batch["data_faults"] if fault.startswith("excluded_sample ")}
    assert excluded == {"excluded_sample vg-3", "excluded_sample vg-4"}  # each named, counted once an epoch
