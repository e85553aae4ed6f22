"""Tests of sop_hf.data.masking: iBOT block masks, 'rand' masks, the ratio rules and exact error messages."""

import math
import random

import numpy as np
import pytest
import torch

from sop_hf.data.masking import BlockMaskGenerator, MaskingPolicy


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ibot_block_mask(height: int, width: int, high: float, rng: random.Random) -> np.ndarray:
    """A transcription of bytedance/ibot loader.py's block branch (global ``random`` replaced by ``rng``)."""
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    mask = np.zeros((height, width), dtype=bool)
    mask_count = 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for _ in range(10):
            low = (min(height, width) // 3) ** 2
            target_area = rng.uniform(low, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < width and h < height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    delta = int(h * w - num_masked)
                    mask[top : top + h, left : left + w] = True
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask


# ----------------------------------------------------------------------------------------------- block generator
@pytest.mark.parametrize("grid", [(14, 14), (4, 4), (6, 9), (1, 1)])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 0.9])
def test_block_mask__count_never_exceeds_budget(grid, ratio):
    generator = BlockMaskGenerator(grid)
    g = _gen(0)
    for _ in range(50):
        mask = generator(ratio, g)
        assert mask.dtype == torch.bool and mask.shape == (grid[0] * grid[1],)
        assert int(mask.sum()) <= ratio * grid[0] * grid[1]


def test_block_mask__fills_most_of_the_budget_on_14x14():
    generator, g = BlockMaskGenerator((14, 14)), _gen(1)
    counts = torch.tensor([int(generator(0.3, g).sum()) for _ in range(300)], dtype=torch.float)
    assert counts.min() > 0
    assert 0.8 * 58.8 < counts.mean() <= 58.8


def test_block_mask__same_distribution_as_ibot():
    """Mean masked count and rows touched match a transcription of iBOT's loop (different random streams)."""
    rng, g, generator = random.Random(0), _gen(0), BlockMaskGenerator((14, 14))
    ours = [generator(0.4, g).view(14, 14).numpy() for _ in range(1500)]
    ref = [_ibot_block_mask(14, 14, 0.4 * 196, rng) for _ in range(1500)]
    ours_count, ref_count = np.mean([m.sum() for m in ours]), np.mean([m.sum() for m in ref])
    assert abs(ours_count - ref_count) < 1.0, (ours_count, ref_count)
    ours_rows, ref_rows = np.mean([m.any(1).sum() for m in ours]), np.mean([m.any(1).sum() for m in ref])
    assert abs(ours_rows - ref_rows) < 0.3, (ours_rows, ref_rows)
    # placement is uniform: the masked frequency map has no strongly preferred corner
    freq = np.mean(ours, axis=0)
    assert freq.max() < 2.5 * freq.mean()


def test_block_mask__reproducible():
    generator = BlockMaskGenerator((14, 14))
    assert torch.equal(generator(0.3, _gen(7)), generator(0.3, _gen(7)))
    assert not torch.equal(generator(0.3, _gen(7)), generator(0.3, _gen(8)))


def test_block_mask__default_min_num_patches():
    assert BlockMaskGenerator((14, 14)).min_num_patches == 16
    assert BlockMaskGenerator((4, 4)).min_num_patches == 1
    assert BlockMaskGenerator((2, 2)).min_num_patches == 0
    assert BlockMaskGenerator(6).grid_size == (6, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(grid_size=(0, 4)), "grid_size must be (H, W) with H, W >= 1, got (0, 4)"),
        (dict(grid_size=(4, 4), min_num_patches=-1), "min_num_patches must be >= 0, got -1"),
        (dict(grid_size=(4, 4), aspect_ratio=(2.0, 1.0)), "aspect_ratio must be (low, high) with 0 < low <= high"),
        (dict(grid_size=(4, 4), max_attempts=0), "max_attempts must be >= 1, got 0"),
    ],
)
def test_block_mask__errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BlockMaskGenerator(**kwargs)


def test_block_mask__ratio_out_of_range():
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\], got 1.5"):
        BlockMaskGenerator((4, 4))(1.5)


# ------------------------------------------------------------------------------------------------------ policy
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.55, 1.0])
@pytest.mark.parametrize("grid", [(14, 14), (4, 4), (3, 5)])
def test_policy__rand_masks_exactly_floor(ratio, grid):
    policy = MaskingPolicy(BlockMaskGenerator(grid), ratios=ratio, shape="rand")
    g = _gen(0)
    for _ in range(10):
        assert int(policy(g).sum()) == int(ratio * grid[0] * grid[1])


def test_policy__rand_is_uniform_over_patches():
    policy, g = MaskingPolicy(BlockMaskGenerator((4, 4)), ratios=0.25, shape="rand"), _gen(0)
    freq = torch.stack([policy(g) for _ in range(2000)]).float().mean(0)
    assert torch.allclose(freq, torch.full((16,), 0.25), atol=0.05)


def test_policy__nothing_masked_before_start_epoch():
    policy, g = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=0.3, start_epoch=2), _gen(0)
    for epoch in (0, 1):
        assert policy.sample_ratio(g, epoch) == 0.0
        assert not policy(g, epoch).any()
    assert policy(g, 2).any() and policy(g, 5).any()
    assert policy(g).any()  # epoch None = past the start


def test_policy__ratio_variation_stays_within_bounds():
    policy, g = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=0.3, ratio_vars=0.1), _gen(0)
    ratios = torch.tensor([policy.sample_ratio(g) for _ in range(4000)])
    assert ratios.min() >= 0.2 and ratios.max() <= 0.4
    assert ratios.min() < 0.21 and ratios.max() > 0.39  # covers the range
    assert abs(ratios.mean() - 0.3) < 0.005
    assert abs(ratios.var() - 0.2**2 / 12) < 0.0005  # uniform on [0.2, 0.4]


def test_policy__fixed_ratio_without_variation():
    policy = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=0.3)
    assert {policy.sample_ratio(_gen(s)) for s in range(20)} == {0.3}


def test_policy__list_form_chooses_one_pair_per_crop():
    """iBOT's ``0 0.3`` / ``0 0.2``: about half the crops unmasked, the rest at U[0.1, 0.5]."""
    policy = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=(0.0, 0.3), ratio_vars=(0.0, 0.2))
    g = _gen(0)
    ratios = torch.tensor([policy.sample_ratio(g) for _ in range(4000)])
    zero = ratios == 0
    assert 0.45 < zero.float().mean() < 0.55
    assert ratios[~zero].min() >= 0.1 and ratios[~zero].max() <= 0.5
    assert abs(ratios[~zero].mean() - 0.3) < 0.01
    masks = torch.stack([policy(g) for _ in range(400)])
    empty = ~masks.any(1)
    assert 0.4 < empty.float().mean() < 0.6  # per crop, not per batch


def test_policy__single_variation_applies_to_every_ratio():
    policy = MaskingPolicy(BlockMaskGenerator((4, 4)), ratios=[0.2, 0.4], ratio_vars=0.1)
    assert policy.ratio_vars == (0.1, 0.1)


def test_policy__reproducible():
    policy = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=(0.0, 0.3), ratio_vars=(0.0, 0.2))
    a = torch.stack([policy(g) for g in [_gen(3)] * 8])
    b = torch.stack([policy(g) for g in [_gen(3)] * 8])
    assert torch.equal(a, b)


def test_policy__for_crop():
    policy = MaskingPolicy.for_crop(224, 16, ratios=0.3)
    assert policy.num_patches == 196 and policy.mask_generator.grid_size == (14, 14)
    with pytest.raises(ValueError, match=r"crop_size \(30\) must be a positive multiple of patch_size \(8\)"):
        MaskingPolicy.for_crop(30, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratios=()), "ratios must hold at least one mask ratio"),
        (dict(ratios=(0.1, 0.3), ratio_vars=(0.0, 0.1, 0.2)), "ratio_vars must hold 1 or len(ratios)=2 values, got 3"),
        (dict(ratios=0.1, ratio_vars=0.2), "each mask ratio r with variation v needs 0 <= r - v and r + v <= 1"),
        (dict(ratios=0.9, ratio_vars=0.2), "each mask ratio r with variation v needs 0 <= r - v and r + v <= 1"),
        (dict(shape="grid"), "shape must be 'block' or 'rand', got 'grid'"),
        (dict(start_epoch=-1), "start_epoch must be >= 0, got -1"),
    ],
)
def test_policy__errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        MaskingPolicy(BlockMaskGenerator((4, 4)), **kwargs)
    assert message in str(error.value)
