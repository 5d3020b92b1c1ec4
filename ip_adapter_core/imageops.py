"""Image helpers on ComfyUI IMAGE tensors ([B, H, W, C], floats in 0..1): square crops,
contrast-adaptive sharpening, blur and the noise images used as negative references."""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


class CropPosition(str, enum.Enum):
    CENTER = "center"
    TOP = "top"
    BOTTOM = "bottom"
    LEFT = "left"
    RIGHT = "right"
    PAD = "pad"  # fit inside the square; the rest is CLIP's mean colour (zero after normalisation)


def square(image: torch.Tensor, position: CropPosition, fill=CLIP_MEAN) -> torch.Tensor:
    """Crop (or pad) [B, H, W, C] to a square. top/bottom pick the kept part of a tall image,
    left/right of a wide one; the other axis is centred."""
    b, h, w, c = image.shape
    if h == w:
        return image
    if position is CropPosition.PAD:
        side = max(h, w)
        canvas = torch.tensor(fill[:c] if c <= len(fill) else (*fill, *([1.0] * (c - len(fill)))), dtype=image.dtype)
        out = canvas.view(1, 1, 1, c).repeat(b, side, side, 1).to(image.device)
        top, left = (side - h) // 2, (side - w) // 2
        out[:, top : top + h, left : left + w] = image
        return out
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    if h > w:
        if position is CropPosition.TOP:
            top = 0
        elif position is CropPosition.BOTTOM:
            top = h - side
    else:
        if position is CropPosition.LEFT:
            left = 0
        elif position is CropPosition.RIGHT:
            left = w - side
    return image[:, top : top + side, left : left + side]


def sharpen_cas(image: torch.Tensor, amount: float) -> torch.Tensor:
    """Contrast-adaptive sharpening: a negative-lobe 3x3 filter whose strength per pixel
    shrinks where the local contrast is already high (so edges do not ring). amount 0..1;
    0 returns the image unchanged."""
    if amount <= 0:
        return image
    if amount > 1:
        raise InvalidInputError(f"sharpening must be between 0 and 1, got {amount}.")
    x = image.movedim(-1, 1).float()  # [B, C, H, W]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]

    def at(dy, dx):
        return p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    n, s, wst, e = at(-1, 0), at(1, 0), at(0, -1), at(0, 1)
    cross = torch.stack([n, s, wst, e, x])
    corners = torch.stack([at(-1, -1), at(-1, 1), at(1, -1), at(1, 1)])
    # soft min/max over the 3x3 neighbourhood (cross + full window), on a 0..2 scale
    lo = cross.amin(0) + torch.minimum(cross.amin(0), corners.amin(0))
    hi = cross.amax(0) + torch.maximum(cross.amax(0), corners.amax(0))
    headroom = torch.minimum(lo, 2.0 - hi)
    strength = torch.sqrt((headroom / hi.clamp_min(1e-5)).clamp(0.0, 1.0))
    lobe = -strength / (8.0 - 3.0 * amount)  # from -1/8 (gentle) to -1/5 (strong)
    out = (x + lobe * (n + s + wst + e)) / (1.0 + 4.0 * lobe)
    return out.clamp(0.0, 1.0).movedim(1, -1).to(image.dtype)


def gaussian_blur(image: torch.Tensor, size: int) -> torch.Tensor:
    """Separable Gaussian blur with an odd kernel of about `size` pixels (0/1: unchanged)."""
    if size <= 1:
        return image
    k = size if size % 2 else size + 1
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    t = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image.device)
    x = image.movedim(-1, 1).float()
    c = x.shape[1]
    pad = k // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect" if x.shape[-1] > pad else "replicate"), kernel.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect" if x.shape[-2] > pad else "replicate"), kernel.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)
    return x.movedim(1, -1).to(image.dtype)


class NoiseType(str, enum.Enum):
    FADE = "fade"  # blend towards uniform noise
    DISSOLVE = "dissolve"  # replace a random share of pixels with noise
    GAUSSIAN = "gaussian"  # add Gaussian noise
    SHUFFLE = "shuffle"  # permute a share of 16px blocks: colours stay, layout goes


SHUFFLE_BLOCK = 16


def noise_image(base: torch.Tensor, kind: NoiseType, strength: float, seed: int) -> torch.Tensor:
    """A noisy version of `base` [B, H, W, C] (deterministic for a seed), clamped to 0..1."""
    if not 0.0 <= strength <= 1.0:
        raise InvalidInputError(f"noise strength must be between 0 and 1, got {strength}.")
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    img = base.float().cpu()
    b, h, w, c = img.shape
    if kind is NoiseType.FADE:
        out = img * (1 - strength) + torch.rand(img.shape, generator=g) * strength
    elif kind is NoiseType.DISSOLVE:
        hit = torch.rand((b, h, w, 1), generator=g) < strength
        out = torch.where(hit, torch.rand(img.shape, generator=g), img)
    elif kind is NoiseType.GAUSSIAN:
        out = img + torch.randn(img.shape, generator=g) * strength
    elif kind is NoiseType.SHUFFLE:
        out = _shuffle_blocks(img, strength, g)
    else:
        raise ValueError(kind)
    return out.clamp(0.0, 1.0).to(base.dtype)


def _shuffle_blocks(img: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    b, h, w, c = img.shape
    s = SHUFFLE_BLOCK
    gh, gw = max(1, h // s), max(1, w // s)
    bh, bw = h // gh, w // gw
    core = img[:, : gh * bh, : gw * bw]
    blocks = core.reshape(b, gh, bh, gw, bw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, bh, bw, c).clone()
    n = gh * gw
    moved = round(strength * n)
    for i in range(b):
        if moved < 2:
            break
        chosen = torch.randperm(n, generator=g)[:moved]
        blocks[i, chosen] = blocks[i, chosen[torch.randperm(moved, generator=g)]]
    out = img.clone()
    out[:, : gh * bh, : gw * bw] = blocks.reshape(b, gh, gw, bh, bw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, gh * bh, gw * bw, c)
    return out
