"""Decoupled cross-attention: text attention plus weighted image attention.

Tensors use ComfyUI's layout: `[batch, tokens, heads * dim_head]`, already projected.

    out = Attn(q, k_txt, v_txt) + sum_b  scale_b * mask_b * Attn(q, k_b, v_b)

Each branch b has its own softmax: one adapter's images without masks form one branch
(their tokens concatenated), a masked image is a branch of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ImageBranch:
    k: torch.Tensor  # [B or 1, T, C]
    v: torch.Tensor  # [B or 1, T, C]
    scale: float | torch.Tensor = 1.0  # python float, or [B, 1, 1]
    mask: torch.Tensor | None = None  # [B or 1, N, 1] in [0, 1], or None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head SDPA in ComfyUI layout. k/v may have batch 1 (broadcast)."""
    b, n, c = q.shape
    d = c // heads
    if k.shape[0] != b:
        k = k.expand(b, -1, -1)
        v = v.expand(b, -1, -1)
    qh = q.view(b, n, heads, d).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    vh = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, n, c)


def add_image_attention(out: torch.Tensor, q: torch.Tensor, heads: int, branches: Sequence[ImageBranch]) -> torch.Tensor:
    """`out` (the text attention) plus every image branch. Returns a new tensor."""
    for branch in branches:
        if isinstance(branch.scale, (int, float)) and branch.scale == 0:
            continue
        ip = attention(q, branch.k, branch.v, heads)
        if branch.mask is not None:
            ip = ip * branch.mask
        out = out + ip * branch.scale
    return out


def decoupled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    branches: Sequence[ImageBranch] = (),
) -> torch.Tensor:
    return add_image_attention(attention(q, k, v, heads), q, heads, branches)
