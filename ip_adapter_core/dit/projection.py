"""DiT adapter modules: image projections, the SD3.5 timestep resampler, per-block K/V
layers, and the SigLIP attention-pooling head ComfyUI's SigLIP loader leaves out.

Parameter names are the canonical checkpoint names (see layouts.py), so a strict
`load_state_dict` of a file's tensors fills every module.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..projection import LinearTokens, PerceiverAttention  # the UNet adapters' modules, same names
from .attention import head_rms, sinusoid
from .spec import DitAdapterSpec, DitKind, TimeResamplerSpec

INSTANTX_K_EPS = 1e-5  # the official processor's RMSNorm(128, eps=1e-5, elementwise_affine=False)
SD35_EPS = 1e-6


class InstantXFluxProjection(nn.Module):
    """SigLIP pooled output -> 128 tokens: LayerNorm(Linear(GELU(Linear(p))).reshape(128, d))."""

    def __init__(self, feature_dim: int, hidden: int, token_dim: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, tokens * token_dim))
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pooled).reshape(pooled.shape[0], self.tokens, -1))


class TimeResampler(nn.Module):
    """InstantX SD3.5 TimeResampler: SigLIP hidden states + timestep -> (tokens, temb).

    `project_in` does not depend on the timestep (cache it); `time_embedding` and `resample`
    run every step."""

    def __init__(self, r: TimeResamplerSpec):
        super().__init__()
        self.spec = r
        self.latents = nn.Parameter(torch.zeros(1, r.queries, r.dim))
        self.proj_in = nn.Linear(r.in_dim, r.dim)
        self.proj_out = nn.Linear(r.dim, r.out_dim)
        self.norm_out = nn.LayerNorm(r.out_dim)
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1 = nn.Linear(r.timestep_dim, r.dim)
        self.time_embedding.linear_2 = nn.Linear(r.dim, r.dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(r.dim, r.dim_head, r.heads),
                nn.Sequential(nn.LayerNorm(r.dim), nn.Linear(r.dim, r.dim * r.ff_mult, bias=False), nn.GELU(),
                              nn.Linear(r.dim * r.ff_mult, r.dim, bias=False)),
                nn.Sequential(nn.SiLU(), nn.Linear(r.dim, 4 * r.dim)),
            ])
            for _ in range(r.depth)
        )

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """t (DiT timestep in [0, 1000], shape [n]) -> temb [n, dim]."""
        w = self.time_embedding.linear_1.weight
        e = sinusoid(t.to(w.device), self.spec.timestep_dim).to(w.dtype)
        return self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(e)))

    def project_in(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj_in(features)

    def resample(self, x_in: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x_in = project_in(features) [n, L, dim], temb [n, dim] -> tokens [n, queries, out_dim]."""
        x = x_in + temb[:, None]
        latents = self.latents.expand(x.shape[0], -1, -1)
        for attn, ff, ada in self.layers:
            shift_msa, scale_msa, shift_mlp, scale_mlp = ada(temb).chunk(4, dim=1)
            latents = attn(x, latents, shift_msa, scale_msa) + latents
            h = ff[0](latents) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            for layer in ff[1:]:
                h = layer(h)
            latents = h + latents
        return self.norm_out(self.proj_out(latents))

    def forward(self, features: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temb = self.embed_time(t)
        return self.resample(self.project_in(features), temb), temb


class _Gain(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class _AdaNorm(nn.Module):
    """diffusers' AdaLayerNorm(chunk_dim=1): LN(x) * (1 + scale) + shift, (shift, scale) from temb."""

    def __init__(self, emb_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(emb_dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=1)
        return F.layer_norm(x, x.shape[-1:], eps=SD35_EPS) * (1 + scale[:, None]) + shift[:, None]


class BlockKV(nn.Module):
    """One block's IP layers: to_k_ip / to_v_ip (+ SD3.5's norm_ip and RMSNorm gains)."""

    def __init__(self, spec: DitAdapterSpec):
        super().__init__()
        self.to_k_ip = nn.Linear(spec.token_dim, spec.hidden_size, bias=spec.kv_bias)
        self.to_v_ip = nn.Linear(spec.token_dim, spec.hidden_size, bias=spec.kv_bias)
        if spec.kind is DitKind.INSTANTX_SD35:
            assert spec.resampler is not None and spec.head_dim is not None
            self.norm_ip = _AdaNorm(spec.resampler.dim, spec.token_dim)
            self.norm_q = _Gain(spec.head_dim)
            self.norm_k = _Gain(spec.head_dim)
            self.norm_ip_k = _Gain(spec.head_dim)


class DitAdapterModel(nn.Module):
    """A DiT adapter file as modules: `image_proj` and `ip_adapter[j]` for block j."""

    def __init__(self, spec: DitAdapterSpec):
        super().__init__()
        self.spec = spec
        if spec.kind is DitKind.XLABS:
            self.image_proj = LinearTokens(spec.feature_dim, spec.token_dim, spec.tokens)
        elif spec.kind is DitKind.INSTANTX_FLUX:
            self.image_proj = InstantXFluxProjection(spec.feature_dim, spec.projection_hidden or 2304, spec.token_dim, spec.tokens)
        else:
            assert spec.resampler is not None
            self.image_proj = TimeResampler(spec.resampler)
        self.ip_adapter = nn.ModuleList(BlockKV(spec) for _ in range(spec.blocks))

    @classmethod
    def from_state(cls, image_proj: Mapping[str, torch.Tensor], ip_adapter: Mapping[str, torch.Tensor],
                   spec: DitAdapterSpec, dtype: torch.dtype | None = None) -> "DitAdapterModel":
        """Modules holding the file's tensors (cast to `dtype`); built on the meta device, so no
        memory is spent on initial values."""
        with torch.device("meta"):
            model = cls(spec)
        state = {f"image_proj.{k}": v for k, v in image_proj.items()}
        state.update({f"ip_adapter.{k}": v for k, v in ip_adapter.items()})
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def placement(self) -> tuple[torch.device, torch.dtype]:
        """(device, dtype) of the weights. (Not `.device`: ComfyUI's ModelPatcher sets that attribute.)"""
        p = self.ip_adapter[0].to_k_ip.weight
        return p.device, p.dtype

    # --- Flux: tokens and K/V do not depend on the timestep ----------------------------------

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features [n, feature_dim] -> image tokens [n, tokens, token_dim]."""
        if self.spec.kind is DitKind.INSTANTX_SD35:
            raise TypeError("SD3.5 tokens depend on the timestep: use resample()")
        return self.image_proj(features.to(*self.placement()))

    def flux_kv(self, tokens: torch.Tensor, head_dim: int, v_norm: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(K, V) [n, tokens, hidden] of every block. InstantX: K RMS-normalised per head
        (no gain, eps 1e-5); V too with `v_norm` (the Shakker pack's variant)."""
        tokens = tokens.to(*self.placement())
        out = []
        for block in self.ip_adapter:
            k, v = block.to_k_ip(tokens), block.to_v_ip(tokens)
            if self.spec.kind is DitKind.INSTANTX_FLUX:
                k = head_rms(k, head_dim, None, INSTANTX_K_EPS)
                if v_norm:
                    v = head_rms(v, head_dim, None, INSTANTX_K_EPS)
            out.append((k, v))
        return out

    # --- SD3.5: per step --------------------------------------------------------------------

    def sd35_block_kv(self, j: int, tokens: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block j's (K_ip normalised by norm_ip_k, V_ip), [n, tokens, hidden]."""
        block = self.ip_adapter[j]
        n = block.norm_ip(tokens, temb)
        k = head_rms(block.to_k_ip(n), self.spec.head_dim, block.norm_ip_k.weight, SD35_EPS)
        return k, block.to_v_ip(n)


class SiglipPoolingHead(nn.Module):
    """SigLIP's multihead attention pooling ("MAP") head: a learned probe attends to the
    post-layernorm hidden states; + LayerNorm/MLP residual. Output = `pooler_output`."""

    def __init__(self, hidden: int, heads: int, mlp: int, eps: float = 1e-6):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, hidden))
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(hidden, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(hidden, mlp)
        self.mlp.fc2 = nn.Linear(mlp, hidden)

    def forward(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        x = last_hidden_state.to(self.probe.device, self.probe.dtype)
        probe = self.probe.expand(x.shape[0], -1, -1)
        h = self.attention(probe, x, x, need_weights=False)[0]
        h = h + self.mlp.fc2(F.gelu(self.mlp.fc1(self.layernorm(h)), approximate="tanh"))
        return h[:, 0]

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], prefix: str, heads: int, eps: float = 1e-6) -> "SiglipPoolingHead":
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hidden = int(sub["probe"].shape[-1])
        mlp = int(sub["mlp.fc1.weight"].shape[0])
        with torch.device("meta"):
            head = cls(hidden, heads, mlp, eps)
        head.load_state_dict({k: v.float() for k, v in sub.items()}, strict=True, assign=True)
        return head.eval().requires_grad_(False)
