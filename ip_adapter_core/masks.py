"""Attention masks: validation and resizing to a layer's token grid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import MaskInputError


def normalize_mask(mask: torch.Tensor, what: str = "attn_mask") -> torch.Tensor:
    """Any MASK-like tensor -> float [M, H, W] in [0, 1]; errors name the input `what`."""
    if not isinstance(mask, torch.Tensor):
        raise MaskInputError(f"{what} must be a MASK tensor, got {type(mask).__name__}.")
    m = mask
    if m.ndim == 2:
        m = m[None]
    elif m.ndim == 4 and m.shape[-1] in (1, 3, 4):  # an IMAGE wired in as a mask: use its first channel
        m = m[..., 0]
    elif m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise MaskInputError(
            f"{what} must be [height, width] or [batch, height, width]; got shape {list(mask.shape)}. Connect a "
            "MASK (e.g. from Load Image (as Mask) or Solid Mask)."
        )
    if m.shape[0] == 0 or m.shape[1] == 0 or m.shape[2] == 0:
        raise MaskInputError(
            f"{what} is empty (shape {list(mask.shape)}); connect a mask with at least one pixel, or disconnect it."
        )
    m = m.float()
    if not torch.isfinite(m).all():
        raise MaskInputError(f"{what} contains NaN or infinite values; check the node that made it.")
    return m.clamp(0.0, 1.0)


def token_grid(n_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Height and width of a layer's token grid for a latent of `latent_hw`.

    UNet downsampling rounds up (stride-2 convs with padding 1), so the grid at level f is
    ceil(H / 2^f) x ceil(W / 2^f). Falls back to the latent's aspect ratio otherwise."""
    h, w = latent_hw
    for level in range(8):
        gh, gw = math.ceil(h / 2**level), math.ceil(w / 2**level)
        if gh * gw == n_tokens:
            return gh, gw
    gh = max(1, round(math.sqrt(n_tokens * h / max(w, 1))))
    while n_tokens % gh:
        gh -= 1
    return gh, n_tokens // gh


def resize_to_tokens(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[M, H, W] -> [M, h*w, 1] with bilinear resampling (area for large reductions)."""
    gh, gw = grid
    m = mask[:, None]
    mode = "area" if (m.shape[-2] >= 2 * gh and m.shape[-1] >= 2 * gw) else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(m, size=(gh, gw), mode=mode, **kwargs)
    return out.reshape(mask.shape[0], gh * gw, 1)


def aspect_mismatch(mask_hw: tuple[int, int], latent_hw: tuple[int, int], tolerance: float = 0.02) -> bool:
    mh, mw = mask_hw
    lh, lw = latent_hw
    return abs(math.log((mw / mh) / (lw / lh))) > tolerance
