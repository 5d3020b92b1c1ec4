"""Tiling a reference image: tiled references (one adapter entry per tile, each with its
own region) and the ClipVision enhancer (tile-encoded patch tokens merged into one grid)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

SQUARE_ASPECT = (0.75, 4.0 / 3.0)  # aspect ratios (w/h) treated as square: 2 x 2 tiles
MAX_ASPECT = 4.0  # longer references are centre-cropped to 4:1


@dataclass(frozen=True)
class TilePlan:
    crop: tuple[int, int, int, int]  # (top, left, height, width) kept from the source image
    size: tuple[int, int]  # (height, width) of the prepared image the tiles come from
    tile: int  # tile side in pixels
    origins: tuple[tuple[int, int], ...]  # (top, left) of each tile, row-major
    regions: tuple[tuple[int, int, int, int], ...]  # (y0, y1, x0, x1) each tile owns

    @property
    def count(self) -> int:
        return len(self.origins)


def _axis(length: int, tile: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Tile starts spread evenly over `length`, and the span each tile owns: overlaps are
    split in the middle, so the spans cover the axis exactly once."""
    n = max(1, math.ceil(length / tile - 1e-9))
    starts = [0] if n == 1 else [round(i * (length - tile) / (n - 1)) for i in range(n)]
    cuts = [round((starts[i] + tile + starts[i + 1]) / 2) for i in range(n - 1)]
    bounds = [0, *cuts, length]
    return starts, [(bounds[i], bounds[i + 1]) for i in range(n)]


def plan_tiles(height: int, width: int, tile: int) -> TilePlan:
    """Near-square references become 2 x 2 tiles; others have their short side scaled to one
    tile and are split along the long side (at most 4:1, centre-cropped beyond that)."""
    if height <= 0 or width <= 0 or tile <= 0:
        raise InvalidInputError(f"cannot tile a {width}x{height} image into {tile}px tiles.")
    aspect = width / height
    top, left, h, w = 0, 0, height, width
    if SQUARE_ASPECT[0] < aspect < SQUARE_ASPECT[1]:
        side = min(height, width)
        top, left, h, w = (height - side) // 2, (width - side) // 2, side, side
        size = (2 * tile, 2 * tile)
    else:
        if aspect > MAX_ASPECT:
            w = round(height * MAX_ASPECT)
            left = (width - w) // 2
        elif aspect < 1 / MAX_ASPECT:
            h = round(width * MAX_ASPECT)
            top = (height - h) // 2
        if w >= h:
            size = (tile, max(tile, round(w * tile / h)))
        else:
            size = (max(tile, round(h * tile / w)), tile)
    ys, yspans = _axis(size[0], tile)
    xs, xspans = _axis(size[1], tile)
    origins = tuple((y, x) for y in ys for x in xs)
    regions = tuple((y0, y1, x0, x1) for (y0, y1) in yspans for (x0, x1) in xspans)
    return TilePlan((top, left, h, w), size, tile, origins, regions)


def region_masks(plan: TilePlan, base: torch.Tensor | None = None) -> torch.Tensor:
    """[tiles, H, W] masks in the prepared image's frame: 1 inside the region a tile owns
    (times `base`, the user's mask at that size, if given)."""
    h, w = plan.size
    masks = torch.zeros(plan.count, h, w)
    for i, (y0, y1, x0, x1) in enumerate(plan.regions):
        masks[i, y0:y1, x0:x1] = 1.0
    if base is not None:
        masks = masks * base.reshape(1, h, w).to(masks.dtype)
    return masks


def cut_tiles(image: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """Prepared images [B, H, W, C] -> tiles [tiles, B, tile, tile, C]."""
    t = plan.tile
    return torch.stack([image[:, y : y + t, x : x + t] for (y, x) in plan.origins])


# --- ClipVision enhancer ----------------------------------------------------------------


def grid_tiles(image: torch.Tensor, tiles: int) -> torch.Tensor:
    """Square images [B, S, S, C] with S divisible by `tiles` -> [B, tiles*tiles, s, s, C],
    row-major."""
    b, s, s2, c = image.shape
    if s != s2 or s % tiles:
        raise InvalidInputError(f"enhancer tiles need a square image divisible by {tiles}; got {s2}x{s}.")
    p = s // tiles
    x = image.reshape(b, tiles, p, tiles, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, tiles * tiles, p, p, c)


def merge_tile_tokens(tile_tokens: torch.Tensor, tiles: int) -> torch.Tensor:
    """Penultimate states of every tile [B, tiles*tiles, 1+g*g, D] -> one [B, 1+g*g, D]:
    the tiles' g x g patch grids are stitched into a (tiles*g)^2 grid and pooled back to
    g x g (each output patch = the mean of the tiles x tiles patches it covers); the class
    token is the tiles' mean."""
    b, n, tokens, d = tile_tokens.shape
    g = math.isqrt(tokens - 1)
    if n != tiles * tiles or g * g != tokens - 1:
        raise InvalidInputError(f"cannot merge {n} tiles of {tokens} tokens into a {tiles}x{tiles} grid.")
    cls = tile_tokens[:, :, :1].mean(1)
    patches = tile_tokens[:, :, 1:].reshape(b, tiles, tiles, g, g, d).permute(0, 1, 3, 2, 4, 5)
    big = patches.reshape(b, tiles * g, tiles * g, d).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(big.float(), kernel_size=tiles).to(tile_tokens.dtype)
    return torch.cat([cls, pooled.permute(0, 2, 3, 1).reshape(b, g * g, d)], dim=1)


def merge_tile_embeds(tile_embeds: torch.Tensor) -> torch.Tensor:
    """Pooled image embeds of every tile [B, tiles*tiles, D] -> their mean [B, D]."""
    return tile_embeds.mean(1)


def blend(full: torch.Tensor, tiled: torch.Tensor, ratio: float) -> torch.Tensor:
    """(1 - ratio) * full + ratio * tiled: ratio is the share of the tile (detail) features."""
    if not 0.0 <= ratio <= 1.0:
        raise InvalidInputError(f"enhance_ratio must be between 0 and 1, got {ratio}.")
    return torch.lerp(full.float(), tiled.float(), ratio).to(full.dtype)
