"""The recipe's losses against values computed by hand on small tensors."""

import math

import pytest
import torch

from genpercept_cli.train.config import LossConfig
from genpercept_cli.train.engine import lr_factor
from genpercept_cli.train.losses import (
    align_scale_shift,
    angular_loss,
    gradient_loss,
    latent_mse,
    pixel_mse,
    ssi_loss,
    task_loss,
)


def row(*values) -> torch.Tensor:
    """A [1, 1, 1, W] map."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def col(*values) -> torch.Tensor:
    """A [1, 1, H, 1] map."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1, 1)


def test_pixel_mse_averages_valid_pixels_only():
    pred, target = row(1.0, 2.0, 5.0), row(0.0, 0.0, 0.0)
    mask = row(1, 1, 0).bool()
    assert pixel_mse(pred, target, mask).item() == pytest.approx((1 + 4) / 2)


def test_ssi_least_squares_alignment_by_hand():
    # p = [0, 1, 2], g = [0, 1, 3]: Σp = 3, Σp² = 5, Σg = 4, Σpg = 7, n = 3, det = 5·3 − 3² = 6
    # s = (3·7 − 3·4)/6 = 1.5, t = (5·4 − 3·7)/6 = −1/6; residuals −1/6, 1/3, −1/6 -> mean |r| = 2/9
    pred, target, mask = row(0.0, 1.0, 2.0), row(0.0, 1.0, 3.0), row(1, 1, 1).bool()
    scale, shift = align_scale_shift(pred, target, mask)
    assert scale.item() == pytest.approx(1.5) and shift.item() == pytest.approx(-1 / 6)
    assert ssi_loss(pred, target, mask).item() == pytest.approx(2 / 9)


def test_ssi_is_zero_for_a_known_scale_and_shift_and_ignores_invalid_pixels():
    pred = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    target = 3.0 * pred - 0.7
    mask = torch.ones_like(pred, dtype=torch.bool)
    mask[0, 0, 0, 0] = False
    target[0, 0, 0, 0] = 100.0  # an outlier where the mask says invalid
    scale, shift = align_scale_shift(pred, target, mask)
    assert torch.allclose(scale, torch.tensor([3.0, 3.0]), atol=1e-4)
    assert torch.allclose(shift, torch.tensor([-0.7, -0.7]), atol=1e-4)
    assert torch.allclose(ssi_loss(pred, target, mask), torch.zeros(2), atol=1e-5)


def test_ssi_of_a_constant_prediction_falls_back_to_median_scaling():
    # s = 0: p + 2 = 3 everywhere, g + 2 = [2, 3, 7] (median 3): scale 3/3, residuals [1, 0, 4]
    pred, target, mask = row(1.0, 1.0, 1.0), row(0.0, 1.0, 5.0), row(1, 1, 1).bool()
    scale, shift = align_scale_shift(pred, target, mask)
    assert scale.item() == 0.0 and shift.item() == pytest.approx(2.0)
    assert ssi_loss(pred, target, mask).item() == pytest.approx((1 + 0 + 4) / 3)


def test_ssi_with_a_negative_scale_uses_the_lower_median():
    # p = [0, 1, 2, 3], g = [3, 2, 1, 0]: s = −1 < 0. p + 2 = [2, 3, 4, 5], g + 2 = [5, 4, 3, 2]: the lower
    # medians (torch's, the reference's) are 3 and 3, scale 1: residuals |p + 2 − (g + 2)| = [3, 1, 1, 3]
    pred, target, mask = row(0.0, 1.0, 2.0, 3.0), row(3.0, 2.0, 1.0, 0.0), row(1, 1, 1, 1).bool()
    assert align_scale_shift(pred, target, mask)[0].item() == pytest.approx(-1.0)
    assert ssi_loss(pred, target, mask).item() == pytest.approx(2.0)


def test_gradient_matching_by_hand():
    # r = p − g = [0, 1, 3] down a column: |1 − 0| + |3 − 1| = 3 over 3 valid pixels
    pred, target = col(0.0, 2.0, 5.0), col(0.0, 1.0, 2.0)
    assert gradient_loss(pred, target, col(1, 1, 1).bool()).item() == pytest.approx(1.0)
    # last pixel invalid: only the pair (0, 1) counts, over 2 valid pixels
    assert gradient_loss(pred, target, col(1, 1, 0).bool()).item() == pytest.approx(0.5)


def test_gradient_matching_sums_scales():
    # r = [0, 1, 3, 6] down a column. Scale 1: (1 + 2 + 3)/4 = 1.5. Scale 2 (every 2nd row): [0, 3] -> 3/2
    pred, target, mask = col(0.0, 1.0, 3.0, 6.0), col(0.0, 0.0, 0.0, 0.0), col(1, 1, 1, 1).bool()
    assert gradient_loss(pred, target, mask, scales=1).item() == pytest.approx(1.5)
    assert gradient_loss(pred, target, mask, scales=2).item() == pytest.approx(3.0)


def test_gradient_matching_is_vertical_only_by_default_and_both_ways_as_an_option():
    # The release counts only differences along the height; "both" adds the horizontal pairs (and
    # subsamples columns too at coarser scales). r = [0, 1, 3, 6] along a row:
    pred, target, mask = row(0.0, 1.0, 3.0, 6.0), row(0.0, 0.0, 0.0, 0.0), row(1, 1, 1, 1).bool()
    assert gradient_loss(pred, target, mask).item() == 0.0
    assert gradient_loss(pred, target, mask, directions="both").item() == pytest.approx(1.5)
    assert gradient_loss(pred, target, mask, scales=2, directions="both").item() == pytest.approx(3.0)
    square = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)  # vertical |2| + |3|, horizontal |1| + |2|
    ones = torch.ones_like(square, dtype=torch.bool)
    assert gradient_loss(square, torch.zeros_like(square), ones).item() == pytest.approx(5 / 4)
    assert gradient_loss(square, torch.zeros_like(square), ones, directions="both").item() == pytest.approx(8 / 4)


def test_angular_loss_by_hand():
    pred = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, -1.0]]).T.reshape(1, 3, 1, 3)
    mask = row(1, 1, 0).bool()  # the opposite pair (pi) is masked out
    assert angular_loss(pred, target, mask).item() == pytest.approx((math.pi / 2 + math.pi / 4) / 2, abs=1e-4)


def test_angular_loss_has_finite_gradient_at_zero_angle():
    pred = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).requires_grad_(True)
    loss = angular_loss(pred, pred.detach().clone(), torch.ones(1, 1, 1, 1, dtype=torch.bool))
    loss.sum().backward()
    assert loss.item() == pytest.approx(math.acos(1 - 1e-4), rel=1e-3) and torch.isfinite(pred.grad).all()


def test_latent_mse_drops_cells_over_invalid_pixels():
    pred = torch.zeros(1, 4, 2, 2)
    target = torch.ones(1, 4, 2, 2)
    target[:, :, 0, 0] = 10.0  # under the invalid pixel: must not count
    mask = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, 3, 5] = False  # inside latent cell (0, 0)
    assert latent_mse(pred, target, mask).item() == pytest.approx(1.0)


def test_batch_reduction_pools_valid_pixels_and_sample_reduction_splits_exactly():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 1, 6, 6, generator=gen), torch.randn(4, 1, 6, 6, generator=gen)
    mask = torch.rand(4, 1, 6, 6, generator=gen) > 0.2
    mask[0, 0, :3] = False  # valid counts differ
    pooled = ((pred - target) ** 2)[mask].mean()
    assert pixel_mse(pred, target, mask).shape == (4,)
    assert pixel_mse(pred, target, mask).mean().item() == pytest.approx(pooled.item(), rel=1e-6)
    assert pixel_mse(pred, target, mask, reduction="sample").mean().item() != pytest.approx(pooled.item(), rel=1e-3)
    for fn in (pixel_mse, ssi_loss, gradient_loss):
        whole = fn(pred, target, mask, reduction="sample")
        parts = torch.cat([fn(p, t, m, reduction="sample") for p, t, m in
                           ((pred[:2], target[:2], mask[:2]), (pred[2:], target[2:], mask[2:]))])
        assert whole.shape == (4,) and torch.allclose(whole, parts)


def test_task_loss_terms_and_weights():
    decoded = torch.zeros(1, 3, 4, 4)
    decoded[:, 0] = 3.0  # channel mean 1
    target = torch.zeros(1, 3, 4, 4)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    weights = LossConfig(pixel_mse=2.0, ssi=0.5, gradient=2.0)
    terms = task_loss("depth", decoded, target, mask, weights)
    assert set(terms) == {"pixel_mse", "ssi", "gradient"}
    assert terms["pixel_mse"].item() == pytest.approx(2.0)  # 2 · mean((1 − 0)²)
    assert set(task_loss("matting", decoded, target, mask, weights)) == {"pixel_mse"}
    assert set(task_loss("normal", decoded, target + 1, mask, weights)) == {"angular"}
    # seg compares all three colour channels: (3² + 0 + 0)/3 = 3, times the weight 2
    assert task_loss("seg", decoded, target, mask, weights)["pixel_mse"].item() == pytest.approx(6.0)


def test_lr_warms_up_linearly_then_decays_exponentially():
    assert lr_factor(0, warmup=4, decay_steps=100, final_ratio=0.01) == 0.0
    assert lr_factor(3, warmup=4, decay_steps=100, final_ratio=0.01) == pytest.approx(0.75)
    assert lr_factor(52, warmup=4, decay_steps=100, final_ratio=0.01) == pytest.approx(0.1)  # (52 − 4)/(100 − 4)
    assert lr_factor(500, warmup=0, decay_steps=100, final_ratio=0.01) == pytest.approx(0.01)
