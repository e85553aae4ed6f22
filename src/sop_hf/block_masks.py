"""iBOT masks for the student's global crops: blockwise (exact iBOT algorithm) or uniform random patches.

METHOD.md section 3. Blockwise: the budget is ``r * H * W``; each round makes up to 10 attempts at a block of area
~ U[(min(H, W) // 3)^2, remaining budget] and aspect ratio exp(U[ln 0.3, ln 1/0.3]), placed uniformly, accepted when
it adds between 1 and the remaining budget of new patches; rounds stop when the budget is met or a round adds nothing
(so at most ``r * H * W`` patches are masked). 'rand' masks exactly floor(r * H * W) uniform patches.

>>> import torch
>>> policy = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=(0.3,))
>>> mask = policy(torch.Generator().manual_seed(0), epoch=0)
>>> mask.shape, bool(mask.sum() <= int(0.3 * 196))
(torch.Size([196]), True)
"""

import math

import torch


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator))


class BlockMaskGenerator:
    """Blockwise masks on an ``(H, W)`` patch grid.

    Args:
        grid_size: (H, W) patches of a global crop (14 x 14 for 224 px / patch 16).
        min_num_patches: smallest block area; default ``(min(H, W) // 3) ** 2`` (METHOD.md), at least 1.
        aspect_ratio: range of block aspect ratios (0.3, 1/0.3).
        max_attempts: attempts per round (10).
    """

    def __init__(self, grid_size: tuple[int, int], min_num_patches: int | None = None,
                 aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3), max_attempts: int = 10):  # fmt: skip
        self.height, self.width = grid_size
        if self.height < 1 or self.width < 1:
            raise ValueError(f"grid_size must be >= (1, 1), got {grid_size}")
        self.min_num_patches = max(1, (min(grid_size) // 3) ** 2 if min_num_patches is None else min_num_patches)
        self.log_aspect = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
        self.max_attempts = max_attempts

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def _round(self, mask: torch.Tensor, budget: int, generator: torch.Generator) -> int:
        added = 0
        for _ in range(self.max_attempts):
            area = _uniform(generator, self.min_num_patches, budget)
            aspect = math.exp(_uniform(generator, *self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < self.height and 0 < w < self.width:
                top = _randint(generator, 0, self.height - h)
                left = _randint(generator, 0, self.width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    added += new
            if added > 0:
                break
        return added

    def __call__(self, num_masked: int, generator: torch.Generator) -> torch.Tensor:
        """A bool mask [H*W] with at most ``num_masked`` True patches."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masked:
            added = self._round(mask, num_masked - count, generator)
            if added == 0:
                break
            count += added
        return mask.flatten()


class MaskingPolicy:
    """Draws the mask ratio per crop and produces the crop's mask.

    Args:
        generator_fn: a ``BlockMaskGenerator`` (its grid also serves the 'rand' shape).
        ratios: one ratio (0.3, SOP default) or several, one chosen uniformly per crop (iBOT: 0 and 0.3).
        ratio_vars: the +- uniform variation of each ratio (iBOT: 0 and 0.2); same length as ``ratios``.
        start_epoch: no masking before this epoch.
        shape: 'block' or 'rand'.
    """

    def __init__(self, generator_fn: BlockMaskGenerator, ratios=(0.3,), ratio_vars=None, start_epoch: int = 0,
                 shape: str = "block"):  # fmt: skip
        ratio_vars = tuple(ratio_vars) if ratio_vars is not None else (0.0,) * len(ratios)
        if len(ratio_vars) == 1 and len(ratios) > 1:
            ratio_vars = ratio_vars * len(ratios)
        if len(ratio_vars) != len(ratios) or not ratios:
            raise ValueError(f"mask_ratio_var needs one value per mask_ratio, got {ratios} and {ratio_vars}")
        for ratio, var in zip(ratios, ratio_vars):
            if not (0.0 <= ratio - var and ratio + var <= 1.0 and var >= 0):
                raise ValueError(f"mask ratios +- variation must stay in [0, 1], got {ratio} +- {var}")
        if shape not in ("block", "rand"):
            raise ValueError(f"mask_shape must be 'block' or 'rand', got {shape!r}")
        self.block = generator_fn
        self.ratios, self.ratio_vars = tuple(ratios), ratio_vars
        self.start_epoch, self.shape = start_epoch, shape

    def draw_ratio(self, generator: torch.Generator, epoch: int) -> float:
        if epoch < self.start_epoch:
            return 0.0
        index = _randint(generator, 0, len(self.ratios) - 1) if len(self.ratios) > 1 else 0
        ratio, var = self.ratios[index], self.ratio_vars[index]
        return _uniform(generator, ratio - var, ratio + var) if var > 0 else ratio

    def __call__(self, generator: torch.Generator, epoch: int = 0) -> torch.Tensor:
        """A bool mask [L] for one global crop."""
        num_patches = self.block.num_patches
        num_masked = int(self.draw_ratio(generator, epoch) * num_patches)
        if self.shape == "rand":
            mask = torch.zeros(num_patches, dtype=torch.bool)
            mask[torch.randperm(num_patches, generator=generator)[:num_masked]] = True
            return mask
        return self.block(num_masked, generator)
