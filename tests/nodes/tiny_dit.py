"""Tiny Flux / SD3 transformers built with ComfyUI's own classes, each paired with a diffusers
transformer holding the same weights (converted with ComfyUI's diffusers key maps), plus
tiny DiT adapters of the published key layouts and tiny CLIP / SigLIP vision encoders.

    comfy_flux, diff_flux = flux_pair()        # 2 double + 3 single blocks, width 64, 2 heads of 32
    comfy_sd3, diff_sd3 = sd3_pair()           # 3 joint blocks, width 192, 3 heads of 64, RMS qk-norm
"""

from __future__ import annotations

import json
import os
import tempfile
import types

import torch
from einops import rearrange

import tiny  # noqa: F401  (bootstraps ComfyUI and imports the pack)

import comfy.clip_vision  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_detection  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402

from ipadapter_kit.ip_adapter_core.dit import layouts  # noqa: E402
from ipadapter_kit.ip_adapter_core.dit.spec import TimeResamplerSpec  # noqa: E402
from ipadapter_kit.ip_adapter_core.dit.synthetic import write_dit_adapter  # noqa: E402
from ipadapter_kit.nodes import dit_store  # noqa: E402
from ipadapter_kit.nodes.adapter_store import IPAdapterHandle  # noqa: E402

FLUX_HIDDEN, FLUX_HEADS, FLUX_DOUBLE, FLUX_SINGLE, FLUX_CTX = 64, 2, 2, 3, 4096
SD3_DEPTH = 3  # ComfyUI's MMDiT: width 64 * depth, depth heads of 64
SD3_HIDDEN = 64 * SD3_DEPTH
FEAT = 32  # tiny encoder width (CLIP-L image_embeds / SigLIP hidden)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _patcher(model):
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=comfy.model_management.unet_offload_device()
    )


def flux_pair(seed: int = 0):
    """(ComfyUI Flux ModelPatcher, diffusers FluxTransformer2DModel) with the same weights."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    diff = FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=64, num_layers=FLUX_DOUBLE, num_single_layers=FLUX_SINGLE,
        attention_head_dim=FLUX_HIDDEN // FLUX_HEADS, num_attention_heads=FLUX_HEADS, joint_attention_dim=FLUX_CTX,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
    ).eval()
    _randomise(diff, seed + 1)
    state = comfy.model_detection.convert_diffusers_mmdit({k: v.clone() for k, v in diff.state_dict().items()}, "")
    config = comfy.supported_models.Flux(dict(
        image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=32, context_in_dim=FLUX_CTX,
        hidden_size=FLUX_HIDDEN, mlp_ratio=4.0, num_heads=FLUX_HEADS, depth=FLUX_DOUBLE, depth_single_blocks=FLUX_SINGLE,
        axes_dim=[8, 12, 12], theta=10000, qkv_bias=True, guidance_embed=True,
    ))
    model = comfy.model_base.Flux(config, device="cpu")
    model.diffusion_model.load_state_dict(state, strict=True)
    return _patcher(model), diff


def sd3_pair(seed: int = 0):
    """(ComfyUI SD3 ModelPatcher, diffusers SD3Transformer2DModel) with the same weights."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    diff = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=SD3_DEPTH, attention_head_dim=64,
        num_attention_heads=SD3_DEPTH, joint_attention_dim=64, caption_projection_dim=SD3_HIDDEN,
        pooled_projection_dim=32, out_channels=16, pos_embed_max_size=8, qk_norm="rms_norm",
    ).eval()
    _randomise(diff, seed + 1)
    state = comfy.model_detection.convert_diffusers_mmdit({k: v.clone() for k, v in diff.state_dict().items()}, "")
    config = comfy.supported_models.SD3(comfy.model_detection.detect_unet_config(state, ""))
    model = comfy.model_base.SD3(config, device="cpu")
    model.diffusion_model.load_state_dict(state, strict=True)
    return _patcher(model), diff


# --- adapters -------------------------------------------------------------------------------


def xlabs_spec(tokens: int = 16):
    return layouts.xlabs_spec(tokens, FEAT, FLUX_CTX, FLUX_HIDDEN, FLUX_DOUBLE)


def instantx_flux_spec(tokens: int = 8):
    return layouts.instantx_flux_spec(tokens, FEAT, 48, 64, FLUX_HIDDEN, FLUX_DOUBLE + FLUX_SINGLE)


def sd35_spec(queries: int = 8):
    res = TimeResamplerSpec(dim=128, depth=4, heads=2, dim_head=64, queries=queries, in_dim=FEAT, out_dim=SD3_HIDDEN,
                            ff_mult=4, timestep_dim=320)
    return layouts.sd35_spec(res, SD3_HIDDEN, SD3_DEPTH, 64)


def write(spec, folder, name: str, seed: int = 0, dtype=torch.float32) -> str:
    return write_dit_adapter(os.path.join(folder, name), spec, seed=seed, dtype=dtype)


def handle(path: str, clip_vision=None) -> IPAdapterHandle:
    return IPAdapterHandle(dit_store.load_dit_adapter(path), clip_vision=clip_vision)


# --- running the models ---------------------------------------------------------------------


def transformer_options(model_patcher, layout, sigma: float, batch_per_chunk: int = 1) -> dict:
    """What ComfyUI's sampler puts in transformer_options for one model call."""
    to = dict(model_patcher.model_options.get("transformer_options", {}))
    to["cond_or_uncond"] = list(layout)
    to["sigmas"] = torch.full((batch_per_chunk,), float(sigma))
    return to


def flux_inputs(batch: int, seed: int = 3, size: int = 8, txt: int = 7):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, size, size, generator=g), ctx=torch.randn(batch, txt, FLUX_CTX, generator=g) * 0.5,
        y=torch.randn(batch, 32, generator=g), t=torch.full((batch,), 0.75), guidance=torch.full((batch,), 3.5),
    )


def comfy_flux(model_patcher, inp: dict, to: dict) -> torch.Tensor:
    with torch.no_grad():
        return model_patcher.model.diffusion_model(
            inp["x"], inp["t"], inp["ctx"], y=inp["y"], guidance=inp["guidance"], transformer_options=to
        )


def diffusers_flux(diff, inp: dict, **joint_attention_kwargs) -> torch.Tensor:
    x = inp["x"]
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None]
    with torch.no_grad():
        out = diff(
            hidden_states=rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2),
            encoder_hidden_states=inp["ctx"], pooled_projections=inp["y"], timestep=inp["t"], guidance=inp["guidance"],
            img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(inp["ctx"].shape[1], 3),
            joint_attention_kwargs=joint_attention_kwargs or None, return_dict=False,
        )[0]
    return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)


def sd3_inputs(batch: int, seed: int = 4, t: float = 750.0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, 8, 8, generator=g), ctx=torch.randn(batch, 5, 64, generator=g),
        y=torch.randn(batch, 32, generator=g), t=torch.full((batch,), t),
    )


def comfy_sd3(model_patcher, inp: dict, to: dict) -> torch.Tensor:
    with torch.no_grad():
        return model_patcher.model.diffusion_model(inp["x"], inp["t"], context=inp["ctx"], y=inp["y"], transformer_options=to)


def diffusers_sd3(diff, inp: dict, **joint_attention_kwargs) -> torch.Tensor:
    with torch.no_grad():
        return diff(
            hidden_states=inp["x"], encoder_hidden_states=inp["ctx"], pooled_projections=inp["y"], timestep=inp["t"],
            joint_attention_kwargs=joint_attention_kwargs or None, return_dict=False,
        )[0]


def load_into_diffusers(mixin, diff, folder: str, weight_name: str, **kwargs) -> None:
    """diffusers' own IP-Adapter loader (FluxIPAdapterMixin / SD3IPAdapterMixin) on a bare transformer."""
    holder = types.SimpleNamespace(transformer=diff)
    mixin.load_ip_adapter(holder, folder, weight_name=weight_name, low_cpu_mem_usage=False, **kwargs)


# --- tiny vision encoders -------------------------------------------------------------------

_TINY_SIGLIP = {
    "num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": FEAT, "image_size": 56,
    "intermediate_size": 64, "model_type": "siglip_vision_model", "num_attention_heads": 4, "num_hidden_layers": 3,
    "patch_size": 14, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}


def tiny_clip_l(seed: int = 0):
    """A tiny CLIP vision model whose image_embeds are FEAT wide (stands in for CLIP-L/14)."""
    return tiny.tiny_clip_vision(seed, projection_dim=FEAT)


def siglip_state(seed: int = 0, with_head: bool = True) -> dict[str, torch.Tensor]:
    """HF-named state dict of a tiny SigLIP vision tower (+ its attention-pooling head)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(hidden_size=FEAT, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                             image_size=56, patch_size=14, vision_use_head=with_head)
    torch.manual_seed(seed)
    model = SiglipVisionModel(cfg).eval()
    _randomise(model, seed + 7)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # files (ComfyUI's and HF's) name the tower 'vision_model.*'; transformers 5 drops the prefix in memory
    return {(k if k.startswith("vision_model.") else "vision_model." + k): v for k, v in state.items()}


def tiny_siglip(state: dict[str, torch.Tensor]):
    """comfy.clip_vision.ClipVisionModel (SigLIP type) with a tiny config, loaded from `state`."""
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(_TINY_SIGLIP, fh)
    try:
        cv = comfy.clip_vision.ClipVisionModel(path)
    finally:
        os.unlink(path)
    missing, _ = cv.load_sd(dict(state))
    assert not missing, missing
    return cv
