"""The math of the DiT IP-Adapters, host-free (layouts: q/k/v `[B, H, L, D]`, tokens `[B, L, H*D]`).

    XLabs (Flux double blocks):   img_out = block(img) + s * SDPA(q_img, K, V)
    InstantX Flux (all blocks):   attn'   = attn + s * SDPA(q, RMS(K), V)       (before proj and gate)
    InstantX SD3.5 (joint blocks): x_attn' = x_attn + s * SDPA(RMS_q(q_raw), [RMS_k(k_raw); RMS_ipk(K_ip)], [v; V_ip])

q is the query the block's own attention uses, after its QK-norm and before RoPE (Flux), or
the raw projection before ln_q (SD3.5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim, statistics in fp32 (as diffusers' RMSNorm)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        h = h * weight.float()
    return h.to(dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H*D] -> [B, H, L, D]."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, D] -> [B, L, H*D]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v on [B, H, L, D]; k/v with batch 1 broadcast over B."""
    if k.shape[0] != q.shape[0]:
        k = k.expand(q.shape[0], -1, -1, -1)
        v = v.expand(q.shape[0], -1, -1, -1)
    return F.scaled_dot_product_attention(q, k, v)


def ip_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Image-prompt attention of a Flux block: q [B, H, L, D], K/V [B or 1, H, N, D] -> [B, L, H*D]."""
    return merge_heads(sdpa(q, k.to(q.dtype), v.to(q.dtype)))


def head_rms(x: torch.Tensor, head_dim: int, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm of every head of `[..., H*D]` tokens (weight: [D] or None)."""
    shape = x.shape
    return rms_norm(x.reshape(*shape[:-1], shape[-1] // head_dim, head_dim), weight, eps).reshape(shape)


def sd35_ip_attention(
    q_raw: torch.Tensor,
    k_raw: torch.Tensor,
    v: torch.Tensor,
    k_ip: torch.Tensor,
    v_ip: torch.Tensor,
    norm_q: torch.Tensor,
    norm_k: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """InstantX SD3.5: the image tokens attend to [image tokens; IP tokens] with the adapter's own
    q/k norms. q_raw/k_raw/v: [B, H, L, D] (before the block's ln_q/ln_k); k_ip already
    normalised by norm_ip_k, k_ip/v_ip: [B or 1, H, N, D]. Returns [B, L, H*D]."""
    b = q_raw.shape[0]
    if k_ip.shape[0] != b:
        k_ip = k_ip.expand(b, -1, -1, -1)
        v_ip = v_ip.expand(b, -1, -1, -1)
    q = rms_norm(q_raw, norm_q, eps)
    k = torch.cat([rms_norm(k_raw, norm_k, eps), k_ip.to(q.dtype)], dim=2)
    vv = torch.cat([v, v_ip.to(v.dtype)], dim=2)
    return merge_heads(F.scaled_dot_product_attention(q, k, vv))


def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f), sin(t f)], f_k = exp(-ln(max_period) k / (dim/2)) (flip_sin_to_cos, shift 0); fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1).float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
