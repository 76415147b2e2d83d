import pytest
import torch

from synground.callbacks import PointingGame, pointing_game_hits


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
    metric = PointingGame()
    size = torch.tensor([[10, 10]])
    metric.update(peak_map(10, 10, 6, 4)[None], [torch.tensor([[3.0, 5.0, 5.0, 7.0]])], size)
    metric.update(peak_map(10, 10, 0, 0)[None], [torch.tensor([[3.0, 5.0, 5.0, 7.0]])], size)
    metric.update(peak_map(10, 10, 8, 8)[None], [torch.tensor([[7.0, 7.0, 9.0, 9.0]])], size)
    assert metric.compute().item() == pytest.approx(2 / 3)


def test_a_batch_of_mixed_image_sizes_scores_each_item_as_alone():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(12, 4, 4, generator=generator)
    sizes = torch.tensor([[40, 60], [60, 40], [40, 60]] * 4)
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [25.0, 15.0, 40.0, 39.0]])] * 12
    batched = pointing_game_hits(maps, boxes, sizes)
    alone = torch.cat([pointing_game_hits(maps[i : i + 1], boxes[i : i + 1], sizes[i : i + 1]) for i in range(12)])
    assert torch.equal(batched, alone)
    assert 0 < int(batched.sum()) < 12  # both outcomes occur, so the comparison means something
