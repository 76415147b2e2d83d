"""The map metrics on hand-made maps and boxes whose answers are known, and their sums over two DDP processes."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from synground.callbacks import GroundingMetrics
from synground.models.map_metrics import (
    best_candidate,
    box_hit,
    heatmap_box,
    map_scores,
    mass_in_boxes,
    pointing_game_hits,
    refer_iou,
    tolerant_hit,
)


def peak_map(h: int, w: int, row: int, col: int) -> torch.Tensor:
    heat = torch.zeros(h, w)
    heat[row, col] = 1.0
    return heat


def test_point_strictly_inside_is_a_hit_and_on_the_border_is_a_miss():
    # a 10x10 map at the original 10x10 size: the bicubic upsample is the identity, the peak is at (x=4, y=6)
    heat = peak_map(10, 10, row=6, col=4)[None]
    size = torch.tensor([[10, 10]])
    assert pointing_game_hits(heat, [torch.tensor([[3.0, 5.0, 5.0, 7.0]])], size).item()
    assert not pointing_game_hits(heat, [torch.tensor([[4.0, 5.0, 6.0, 7.0]])], size).item()  # x on the left edge
    assert not pointing_game_hits(heat, [torch.tensor([[2.0, 2.0, 4.0, 6.0]])], size).item()  # on the corner


def test_any_box_of_the_phrase_counts():
    heat = peak_map(10, 10, row=6, col=4)[None]
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [3.0, 5.0, 5.0, 7.0]])
    assert pointing_game_hits(heat, [boxes], torch.tensor([[10, 10]])).item()


def test_the_first_maximum_in_row_major_order_is_taken():
    heat = torch.zeros(10, 10)
    heat[2, 8] = 1.0  # first in row-major order
    heat[7, 1] = 1.0
    size = torch.tensor([[10, 10]])
    assert pointing_game_hits(heat[None], [torch.tensor([[7.0, 1.0, 9.0, 3.0]])], size).item()
    assert not pointing_game_hits(heat[None], [torch.tensor([[0.0, 6.0, 2.0, 8.0]])], size).item()


def test_the_map_is_upsampled_to_the_original_non_square_size():
    # peak in the top-right cell of a 4x4 grid over a 400 (w) x 200 (h) image: the point lands near x=350, y=25
    heat = peak_map(4, 4, row=0, col=3)[None]
    size = torch.tensor([[200, 400]])
    assert pointing_game_hits(heat, [torch.tensor([[300.0, 0.0, 400.0, 50.0]])], size).item()
    assert not pointing_game_hits(heat, [torch.tensor([[0.0, 0.0, 300.0, 200.0]])], size).item()


def test_metric_accumulates_over_batches():
    metric = GroundingMetrics()
    size = torch.tensor([[10, 10]])
    metric.update(peak_map(10, 10, 6, 4)[None], [torch.tensor([[3.0, 5.0, 5.0, 7.0]])], size)
    metric.update(peak_map(10, 10, 0, 0)[None], [torch.tensor([[3.0, 5.0, 5.0, 7.0]])], size)
    metric.update(peak_map(10, 10, 8, 8)[None], [torch.tensor([[7.0, 7.0, 9.0, 9.0]])], size)
    assert metric.compute()["pointing_game"].item() == pytest.approx(2 / 3)
    assert "box_accuracy_proposals" not in metric.compute()  # no item had candidate boxes


def test_a_batch_of_mixed_image_sizes_scores_each_item_as_alone():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(12, 4, 4, generator=generator)
    sizes = torch.tensor([[40, 60], [60, 40], [40, 60]] * 4)
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [25.0, 15.0, 40.0, 39.0]])] * 12
    batched = pointing_game_hits(maps, boxes, sizes)
    alone = torch.cat([pointing_game_hits(maps[i : i + 1], boxes[i : i + 1], sizes[i : i + 1]) for i in range(12)])
    assert torch.equal(batched, alone)
    assert 0 < int(batched.sum()) < 12  # both outcomes occur, so the comparison means something


# TorchRay's pointing game with a tolerance: a hit when a pixel of the boxes' region (ends included) lies at a
# distance strictly below the tolerance


def torchray_hit(boxes, point, height, width, tolerance=15):
    """TorchRay's PointingGame.evaluate on the mask its voc_as_mask builds, written out: a full [H, W] distance test."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:  # integer corners: the pixels x0..x1, y0..y1
        mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
    v, u = torch.meshgrid(
        (torch.arange(height, dtype=torch.float32) - point[1]) ** 2,
        (torch.arange(width, dtype=torch.float32) - point[0]) ** 2,
        indexing="ij",
    )
    return bool((mask & ((v + u) < tolerance**2)).any())


def test_tolerance_is_strict_at_15_px_straight_and_diagonal():
    box = [[0.0, 0.0, 5.0, 5.0]]  # pixels 0..5
    assert tolerant_hit((19, 2), box, 40, 40)  # 14 px from x = 5
    assert not tolerant_hit((20, 2), box, 40, 40)  # 15 px: not below the tolerance
    assert tolerant_hit((15, 15), box, 40, 40)  # (10, 10) away: 200 < 225
    assert not tolerant_hit((16, 16), box, 40, 40)  # 242
    assert tolerant_hit((30, 30), [[0.0, 0.0, 2.0, 2.0], [20.0, 25.0, 22.0, 26.0]], 40, 40)  # near the second box
    assert tolerant_hit((3, 3), box, 40, 40, tolerance=1)  # inside: distance 0


def test_tolerant_hits_equal_torchrays_mask_test_on_random_boxes():
    generator = torch.Generator().manual_seed(0)
    checked = hits = 0
    for _ in range(300):
        height, width = 30 + int(torch.randint(0, 30, (1,), generator=generator)), 40
        boxes = []
        for _ in range(int(torch.randint(1, 3, (1,), generator=generator))):
            x0, y0 = torch.randint(0, width - 1, (1,), generator=generator).item(), torch.randint(0, height - 1, (1,)).item()
            boxes.append([x0, y0, min(x0 + torch.randint(0, 12, (1,)).item(), width - 1), min(y0 + 5, height - 1)])
        point = (torch.randint(0, width, (1,), generator=generator).item(), torch.randint(0, height, (1,)).item())
        expected = torchray_hit(boxes, point, height, width)
        assert tolerant_hit(point, boxes, height, width) == expected, (boxes, point)
        checked, hits = checked + 1, hits + expected
    assert 0 < hits < checked  # both outcomes occur


def test_every_strict_hit_is_a_tolerant_hit_and_a_box_at_the_border_counts():
    heat = peak_map(40, 40, row=39, col=39)[None]  # the last pixel
    scores = map_scores(heat, [torch.tensor([[30.0, 30.0, 40.0, 40.0]])], torch.tensor([[40, 40]]))
    assert scores["pointing_game"].item() == 1 and scores["pointing_game_tolerant"].item() == 1


# mass in box: the share of the positive mass on the boxes' pixels


def test_mass_in_box_of_a_uniform_map_is_the_boxes_share_of_pixels():
    heat = torch.ones(10, 10)
    assert mass_in_boxes(heat, [[0.0, 0.0, 4.0, 4.0]]) == pytest.approx(25 / 100)  # pixels 0..4 x 0..4
    # overlapping boxes count their pixels once; a box past the border only its pixels inside
    assert mass_in_boxes(heat, [[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0], [8.0, 8.0, 12.0, 12.0]]) == pytest.approx(29 / 100)


def test_mass_in_box_ignores_negative_values_and_is_zero_for_an_all_zero_map():
    heat = -torch.ones(10, 10)
    heat[2:4, 2:4] = 3.0
    assert mass_in_boxes(heat, [[2.0, 2.0, 3.0, 3.0]]) == pytest.approx(1.0)
    assert mass_in_boxes(heat, [[5.0, 5.0, 9.0, 9.0]]) == 0.0
    assert mass_in_boxes(torch.zeros(10, 10), [[0.0, 0.0, 9.0, 9.0]]) == 0.0


# IoU as the refer toolkit (AMC's computeIoU) computes it on xywh boxes


def test_refer_iou_on_hand_computed_boxes():
    assert refer_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    # pixels 5..9 overlap each way: 25 of 100 + 100 - 25
    assert refer_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert refer_iou([0, 0, 10, 10], [9, 0, 19, 10]) == 0.0  # one shared column: no intersection in that toolkit
    assert refer_iou([3, 3, 3, 3], [5, 5, 5, 5]) == 0.0  # empty union: 0, where the toolkit divides by zero


# box accuracy from proposals: AMC's ranking by mass over the square root of the area


def test_proposals_rank_by_mass_over_the_square_root_of_the_area():
    heat = torch.ones(10, 10)
    # [0, 0, 4, 4]: 16 pixels / sqrt(16) = 4; [0, 0, 9, 9]: 81 / 9 = 9
    assert best_candidate(heat, [[0, 0, 4, 4], [0, 0, 9, 9]]) == 1
    heat = torch.zeros(10, 10)
    heat[2:4, 2:4] = 1.0
    # the tight box beats the one containing it (4 / 2 against 4 / 6) and the empty one
    assert best_candidate(heat, [[6, 6, 9, 9], [0, 0, 6, 6], [2, 2, 4, 4]]) == 2


def test_proposal_ties_go_to_the_first_and_empty_or_zero_maps_give_no_box():
    heat = torch.zeros(10, 10)
    heat[2:4, 2:4] = 1.0
    assert best_candidate(heat, [[5, 5, 8, 8], [2, 2, 4, 4], [2, 2, 4, 4]]) == 1
    assert best_candidate(heat, [[2, 2, 2, 6], [2, 2, 4, 4]]) == 1  # the zero-area candidate is skipped
    assert best_candidate(torch.zeros(10, 10), [[0, 0, 5, 5]]) is None  # AMC keeps no box for an all-zero map
    assert best_candidate(heat, []) is None
    scores = map_scores(
        torch.zeros(1, 10, 10), [torch.tensor([[0.0, 0.0, 5.0, 5.0]])], torch.tensor([[10, 10]]), [torch.tensor([[0.0, 0, 5, 5]])]
    )
    assert scores["box_accuracy_proposals"].item() == 0  # a miss, not a crash


def test_proposal_box_accuracy_hits_any_of_several_ground_truth_boxes():
    heat = torch.zeros(1, 20, 20)
    heat[0, 12:16, 12:16] = 1.0
    truth = [torch.tensor([[0.0, 0.0, 5.0, 5.0], [12.0, 12.0, 16.0, 16.0]])]  # Flickr30k: a phrase with two boxes
    candidates = [torch.tensor([[0.0, 0.0, 5.0, 5.0], [12.0, 12.0, 16.0, 16.0], [0.0, 0.0, 20.0, 20.0]])]
    scores = map_scores(heat, truth, torch.tensor([[20, 20]]), candidates)
    assert scores["box_accuracy_proposals"].item() == 1
    assert scores["box_accuracy_map"].item() == 1  # the map's own region is that box: pixels 12..15


# box accuracy from the map alone: threshold, largest 8-connected region, bounding rectangle


def test_the_map_box_bounds_the_largest_region_above_the_threshold():
    heat = torch.zeros(20, 20)
    heat[2:4, 2:4] = 1.0  # 4 pixels
    heat[10:14, 5:8] = 0.8  # 12 pixels: the largest region at threshold 0.5
    assert heatmap_box(heat) == (5.0, 10.0, 8.0, 14.0)  # exclusive ends: pixels 5..7, 10..13
    assert heatmap_box(heat, threshold=0.9) == (2.0, 2.0, 4.0, 4.0)  # the 0.8 region falls below


def test_regions_join_through_diagonals_and_below_and_ties_go_to_the_first_in_row_major_order():
    heat = torch.zeros(10, 10)
    heat[1, 1] = heat[2, 2] = heat[3, 3] = 1.0  # a diagonal: one region of 3
    heat[1, 6] = heat[1, 8] = 1.0  # a U: two runs on row 1 joined by row 2's run below them
    heat[2, 6:9] = 1.0
    assert heatmap_box(heat) == (6.0, 1.0, 9.0, 3.0)  # the U (5 pixels)
    tie = torch.zeros(10, 10)
    tie[6, 0:3] = 1.0
    tie[2, 5:8] = 1.0  # same size, first in row-major order
    assert heatmap_box(tie) == (5.0, 2.0, 8.0, 3.0)


def test_an_all_zero_map_has_no_box_and_misses():
    assert heatmap_box(torch.zeros(8, 8)) is None
    assert not box_hit(None, [[0.0, 0.0, 8.0, 8.0]])
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        heatmap_box(torch.ones(8, 8), threshold=0)


def test_the_map_box_is_scored_at_iou_one_half():
    heat = torch.zeros(1, 20, 20)
    heat[0, 0:10, 0:10] = 1.0  # box (0, 0, 10, 10)
    size = torch.tensor([[20, 20]])
    hit = map_scores(heat, [torch.tensor([[0.0, 0.0, 10.0, 14.0]])], size)["box_accuracy_map"].item()  # IoU 100/140
    miss = map_scores(heat, [torch.tensor([[0.0, 0.0, 10.0, 21.0]])], size)["box_accuracy_map"].item()  # 100/210
    assert (hit, miss) == (1, 0)


# summed over DDP ranks


def _update_on_rank(rank: int, store: str, maps, boxes, sizes, candidates, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    metric = GroundingMetrics()
    take = slice(rank, None, 2)
    metric.update(maps[take], boxes[take], sizes[take], candidates[take])
    values = metric.compute()
    if rank == 0:
        torch.save(values, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_compute_every_metric_of_all_their_items(tmp_path):
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(10, 4, 4, generator=generator)
    sizes = torch.tensor([[40, 60]] * 10)
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [25.0, 15.0, 40.0, 39.0]])] * 10
    candidates = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [20.0, 10.0, 59.0, 39.0]])] * 10
    alone = GroundingMetrics()
    alone.update(maps, boxes, sizes, candidates)
    expected = alone.compute()
    mp.spawn(_update_on_rank, args=(str(tmp_path / "store"), maps, boxes, sizes, candidates, str(tmp_path / "out.pt")), nprocs=2)
    synced = torch.load(tmp_path / "out.pt", weights_only=True)
    assert synced.keys() == expected.keys() and len(expected) == 5
    for name, value in expected.items():
        assert synced[name].item() == pytest.approx(value.item(), abs=1e-6), name
    assert 0 < expected["pointing_game"] < 1  # both outcomes occur, so the sums mean something
