"""Helpers of the feature-node tests: reading installed patches, expected image K/V, and
the decoupled-attention formula to compare patch outputs with."""

from __future__ import annotations

import torch

import tiny  # noqa: F401  (sets up the host first)
from ipadapter_kit.ip_adapter_core.spec import (
    AdapterSpec,
    BaseModel,
    EncoderOutput,
    ImageEncoder,
    ProjectionKind,
    ResamplerSpec,
)
from ipadapter_kit.nodes import host
from ipadapter_kit.nodes.encoding import CropMode, encode_clip

COND, UNCOND = 0, 1


def attn2(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def entries_by_layer(model):
    """[(HostLayer, tuple of LayerEntry)] for every cross-attention layer of `model`."""
    patches = attn2(model)
    out = []
    for layer in host.cross_attention_layers(model):
        p = patches.get(layer.key)
        out.append((layer, tuple(p.entries) if p is not None else ()))
    return out


def image(seed: int, h: int = 48, w: int = 64, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, h, w, 3, generator=torch.Generator().manual_seed(seed))


def image_kv(handle, clip, img: torch.Tensor, per_image: bool = False):
    """Expected K/V of every layer for `img` (concatenated tokens, or one row per image)."""
    model = handle.adapter.model
    feats = encode_clip(clip, img, handle.spec.encoder_output, CropMode.CENTER)
    with torch.no_grad():
        tokens = model.project(feats)
        if not per_image:
            tokens = tokens.reshape(1, -1, tokens.shape[-1])
        return [(kv.k.float(), kv.v.float()) for kv in model.layer_kv(tokens)]


def sdpa(q, k, v, heads):
    b, c = q.shape[0], q.shape[-1]
    if k.shape[0] != b:
        k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
    return (w @ split(v)).transpose(1, 2).reshape(b, q.shape[1], c)


def call_patch(patch, layer, batch: int, layout=(0,), grid=(4, 4), seed: int = 0, **extra):
    """Run one attn2 patch like ComfyUI does; returns (out, q, k, v, extra_options)."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    q = torch.randn(batch, n, layer.width, generator=g)
    k = torch.randn(batch, 77, layer.width, generator=g)
    v = torch.randn(batch, 77, layer.width, generator=g)
    opts = {"n_heads": layer.heads, "dim_head": layer.width // layer.heads, "cond_or_uncond": list(layout),
            "sigmas": torch.tensor([1.0]), "original_shape": [batch, 4, grid[0], grid[1]],
            "activations_shape": [batch, layer.width, grid[0], grid[1]], **extra}
    with torch.no_grad():
        out = patch(q, k, v, opts)
    return out, q, k, v, opts


def kolors_model(seed: int = 0):
    """The tiny SDXL UNet with a Kolors-style `encoder_hid_proj` (how the host detects Kolors)."""
    model = tiny.tiny_model("sdxl", seed)
    model.model.diffusion_model.encoder_hid_proj = torch.nn.Linear(4096, 2048, bias=True)
    return model


def kolors_spec(model) -> AdapterSpec:
    layers = host.cross_attention_layers(model)
    res = ResamplerSpec(dim=64, depth=2, heads=2, dim_head=32, queries=16, in_dim=64, out_dim=2048)
    return AdapterSpec(BaseModel.KOLORS, ProjectionKind.RESAMPLER, 16, 2048, tuple(lay.width for lay in layers),
                       ImageEncoder.VIT_L_336, EncoderOutput.PENULTIMATE, 64, resampler=res)
