"""Tile plans, the enhancer's token merge, square crops, sharpening and noise images."""

from __future__ import annotations

import pytest
import torch

from ip_adapter_core import tiles
from ip_adapter_core.errors import InvalidInputError
from ip_adapter_core.imageops import CLIP_MEAN, CropPosition, NoiseType, gaussian_blur, noise_image, sharpen_cas, square


@pytest.mark.parametrize(
    "hw, size, count",
    [((768, 512), (336, 224), 2), ((512, 512), (448, 448), 4), ((500, 560), (448, 448), 4),
     ((100, 1000), (224, 896), 4), ((300, 1000), (224, 747), 4), ((224, 224), (448, 448), 4)],
)
def test_tile_plans_cover_the_image_exactly_once(hw, size, count):
    plan = tiles.plan_tiles(*hw, 224)
    assert plan.size == size and plan.count == count
    masks = tiles.region_masks(plan)
    assert torch.equal(masks.sum(0), torch.ones(size))  # a partition: no double strength in overlaps
    for (y, x), (y0, y1, x0, x1) in zip(plan.origins, plan.regions):
        assert y <= y0 < y1 <= y + 224 and x <= x0 < x1 <= x + 224  # a tile owns only what it sees
    top, left, h, w = plan.crop
    assert 0 <= top and 0 <= left and top + h <= hw[0] and left + w <= hw[1]
    assert w / h <= tiles.MAX_ASPECT + 1e-6 and h / w <= tiles.MAX_ASPECT + 1e-6


def test_cut_tiles_match_their_origins():
    plan = tiles.plan_tiles(336, 224, 224)
    img = torch.rand(2, *plan.size, 3)
    cut = tiles.cut_tiles(img, plan)
    assert cut.shape == (plan.count, 2, 224, 224, 3)
    y, x = plan.origins[1]
    assert torch.equal(cut[1], img[:, y : y + 224, x : x + 224])


def test_merge_tile_tokens_stitches_and_pools_the_patch_grids():
    t, g, d = 2, 2, 3
    # tile r*t+c holds patch values that encode its global position in the stitched grid
    stitched = torch.arange((t * g) ** 2, dtype=torch.float32).reshape(t * g, t * g)
    tokens = torch.zeros(1, t * t, 1 + g * g, d)
    for r in range(t):
        for c in range(t):
            block = stitched[r * g : (r + 1) * g, c * g : (c + 1) * g].reshape(-1)
            tokens[0, r * t + c, 1:] = block[:, None].expand(-1, d)
            tokens[0, r * t + c, 0] = r * t + c
    merged = tiles.merge_tile_tokens(tokens, t)
    expected = torch.nn.functional.avg_pool2d(stitched[None, None], t)[0, 0].reshape(-1)
    assert torch.allclose(merged[0, 1:, 0], expected)
    assert torch.allclose(merged[0, 0], torch.full((d,), 1.5))
    grid = tiles.grid_tiles(torch.arange(16.0).reshape(1, 4, 4, 1), 2)
    assert grid[0, 1, :, :, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]


def test_blend_ratio_is_the_share_of_tile_features():
    full, tiled = torch.zeros(2, 5), torch.ones(2, 5)
    assert torch.equal(tiles.blend(full, tiled, 0.0), full)
    assert torch.equal(tiles.blend(full, tiled, 1.0), tiled)
    assert torch.allclose(tiles.blend(full, tiled, 0.25), torch.full((2, 5), 0.25))
    with pytest.raises(InvalidInputError):
        tiles.blend(full, tiled, 1.5)


def _tall():
    img = torch.zeros(1, 6, 2, 3)
    img[:, :2, :, 0] = 1.0  # red top
    img[:, -2:, :, 2] = 1.0  # blue bottom
    return img


def test_square_crop_positions():
    assert square(_tall(), CropPosition.TOP)[0, :, :, 0].min() == 1.0
    assert square(_tall(), CropPosition.BOTTOM)[0, :, :, 2].min() == 1.0
    centre = square(_tall(), CropPosition.CENTER)
    assert centre.shape == (1, 2, 2, 3) and centre.abs().sum() == 0
    wide = _tall().transpose(1, 2)
    assert square(wide, CropPosition.LEFT)[0, :, :, 0].min() == 1.0
    assert square(wide, CropPosition.RIGHT)[0, :, :, 2].min() == 1.0
    padded = square(_tall(), CropPosition.PAD)
    assert padded.shape == (1, 6, 6, 3)
    assert torch.allclose(padded[0, 0, 0], torch.tensor(CLIP_MEAN)) and torch.equal(padded[:, :, 2:4], _tall())


def test_cas_sharpening():
    img = torch.full((1, 8, 8, 3), 0.3)
    img[:, :, 4:] = 0.7
    assert torch.equal(sharpen_cas(img, 0.0), img)
    flat = torch.full((1, 5, 5, 3), 0.4)
    assert torch.allclose(sharpen_cas(flat, 1.0), flat)
    out = sharpen_cas(img, 1.0)
    assert out[0, 3, 3, 0] < 0.3 and out[0, 3, 4, 0] > 0.7  # the edge gets more contrast
    assert out.min() >= 0 and out.max() <= 1
    assert (sharpen_cas(img, 1.0) - img).abs().sum() > (sharpen_cas(img, 0.2) - img).abs().sum()


def test_noise_is_deterministic_by_seed():
    base = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    for kind in NoiseType:
        a, b = noise_image(base, kind, 0.6, 5), noise_image(base, kind, 0.6, 5)
        assert torch.equal(a, b) and a.shape == base.shape and 0 <= a.min() and a.max() <= 1
        assert not torch.equal(a, noise_image(base, kind, 0.6, 6))
    assert torch.equal(noise_image(base, NoiseType.FADE, 0.0, 1), base)
    shuffled = noise_image(base, NoiseType.SHUFFLE, 1.0, 3)
    assert torch.equal(shuffled.flatten().sort().values, base.flatten().sort().values)  # colours stay
    blurred = gaussian_blur(shuffled, 5)
    assert blurred.shape == shuffled.shape and blurred.std() < shuffled.std()
