import math
import statistics

import pytest
import torch

from synground.models.losses import amc_loss, sample_hard_negatives, selfeq_loss, texts_equal


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


def selfeq_by_hand(maps: list[float], paraphrase_maps: list[float], tau: float) -> tuple[float, float]:
    """SelfEQ's two terms as its released code states them, over the flattened batch, in plain Python."""
    sim = sum(0.5 * (q - p) ** 2 if abs(q - p) < 1 else abs(q - p) - 0.5 for p, q in zip(maps, paraphrase_maps)) / len(maps)
    region = [1.0 if p + q >= tau else 0.0 for p, q in zip(maps, paraphrase_maps)]
    inside = [p * m for p, m in zip(maps, region)]
    paraphrase_inside = [q * m for q, m in zip(paraphrase_maps, region)]
    cst = statistics.stdev(paraphrase_inside) + statistics.stdev(inside)  # n - 1, as torch.std
    cst += max(0.0, tau / 2 - sum(paraphrase_inside) / sum(region)) + max(0.0, tau / 2 - sum(inside) / sum(region))
    return sim, cst


@pytest.mark.parametrize(
    "maps, paraphrase_maps",
    [
        # two images: M = G + G' >= 0.8 holds at 3 of 8 pixels; both means inside M above tau / 2
        ([[[1.0, 0.5], [0.0, 0.25]], [[0.0, 1.0], [0.5, 0.0]]], [[[0.5, 0.5], [0.25, 0.0]], [[0.25, 1.0], [0.0, 0.0]]]),
        # one image whose paraphrase map is weak inside M: relu(0.4 - 0.35) = 0.05 counts
        ([[[0.5, 0.3], [0.0, 0.0]]], [[[0.35, 0.1], [0.0, 0.0]]]),
        # a difference above 1 takes SmoothL1's linear part
        ([[[0.0, 2.5], [1.0, 0.0]]], [[[1.5, 0.0], [1.0, 0.2]]]),
    ],
)
def test_selfeq_loss_matches_its_formula_computed_by_hand(maps, paraphrase_maps):
    got = selfeq_loss(torch.tensor(maps), torch.tensor(paraphrase_maps))
    flat = lambda nested: [v for image in nested for row in image for v in row]  # noqa: E731
    sim, cst = selfeq_by_hand(flat(maps), flat(paraphrase_maps), tau=0.8)
    assert got["sim"].item() == pytest.approx(sim, abs=1e-6)
    assert got["cst"].item() == pytest.approx(cst, abs=1e-6)
    assert got["total"].item() == pytest.approx(sim + 0.5 * cst, abs=1e-6)


def test_selfeq_region_includes_a_pixel_exactly_at_tau():
    maps, paraphrase_maps = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]), torch.tensor([[[0.25, 0.125], [0.0, 0.0]]])
    # 0.5 + 0.25 = 0.75 (exact in binary) is in M at tau 0.75; 0.5 + 0.125 is not
    got = selfeq_loss(maps, paraphrase_maps, tau=0.75)
    _, cst = selfeq_by_hand([0.5, 0.5, 0, 0], [0.25, 0.125, 0, 0], tau=0.75)
    assert got["cst"].item() == pytest.approx(cst, abs=1e-6)
    # with M = the first pixel only: paraphrase mean 0.25 -> relu(0.375 - 0.25) = 0.125 is part of it
    assert cst == pytest.approx(statistics.stdev([0.25, 0, 0, 0]) + statistics.stdev([0.5, 0, 0, 0]) + 0.125)


def test_selfeq_with_an_empty_region_is_finite_where_the_reference_divides_by_zero():
    zeros = torch.zeros(2, 4, 4)
    got = selfeq_loss(zeros, zeros.clone())
    assert {key: value.item() for key, value in got.items()} == {"sim": 0.0, "cst": 0.0, "total": 0.0}
    # weak maps, G + G' < tau everywhere: the spread terms still count, the two mean terms are 0, not NaN
    weak, weaker = torch.full((1, 2, 2), 0.3), torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    got = selfeq_loss(weak, weaker)
    assert math.isfinite(got["total"].item()) and got["cst"].item() == 0.0  # everything outside M is zeroed


def test_selfeq_gradient_reaches_both_maps_in_a_batch_of_one():
    maps = torch.tensor([[[0.9, 0.2], [0.1, 0.0]]], requires_grad=True)
    paraphrase_maps = torch.tensor([[[0.3, 0.6], [0.0, 0.2]]], requires_grad=True)
    selfeq_loss(maps, paraphrase_maps)["total"].backward()
    assert maps.grad.abs().sum() > 0 and paraphrase_maps.grad.abs().sum() > 0
    # SmoothL1's gradient alone would be equal and opposite; the consistency terms make them differ
    assert not torch.allclose(maps.grad, -paraphrase_maps.grad)


def test_selfeq_refuses_maps_of_different_shapes():
    with pytest.raises(ValueError, match=r"two \[B, h, w\] maps of one shape, got \(2, 4, 4\) and \(2, 4, 3\)"):
        selfeq_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 3))
