"""Tests of MIDRE random erasing against the paper's algorithm (Sec. 2.2, Alg. 1)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from midre.erasing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REFERENCE_CODE_FILL,
    EntireErasing,
    FixedErasing,
    RandomErasing,
    erase_boxes,
    fill_value,
    sample_boxes,
)


def paper_reference_box(rng: random.Random, height: int, width: int, a_l: float, a_h: float):
    """One square straight from the paper's Alg. 1: a_e ~ U[a_l, a_h], side sqrt(W*H*a_e), then a
    top-left point inside the image re-drawn until the square fits."""
    a_e = rng.uniform(a_l, a_h)
    side = min(max(round(math.sqrt(width * height * a_e)), 1), min(height, width))
    while True:
        x_e, y_e = rng.randrange(width), rng.randrange(height)
        if x_e + side <= width and y_e + side <= height:
            return x_e, y_e, x_e + side, y_e + side


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("height,width", [(64, 64), (32, 48), (224, 224), (5, 7)])
def test_boxes_are_squares_inside_the_image(height, width):
    boxes = sample_boxes(5000, height, width, a_h=0.8, generator=gen())
    assert boxes.dtype == torch.long and boxes.shape == (5000, 4)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert torch.equal(x1 - x0, y1 - y0)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all()
    assert (x1 > x0).all()


@pytest.mark.parametrize("a_l,a_h", [(0.1, 0.4), (0.1, 0.8), (0.2, 0.2)])
def test_area_fraction_within_bounds_up_to_rounding(a_l, a_h):
    h = w = 64
    boxes = sample_boxes(20000, h, w, a_l=a_l, a_h=a_h, generator=gen(1))
    side = (boxes[:, 2] - boxes[:, 0]).double()
    # side = round(sqrt(HW a)) so sqrt(HW a) is within half a pixel of side.
    assert (side >= math.sqrt(h * w * a_l) - 0.5).all()
    assert (side <= math.sqrt(h * w * a_h) + 0.5).all()


def test_fixed_a_e_gives_one_side():
    boxes = sample_boxes(100, 64, 64, a_e=0.25, generator=gen())
    assert set((boxes[:, 2] - boxes[:, 0]).tolist()) == {32}


def test_area_fraction_is_uniform_ks():
    # With a 1000x1000 image rounding moves a_e by < 1e-3, so the KS test sees the continuous law.
    n, size, a_l, a_h = 20000, 1000, 0.1, 0.4
    boxes = sample_boxes(n, size, size, a_l=a_l, a_h=a_h, generator=gen(2))
    area = ((boxes[:, 2] - boxes[:, 0]).double() ** 2 / size**2).numpy()
    result = stats.kstest(area, stats.uniform(loc=a_l, scale=a_h - a_l).cdf)
    assert result.pvalue > 1e-3, result
    # ... and the test has power: a distribution skewed to small squares fails it.
    skewed = a_l + (a_h - a_l) * np.random.default_rng(0).random(n) ** 1.2
    assert stats.kstest(skewed, stats.uniform(loc=a_l, scale=a_h - a_l).cdf).pvalue < 1e-3


def test_top_left_uniform_over_feasible_positions_chi_square():
    h, w = 12, 20
    boxes = sample_boxes(60000, h, w, a_e=0.25, generator=gen(3))  # side round(sqrt(60)) = 8
    side = int(boxes[0, 2] - boxes[0, 0])
    nx, ny = w - side + 1, h - side + 1
    counts = torch.bincount(boxes[:, 1] * nx + boxes[:, 0], minlength=nx * ny).numpy()
    assert len(counts) == nx * ny  # no corner outside the feasible set
    assert stats.chisquare(counts).pvalue > 1e-3


def test_batched_boxes_distributed_like_the_paper_reference():
    h, w, n = 24, 24, 20000
    rng = random.Random(4)
    ref = np.array([paper_reference_box(rng, h, w, 0.1, 0.4) for _ in range(n)])
    ours = sample_boxes(n, h, w, a_h=0.4, generator=gen(4)).numpy()
    for col, name in enumerate(["x0", "y0", "x1", "y1"]):
        values = np.union1d(ref[:, col], ours[:, col])
        table = np.array([[np.sum(ref[:, col] == v) for v in values],
                          [np.sum(ours[:, col] == v) for v in values]])
        table = table[:, table.sum(0) > 0]
        p = stats.chi2_contingency(table).pvalue
        assert p > 1e-4, f"{name}: p={p}"
    side_ref, side_ours = ref[:, 2] - ref[:, 0], ours[:, 2] - ours[:, 0]
    values = np.union1d(side_ref, side_ours)
    table = np.array([[np.sum(side_ref == v) for v in values], [np.sum(side_ours == v) for v in values]])
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_fill_exact_and_outside_untouched_normalised_input():
    x = torch.randn(16, 3, 32, 32)
    erase = RandomErasing(a_h=0.4)
    out = erase(x, generator=gen(5))
    changed = (out != x).any(1)  # [N, H, W]
    for i in range(16):
        ys, xs = torch.nonzero(changed[i], as_tuple=True)
        # the changed pixels form a square region, filled with exactly 0 (ImageNet mean normalised)
        region = out[i, :, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert torch.equal(region, torch.zeros_like(region))
        assert ys.max() - ys.min() == xs.max() - xs.min()
    # replay the same draw and compare pixel for pixel
    boxes = sample_boxes(16, 32, 32, a_h=0.4, generator=gen(5))
    mask = torch.zeros(16, 32, 32, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        mask[i, y0:y1, x0:x1] = True
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~mask], x.permute(1, 0, 2, 3)[:, ~mask])
    assert (out.permute(1, 0, 2, 3)[:, mask] == 0).all()


def test_fill_in_pixel_space_is_the_imagenet_mean():
    x = torch.rand(4, 3, 16, 16)
    out = RandomErasing(a_e=0.5, normalized=False)(x, generator=gen(6))
    boxes = sample_boxes(4, 16, 16, a_e=0.5, generator=gen(6))
    x0, y0 = boxes[0, :2].tolist()
    assert torch.allclose(out[0, :, y0, x0], torch.tensor(IMAGENET_MEAN))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out_n = RandomErasing(a_e=0.5)((x - mean) / std, generator=gen(6))
    back = out_n * std + mean
    assert torch.allclose(back, out, atol=1e-6)  # both input conventions erase the same pixel value


def test_reference_code_fill_is_light_grey():
    value = fill_value("reference-code", 3, None)
    assert torch.allclose(value, torch.tensor(REFERENCE_CODE_FILL))
    assert value.min() > 0.7


def test_seeded_runs_identical_and_seeds_differ():
    x = torch.randn(32, 3, 28, 28)
    erase = RandomErasing()
    assert torch.equal(erase(x, generator=gen(7)), erase(x, generator=gen(7)))
    assert not torch.equal(erase(x, generator=gen(7)), erase(x, generator=gen(8)))


def test_fresh_square_each_call():
    x = torch.randn(64, 3, 32, 32)
    g = gen(9)
    erase = RandomErasing()
    assert not torch.equal(erase(x, generator=g), erase(x, generator=g))


@pytest.mark.parametrize(
    "kwargs,field",
    [({"a_h": 1.5}, "a_h"), ({"a_h": 0.05}, "a_h"), ({"a_e": 0.0}, "a_e"), ({"fill": "pink"}, "fill"),
     ({"a_l": -1}, "a_l")],
)
def test_bad_parameters_name_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RandomErasing(**kwargs)


def test_erase_boxes_checks_shapes():
    with pytest.raises(ValueError, match="boxes"):
        erase_boxes(torch.zeros(2, 3, 8, 8), torch.zeros(3, 4, dtype=torch.long), torch.zeros(3))


def test_fixed_erasing_same_square_every_epoch():
    fe = FixedErasing(10, 16, 16, seed=1, a_h=0.4)
    x = torch.randn(10, 3, 16, 16)
    idx = torch.arange(10)
    first = fe(x, idx)
    assert torch.equal(first, fe(x, idx))
    # order of the batch does not matter: each image keeps its own square
    perm = torch.randperm(10)
    assert torch.equal(fe(x[perm], idx[perm]), first[perm])
    assert (first != x).any()
    other = FixedErasing(10, 16, 16, seed=2, a_h=0.4)
    assert not torch.equal(other(x, idx), first)


def test_entire_erasing_drops_share_per_identity_and_changes_per_epoch():
    labels = torch.arange(4).repeat_interleave(10)
    ee = EntireErasing(labels, share=0.3, seed=0)
    m0, m1 = ee.erased(0), ee.erased(1)
    for k in range(4):
        assert int(m0[labels == k].sum()) == 3
    assert not torch.equal(m0, m1)
    assert torch.equal(m0, ee.erased(0))
    kept = ee.kept_indices(0)
    assert len(kept) == 28 and not m0[kept].any()
    fill = EntireErasing(labels, share=0.3, mode="fill")
    x = torch.randn(40, 3, 8, 8)
    out = fill(x, torch.arange(40), epoch=0)
    hit = fill.erased(0)
    assert (out[hit] == 0).all() and torch.equal(out[~hit], x[~hit])
    with pytest.raises(ValueError, match="share"):
        EntireErasing(labels, share=1.0)


@pytest.mark.parametrize("normalized", [True, False])
def test_inplace_erase_equals_copying_erase(normalized):
    x = torch.randn(8, 3, 20, 20)
    erase = RandomErasing(a_h=0.6, normalized=normalized)
    expected = erase(x, generator=gen(11))
    y = x.clone()
    out = erase(y, generator=gen(11), inplace=True)
    assert out.data_ptr() == y.data_ptr()
    assert torch.equal(out, expected)
