"""Small models built with ComfyUI's own classes, for fast in-process node tests.

The UNets keep SD1.5's / SDXL's layer layout (16 / 70 cross-attention layers, 768 / 2048-d
context) with narrow channels; adapters and CLIP vision encoders are shrunk to match.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

from host import import_comfy, import_pack

import_comfy()
PACK = import_pack()

import comfy.clip_vision  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402

from ipadapter_kit.ip_adapter_core.adapter import IPAdapterModel  # noqa: E402
from ipadapter_kit.ip_adapter_core.catalog import state_layout  # noqa: E402
from ipadapter_kit.ip_adapter_core.checkpoint import split_adapter_state  # noqa: E402
from ipadapter_kit.ip_adapter_core.spec import (  # noqa: E402
    AdapterSpec,
    BaseModel,
    EncoderOutput,
    ImageEncoder,
    ProjectionKind,
    ResamplerSpec,
)
from ipadapter_kit.nodes import host  # noqa: E402
from ipadapter_kit.nodes.adapter_store import IPAdapterHandle, LoadedAdapter  # noqa: E402

SD15_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False,
}
SDXL_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 16,
    "num_classes": "sequential", "adm_in_channels": 2816, "use_spatial_transformer": True, "legacy": False,
    "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False,
}


def _init_(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))


def tiny_model(arch: str = "sd15", seed: int = 0):
    """A ModelPatcher around a small UNet with SD1.5's or SDXL's cross-attention layout."""
    if arch == "sd15":
        config = comfy.supported_models.SD15(dict(SD15_UNET))
        model = comfy.model_base.BaseModel(config, device="cpu")
    else:
        config = comfy.supported_models.SDXL(dict(SDXL_UNET))
        model = comfy.model_base.SDXL(config, device="cpu")
    _init_(model, seed)
    model.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=comfy.model_management.unet_offload_device())


def tiny_spec(model_patcher, kind: ProjectionKind = ProjectionKind.LINEAR, clip_hidden: int = 64, clip_proj: int = 32) -> AdapterSpec:
    layers = host.cross_attention_layers(model_patcher)
    widths = tuple(layer.width for layer in layers)
    cross = layers[0].context_dim
    base = BaseModel.SD15 if cross == 768 else BaseModel.SDXL
    if kind is ProjectionKind.LINEAR:
        return AdapterSpec(base, kind, 4, cross, widths, ImageEncoder.VIT_H, EncoderOutput.IMAGE_EMBEDS, clip_proj)
    if kind is ProjectionKind.RESAMPLER:
        res = ResamplerSpec(dim=64, depth=2, heads=2, dim_head=32, queries=16, in_dim=clip_hidden, out_dim=cross)
        return AdapterSpec(base, kind, 16, cross, widths, ImageEncoder.VIT_H, EncoderOutput.PENULTIMATE, clip_hidden, resampler=res)
    raise ValueError(kind)


def adapter_state(spec: AdapterSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in state_layout(spec).items():
        if key.endswith("bias"):
            out[key] = torch.randn(shape, generator=g) * 0.02
        elif len(shape) == 1:
            out[key] = 1.0 + torch.randn(shape, generator=g) * 0.02
        else:
            out[key] = torch.randn(shape, generator=g) * (1.0 / shape[-1] ** 0.5)
    return out


def tiny_adapter(spec: AdapterSpec, seed: int = 0, name: str = "tiny-adapter.safetensors") -> IPAdapterHandle:
    weights = split_adapter_state(adapter_state(spec, seed), name)
    model = IPAdapterModel.from_weights(weights, spec, dtype=torch.float32).eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=host.compute_device(), offload_device=host.offload_device())
    return IPAdapterHandle(LoadedAdapter(path=name, spec=spec, patcher=patcher))


_TINY_CLIP = {
    "hidden_size": 64, "image_size": 224, "intermediate_size": 128, "num_attention_heads": 4,
    "num_hidden_layers": 3, "patch_size": 14, "projection_dim": 32, "hidden_act": "gelu",
    "layer_norm_eps": 1e-5, "num_channels": 3, "model_type": "clip_vision_model",
}


def tiny_clip_vision(seed: int = 0, **overrides):
    """comfy.clip_vision.ClipVisionModel with a tiny config (ComfyUI cannot detect one from keys)."""
    cfg = {**_TINY_CLIP, **overrides}
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(cfg, fh)
    try:
        cv = comfy.clip_vision.ClipVisionModel(path)
    finally:
        os.unlink(path)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in cv.get_sd().items():
        if v.ndim == 1:
            sd[k] = torch.ones_like(v) if "norm" in k and k.endswith("weight") else torch.zeros_like(v)
        else:
            sd[k] = (torch.randn(v.shape, generator=g) * 0.05).to(v.dtype)
    cv.load_sd(sd)
    return cv


def conditioning(arch: str, batch: int = 1, seed: int = 1):
    """Positive and negative CONDITIONING lists for a tiny model (random text tokens)."""
    g = torch.Generator().manual_seed(seed)
    ctx = 768 if arch == "sd15" else 2048

    def one():
        extra = {}
        if arch != "sd15":
            extra = {"pooled_output": torch.randn(batch, 1280, generator=g) * 0.1, "width": 64, "height": 64,
                     "crop_w": 0, "crop_h": 0, "target_width": 64, "target_height": 64}
        return [[torch.randn(batch, 77, ctx, generator=g) * 0.1, extra]]

    return one(), one()


def sample(model, arch: str = "sd15", steps: int = 2, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """The latent ComfyUI's sampler makes with a tiny model (euler, cfg 5, 8x8 latent)."""
    pos, neg = conditioning(arch)
    latent = torch.zeros(batch, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", pos, neg, latent, seed=seed, disable_pbar=True)
