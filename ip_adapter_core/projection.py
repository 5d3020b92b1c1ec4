"""Image projection models: image features -> image tokens for the K/V layers.

Parameter names mirror the published checkpoints' `image_proj.*` keys, so a strict
`load_state_dict` of the file's tensors fills every module.
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import AdapterSpec, ProjectionKind, ResamplerSpec


class LinearTokens(nn.Module):
    """One pooled CLIP embedding -> `tokens` tokens (the original IP-Adapter)."""

    def __init__(self, in_dim: int, out_dim: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(in_dim, out_dim * tokens)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(embeds).reshape(embeds.shape[0], self.tokens, -1)
        return self.norm(x)


class TokenMLP(nn.Module):
    """Per-token MLP over every CLIP hidden state (Full Face: 257 tokens)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


class PerceiverAttention(nn.Module):
    """Latents attend to [inputs; latents]; softmax in fp32."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads, self.dim_head = heads, dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, shift: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """`shift`/`scale` ([B, dim]): AdaLN modulation of the normed latents (SD3.5's TimeResampler)."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        if scale is not None:
            latents = latents * (1 + scale[:, None]) + shift[:, None]
        q = self._heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        # Scaling q and k by d^-1/4 each keeps fp16 logits in range (as the reference does).
        scale = self.dim_head**-0.25
        logits = (q * scale) @ (k * scale).transpose(-2, -1)
        weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
        out = (weights @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class Resampler(nn.Module):
    """Perceiver resampler. With `queries == 0` the caller supplies the latents (FaceID-Plus)."""

    def __init__(self, spec: ResamplerSpec):
        super().__init__()
        if spec.queries:
            self.latents = nn.Parameter(torch.randn(1, spec.queries, spec.dim) / spec.dim**0.5)
        else:
            self.latents = None
        self.proj_in = nn.Linear(spec.in_dim, spec.dim)
        self.proj_out = nn.Linear(spec.dim, spec.out_dim)
        self.norm_out = nn.LayerNorm(spec.out_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(spec.dim, spec.dim_head, spec.heads), _feed_forward(spec.dim, spec.ff_mult)])
            for _ in range(spec.depth)
        )

    def forward(self, x: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        if latents is None:
            latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceIdTokens(nn.Module):
    """insightface identity embedding -> `tokens` tokens (FaceID, Portrait)."""

    def __init__(self, in_dim: int, out_dim: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Sequential(nn.Linear(in_dim, 1024), nn.GELU(), nn.Linear(1024, out_dim * tokens))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(face).reshape(face.shape[0], self.tokens, -1))


class FaceIdPlusTokens(FaceIdTokens):
    """Identity tokens refined by a perceiver over CLIP features of the aligned face.

    v2 files are used with `shortcut=True`: tokens + scale * perceiver(tokens, clip)."""

    def __init__(self, in_dim: int, out_dim: int, tokens: int, perceiver: ResamplerSpec):
        super().__init__(in_dim, out_dim, tokens)
        self.perceiver_resampler = Resampler(perceiver)

    def forward(self, face: torch.Tensor, clip_hidden: torch.Tensor, shortcut: bool = False, scale: float = 1.0) -> torch.Tensor:
        tokens = super().forward(face)
        refined = self.perceiver_resampler(clip_hidden, latents=tokens)
        return tokens + scale * refined if shortcut else refined


class UnnormPortraitTokens(Resampler):
    """Resampler over the raw identity embedding, seen as a one-token sequence."""

    def forward(self, face: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        if face.ndim == 2:
            face = face[:, None, :]
        return super().forward(face, latents)


def build_projection(spec: AdapterSpec) -> nn.Module:
    kind, d = spec.kind, spec.cross_attention_dim
    if kind is ProjectionKind.LINEAR:
        return LinearTokens(spec.feature_dim, d, spec.tokens)
    if kind is ProjectionKind.FULL_FACE_MLP:
        return TokenMLP(spec.feature_dim, d)
    if kind is ProjectionKind.RESAMPLER:
        assert spec.resampler is not None
        return Resampler(spec.resampler)
    if kind in (ProjectionKind.FACEID_MLP, ProjectionKind.PORTRAIT):
        return FaceIdTokens(spec.feature_dim, d, spec.tokens)
    if kind is ProjectionKind.FACEID_PLUS:
        assert spec.resampler is not None
        return FaceIdPlusTokens(spec.feature_dim, d, spec.tokens, spec.resampler)
    if kind is ProjectionKind.PORTRAIT_UNNORM:
        assert spec.resampler is not None
        return UnnormPortraitTokens(spec.resampler)
    raise ValueError(f"no projection for {kind}")
