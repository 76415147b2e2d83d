import random
from collections import Counter

import torch
from PIL import Image

from synground.data.schema import GroundingSample, Region
from synground.data.transforms import GroundingTransform, boxes_to_mask, clean_regions, normalize_images, swap_left_right


def test_left_and_right_are_swapped_keeping_case_and_word_boundaries():
    assert swap_left_right("the cup on the left, Right of the LEFT plate") == "the cup on the right, Left of the RIGHT plate"
    assert swap_left_right("leftover bright cleft") == "leftover bright cleft"


def test_flip_mirrors_the_image_and_boxes_and_swaps_the_text():
    image = Image.new("RGB", (100, 50), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 50))  # a white stripe on the left
    transform = GroundingTransform(image_size=100, flip_prob=1.0)
    item = transform(image, Region("the stripe on the left", [[0.0, 0.0, 20.0, 50.0]]), "k", random.Random(0))
    assert item["text"] == "the stripe on the right"
    torch.testing.assert_close(item["boxes"], torch.tensor([[80.0, 0.0, 100.0, 100.0]]))
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (100, 100, 3)  # [H, W, 3]
    assert item["image"][:, 90].float().mean() > 230 and item["image"][:, 10].float().mean() < 25
    assert item["mask"][:, 85:].all() and not item["mask"][:, :75].any()
    # the pointing game keeps the unflipped original
    torch.testing.assert_close(item["original_boxes"], torch.tensor([[0.0, 0.0, 20.0, 50.0]]))
    assert item["original_size"].tolist() == [50, 100]


def test_a_paraphrase_travels_with_its_phrase_into_the_batch_flipped_alike():
    from synground.data.transforms import collate

    image = Image.new("RGB", (40, 40))
    transform = GroundingTransform(image_size=40, mask_size=8, flip_prob=1.0)
    paired = transform(
        image, Region("the cup on the left", [[0.0, 0.0, 9.0, 9.0]], paraphrase="the mug on the left"), "a", random.Random(0)
    )
    alone = transform(image, Region("a plate", [[0.0, 0.0, 9.0, 9.0]]), "b", random.Random(0))
    assert paired["paraphrase"] == "the mug on the right" and "paraphrase" not in alone
    assert collate([paired, alone])["paraphrases"] == ["the mug on the right", None]
    assert "paraphrases" not in collate([alone, alone])  # batches of data without paraphrases are as they were
    sample = GroundingSample("s", image, "", [Region("a cup", [[0.0, 0.0, 50.0, 9.0]], paraphrase="a mug")], "test")
    assert clean_regions(sample, Counter())[0].paraphrase == "a mug"  # kept when its box is clipped


def test_boxes_partly_outside_are_clipped_degenerate_ones_dropped_and_counted():
    sample = GroundingSample(
        "k",
        Image.new("RGB", (100, 80)),
        "",
        [
            Region("partly outside", [[-10.0, 10.0, 50.0, 200.0]]),
            Region("empty", [[30.0, 30.0, 30.0, 60.0]]),
            Region("no boxes", []),
            Region("one good one bad", [[10.0, 10.0, 20.0, 20.0], [200.0, 10.0, 300.0, 20.0]]),
        ],
        "test",
    )
    issues = Counter()
    regions = clean_regions(sample, issues)
    assert [r.phrase for r in regions] == ["partly outside", "one good one bad"]
    assert regions[0].boxes == [[0.0, 10.0, 50.0, 80.0]]
    assert regions[1].boxes == [[10.0, 10.0, 20.0, 20.0]]
    assert issues == {"box_clipped": 2, "box_degenerate": 2, "region_dropped": 2}


def test_mask_is_the_union_of_boxes_at_the_loss_resolution():
    mask = boxes_to_mask([[0.0, 0.0, 50.0, 50.0], [150.0, 150.0, 200.0, 200.0]], image_size=200, mask_size=20)
    assert mask.shape == (20, 20)
    assert mask.sum().item() == 2 * 25
    assert mask[0, 0] == 1 and mask[19, 19] == 1 and mask[10, 10] == 0


def test_normalize_images_scales_uint8_and_applies_the_channel_statistics():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    normalised = normalize_images(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    torch.testing.assert_close(normalised[0, :, 0, 0], torch.tensor([-1.0, -2.0, -1.0]))
    torch.testing.assert_close(normalised[0, :, 0, 1], torch.tensor([1.0, 2.0, 1.0]))
