import pytest
import torch

from synground.models.losses import amc_loss, sample_hard_negatives, texts_equal


def test_amc_loss_is_zero_when_the_map_lies_inside_the_box():
    masks = torch.zeros(1, 4, 4)
    masks[0, 1:3, 1:3] = 1
    assert amc_loss(masks.clone(), masks).item() == pytest.approx(0.0)


def test_amc_loss_when_the_map_lies_outside_the_box():
    masks = torch.zeros(1, 4, 4)
    masks[0, 1:3, 1:3] = 1
    # L_mean = 1 - 0 + 0.1 = 1.1; L_max = 1 - 0 + 0.5 = 1.5; 0.2 * 1.1 + 0.8 * 1.5
    assert amc_loss(1 - masks, masks).item() == pytest.approx(1.42)


def test_amc_loss_pools_the_mean_term_over_the_batch_and_averages_the_max_term():
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]])
    maps = torch.tensor([[[0.5, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.2]]])
    # inside: (0.5 + 1) / 4 = 0.375; outside: (1 + 0.2) / 4 = 0.3 -> L_mean = relu(0.3 - 0.375 + 0.1) = 0.025
    # L_max: sample 1 relu(1 - 0.5 + 0.5) = 1, sample 2 relu(0.2 - 1 + 0.5) = 0 -> 0.5
    assert amc_loss(maps, masks).item() == pytest.approx(0.2 * 0.025 + 0.8 * 0.5)


def test_hard_negatives_are_never_the_pair_itself_nor_a_text_equal_to_it():
    texts = ["red", "red", "blue", "green", "blue"]
    same = texts_equal(texts)
    similarity = torch.randn(5, 5) * 5
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        negatives = sample_hard_negatives(similarity, same, generator)
        assert not same[torch.arange(5), negatives].any()


def test_hard_negatives_follow_the_similarity():
    similarity = torch.tensor([[0.0, 10.0, -10.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    negatives = sample_hard_negatives(similarity, texts_equal(["a", "b", "c"]), torch.Generator().manual_seed(0))
    assert negatives[0].item() == 1


def test_a_batch_of_one_repeated_text_still_gets_negatives_other_than_itself():
    negatives = sample_hard_negatives(torch.zeros(3, 3), texts_equal(["x"] * 3))
    assert (negatives != torch.arange(3)).all()
