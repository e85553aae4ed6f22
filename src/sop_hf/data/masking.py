"""iBOT masks for SOP-MIM: the block-mask generator and the policy that draws each crop's mask ratio.

Ported from bytedance/ibot ``loader.py`` (``ImageFolderMask``, arXiv 2111.07832), which follows BEiT's
``masking_generator.py`` (arXiv 2106.08254):
https://github.com/bytedance/ibot/blob/c24f870dc85c0322200e66399c05af193b8c9554/loader.py
SOP's own ``loader.py`` is not public; docs/method.md §3 states the recipe used here. Randomness comes only from
an explicit ``torch.Generator`` (iBOT uses the global ``random`` and ``np.random`` modules), so the masks are
reproducible, but not the same random stream as iBOT.

Masks are made for the student's global crops only; the collator stacks them into ``bool_masked_pos`` [2B, L].

>>> import torch
>>> policy = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=0.3)
>>> mask = policy(torch.Generator().manual_seed(0))  # [196] bool
>>> mask.shape, int(mask.sum()) <= int(0.3 * 196)
(torch.Size([196]), True)
"""

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BlockMaskGenerator", "MaskingPolicy"]


class BlockMaskGenerator:
    """iBOT/BEiT blockwise masks on an H x W patch grid, for a given ratio.

    For a ratio r the budget is r*H*W patches. Each round makes up to ``max_attempts`` tries at a rectangle:
    area ~ U[min_num_patches, remaining budget], aspect = exp(U[ln a0, ln a1]), h = round(sqrt(area*aspect)),
    w = round(sqrt(area/aspect)), kept only if h < H and w < W; it is placed uniformly and accepted only if it adds
    between 1 and the remaining budget of new patches. Masking stops when the budget is met or a round adds nothing,
    so the masked count is <= r*H*W (often a little below it).

    Ambiguities resolved here:
        - When the remaining budget is below ``min_num_patches`` the area is drawn between the two
          (Python's ``random.uniform(a, b)`` with a > b, as in iBOT), so small remainders can still be filled.
        - Rounding is Python's ``round`` (half to even), as in iBOT.
        - iBOT's ``random.randint(0, H - h)`` is inclusive; so is the placement here.

    Args:
        grid_size: (H, W) patches per crop, i.e. crop size // patch size (14 x 14 for 224 px and 16-px patches).
        min_num_patches: smallest block area; None uses iBOT's (min(H, W) // 3) ** 2 (16 on 14 x 14). Lower it for
            finer masks on tiny grids (it is 1 on grids under 6 x 6 anyway).
        aspect_ratio: (low, high) block aspect range, drawn log-uniformly; iBOT uses (0.3, 1 / 0.3).
        max_attempts: tries per round before giving up; iBOT uses 10.

    >>> import torch
    >>> mask = BlockMaskGenerator((4, 4))(0.5, torch.Generator().manual_seed(0))
    >>> mask.dtype, mask.shape
    (torch.bool, torch.Size([16]))
    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        min_num_patches: int | None = None,
        aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
        max_attempts: int = 10,
    ):
        if isinstance(grid_size, int):
            grid_size = (grid_size, grid_size)
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"grid_size must be (H, W) with H, W >= 1, got {grid_size}")
        height, width = int(grid_size[0]), int(grid_size[1])
        if min_num_patches is None:
            min_num_patches = (min(height, width) // 3) ** 2
        if min_num_patches < 0:
            raise ValueError(f"min_num_patches must be >= 0, got {min_num_patches}")
        if len(aspect_ratio) != 2 or not 0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ValueError(f"aspect_ratio must be (low, high) with 0 < low <= high, got {aspect_ratio}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.grid_size = (height, width)
        self.min_num_patches = int(min_num_patches)
        self.aspect_ratio = (float(aspect_ratio[0]), float(aspect_ratio[1]))
        self.max_attempts = int(max_attempts)
        self._log_aspect = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def __call__(self, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """A blockwise mask of about ``ratio`` of the grid: bool [H*W], row-major, True = masked."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        height, width = self.grid_size
        mask = np.zeros((height, width), dtype=bool)
        budget = ratio * height * width
        count = 0
        while count < budget:
            remaining = budget - count
            added = 0
            for _ in range(self.max_attempts):
                u_area, u_aspect, u_top, u_left = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
                area = self.min_num_patches + (remaining - self.min_num_patches) * u_area
                aspect = math.exp(self._log_aspect[0] + (self._log_aspect[1] - self._log_aspect[0]) * u_aspect)
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if h < height and w < width:
                    top = min(int(u_top * (height - h + 1)), height - h)
                    left = min(int(u_left * (width - w + 1)), width - w)
                    new = h * w - int(mask[top : top + h, left : left + w].sum())
                    if 0 < new <= remaining:
                        mask[top : top + h, left : left + w] = True
                        added = new
                if added > 0:
                    break
            if added == 0:
                break
            count += added
        return torch.from_numpy(mask.reshape(-1))  # [H*W]

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid_size={self.grid_size}, min_num_patches={self.min_num_patches}, "
            f"aspect_ratio={self.aspect_ratio}, max_attempts={self.max_attempts})"
        )


class MaskingPolicy:
    """Draws each crop's mask ratio (iBOT's ``pred_ratio`` rules) and makes its mask.

    Ratio rules (docs/method.md §3):
        - before ``start_epoch``: r = 0 (nothing masked);
        - one ratio r with variation v: r ~ U[r - v, r + v] (exactly r when v = 0);
        - several ratios: one (r_i, v_i) pair is chosen uniformly per crop, then as above. iBOT draws every
          r_i ~ U[r_i - v_i, r_i + v_i] and then picks one; the distribution is the same.

    Args:
        mask_generator: the block generator; its grid sets the mask length L = H*W.
        ratios: mask ratio, or several (one is chosen per crop). SOP default 0.3; iBOT's ``(0.0, 0.3)`` with
            ``ratio_vars=(0.0, 0.2)`` leaves about half of the crops unmasked and masks the rest at U[0.1, 0.5].
        ratio_vars: uniform +- variation per ratio; a single value applies to every ratio. Each r_i - v_i must be
            >= 0 and r_i + v_i <= 1.
        start_epoch: epoch before which nothing is masked (iBOT ``pred_start_epoch``); 0 masks from the start.
        shape: ``"block"`` (iBOT/BEiT blocks) or ``"rand"`` (exactly floor(r*L) uniformly chosen patches).

    >>> import torch
    >>> policy = MaskingPolicy(BlockMaskGenerator((4, 4)), ratios=0.5, shape="rand")
    >>> int(policy(torch.Generator().manual_seed(0)).sum())
    8
    """

    def __init__(
        self,
        mask_generator: BlockMaskGenerator,
        ratios: float | Sequence[float] = 0.3,
        ratio_vars: float | Sequence[float] = 0.0,
        start_epoch: int = 0,
        shape: str = "block",
    ):
        ratios = [float(ratios)] if isinstance(ratios, (int, float)) else [float(r) for r in ratios]
        ratio_vars = [float(ratio_vars)] if isinstance(ratio_vars, (int, float)) else [float(v) for v in ratio_vars]
        if not ratios:
            raise ValueError("ratios must hold at least one mask ratio")
        if len(ratio_vars) == 1:
            ratio_vars = ratio_vars * len(ratios)
        if len(ratio_vars) != len(ratios):
            raise ValueError(f"ratio_vars must hold 1 or len(ratios)={len(ratios)} values, got {len(ratio_vars)}")
        for r, v in zip(ratios, ratio_vars, strict=True):
            if v < 0 or r - v < 0 or r + v > 1:
                raise ValueError(
                    f"each mask ratio r with variation v needs 0 <= r - v and r + v <= 1 (v >= 0), got r={r}, v={v}"
                )
        if shape not in ("block", "rand"):
            raise ValueError(f"shape must be 'block' or 'rand', got {shape!r}")
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.mask_generator = mask_generator
        self.ratios = tuple(ratios)
        self.ratio_vars = tuple(ratio_vars)
        self.start_epoch = int(start_epoch)
        self.shape = shape

    @classmethod
    def for_crop(cls, crop_size: int, patch_size: int, **kwargs) -> "MaskingPolicy":
        """A policy for square crops of ``crop_size`` px and ``patch_size``-px patches (grid crop_size // patch)."""
        if patch_size < 1 or crop_size < patch_size or crop_size % patch_size:
            raise ValueError(f"crop_size ({crop_size}) must be a positive multiple of patch_size ({patch_size})")
        grid = crop_size // patch_size
        return cls(BlockMaskGenerator((grid, grid)), **kwargs)

    @property
    def num_patches(self) -> int:
        """L, the length of every mask."""
        return self.mask_generator.num_patches

    def sample_ratio(self, generator: torch.Generator | None = None, epoch: int | None = None) -> float:
        """This crop's ratio under the rules above; ``epoch`` None counts as past ``start_epoch``."""
        if epoch is not None and epoch < self.start_epoch:
            return 0.0
        index = 0
        if len(self.ratios) > 1:
            index = int(torch.randint(len(self.ratios), (1,), generator=generator))
        ratio, var = self.ratios[index], self.ratio_vars[index]
        if var > 0:
            ratio = ratio - var + 2 * var * float(torch.rand((), generator=generator, dtype=torch.float64))
        return min(max(ratio, 0.0), 1.0)

    def __call__(self, generator: torch.Generator | None = None, epoch: int | None = None) -> torch.Tensor:
        """One crop's mask: bool [L], True = masked (replaced by the mask token in the student)."""
        ratio = self.sample_ratio(generator, epoch)
        num_patches = self.num_patches
        if ratio == 0.0:
            return torch.zeros(num_patches, dtype=torch.bool)
        if self.shape == "rand":
            mask = torch.zeros(num_patches, dtype=torch.bool)
            mask[torch.randperm(num_patches, generator=generator)[: int(ratio * num_patches)]] = True
            return mask
        return self.mask_generator(ratio, generator)

    def __repr__(self) -> str:
        return (
            f"MaskingPolicy({self.mask_generator!r}, ratios={self.ratios}, ratio_vars={self.ratio_vars}, "
            f"start_epoch={self.start_epoch}, shape={self.shape!r})"
        )
