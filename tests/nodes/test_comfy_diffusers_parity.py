"""ComfyUI's UNet with our attn2 patch against diffusers' IP-Adapter on the same weights.

The small SD1.5-layout ComfyUI UNet is copied into a diffusers `UNet2DConditionModel`
through ComfyUI's own key map; the adapter (published key format) goes into diffusers
through `_load_ip_adapter_weights` and into ComfyUI through the pack's apply path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
import comfy.utils
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from ipadapter_kit.ip_adapter_core.spec import ProjectionKind
from ipadapter_kit.nodes import host, patch
from ipadapter_kit.nodes.apply_core import ApplySettings, apply_embeds
from ipadapter_kit.nodes.encoding import ImageEmbeds

TOL = 1e-4


@pytest.fixture(scope="module")
def pair():
    model = tiny.tiny_model("sd15", seed=4)
    cfg = model.model.model_config.unet_config
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128, 128), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    comfy_sd = model.model.diffusion_model.state_dict()
    mapping = comfy.utils.unet_to_diffusers(cfg)
    diff_sd = {d: comfy_sd[c] for d, c in mapping.items() if c in comfy_sd}
    missing, unexpected = unet.load_state_dict(diff_sd, strict=False)
    assert not unexpected and not missing, (missing[:5], unexpected[:5])
    return model, unet


def _features(spec, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (1, spec.feature_dim) if spec.encoder_output.value == "image_embeds" else (1, 257, spec.feature_dim)
    return torch.randn(shape, generator=g)


def _comfy(model, x, t, ctx, layout):
    opts = dict(model.model_options.get("transformer_options", {}))
    opts["cond_or_uncond"] = layout
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=t, context=ctx, transformer_options=opts)


def _diffusers(unet, x, t, ctx, embeds=None, scale=1.0):
    kwargs = {}
    if embeds is not None:
        for proc in unet.attn_processors.values():
            if isinstance(proc, IPAdapterAttnProcessor2_0):
                proc.scale = [scale]
        kwargs["added_cond_kwargs"] = {"image_embeds": [embeds]}
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ctx, **kwargs).sample


def test_the_two_unets_agree_without_adapter(pair):
    model, unet = pair
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 768, generator=g) * 0.2, torch.tensor([500.0, 500.0])
    assert (_comfy(model, x, t, ctx, [0, 1]) - _diffusers(unet, x, t, ctx)).abs().max() < TOL


@pytest.mark.parametrize("kind", [ProjectionKind.LINEAR, ProjectionKind.RESAMPLER])
def test_full_unet_forward_matches_diffusers(pair, kind):
    model, unet = pair
    spec = tiny.tiny_spec(model, kind)
    if spec.resampler is not None:  # diffusers builds it as published: 4 layers, heads of 64
        spec = dataclasses.replace(spec, resampler=dataclasses.replace(spec.resampler, depth=4, heads=1, dim_head=64))
    state = tiny.adapter_state(spec, seed=7)
    handle = tiny.tiny_adapter(spec, seed=7)
    d_unet = UNet2DConditionModel.from_config(unet.config).eval()
    d_unet.load_state_dict(unet.state_dict())
    d_unet._load_ip_adapter_weights(
        [{"image_proj": {k[11:]: v for k, v in state.items() if k.startswith("image_proj.")},
          "ip_adapter": {k[11:]: v for k, v in state.items() if k.startswith("ip_adapter.")}}],
        low_cpu_mem_usage=False,
    )
    pos, neg = _features(spec, 1), _features(spec, 2)
    patched = apply_embeds(model, handle, ImageEmbeds(spec.encoder_output, pos), ImageEmbeds(spec.encoder_output, neg),
                           ApplySettings(weight=0.7))
    g = torch.Generator().manual_seed(3)
    x, ctx, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 768, generator=g) * 0.2, torch.tensor([700.0, 700.0])
    # ComfyUI batches [uncond, cond] here; diffusers gets the same rows with matching image embeds
    ours = _comfy(patched, x, t, ctx, [1, 0])
    theirs = _diffusers(d_unet, x, t, ctx, torch.cat([neg, pos])[:, None], scale=0.7)
    assert (ours - theirs).abs().max() < TOL
    plain = _comfy(model, x, t, ctx, [1, 0])
    assert (ours - plain).abs().max() > 100 * TOL  # the adapter really acts


def test_one_layer_matches_the_diffusers_processor(pair):
    model, unet = pair
    spec = tiny.tiny_spec(model, ProjectionKind.LINEAR)
    handle = tiny.tiny_adapter(spec, seed=5)
    pos = _features(spec, 1)
    patched = apply_embeds(model, handle, ImageEmbeds(spec.encoder_output, pos), ImageEmbeds(spec.encoder_output, torch.zeros_like(pos)),
                           ApplySettings(weight=1.3))
    layer = host.cross_attention_layers(model)[4]  # input 7: 128 wide
    attn2 = model.model.diffusion_model.get_submodule(layer.module_path + ".attn2")
    p = patched.model_options["transformer_options"]["patches_replace"]["attn2"][layer.key]
    assert isinstance(p, patch.Attn2Patch)
    g = torch.Generator().manual_seed(9)
    x, ctx = torch.randn(1, 16, layer.width, generator=g), torch.randn(1, 77, 768, generator=g) * 0.2
    extra = {"n_heads": layer.heads, "dim_head": layer.width // layer.heads, "cond_or_uncond": [0], "original_shape": [1, 4, 16, 16]}
    with torch.no_grad():
        ours = attn2.to_out(p(attn2.to_q(x), attn2.to_k(ctx), attn2.to_v(ctx), extra))
        tokens = handle.adapter.model.project(pos)
    d_attn = unet.get_submodule("down_blocks.2.attentions.0.transformer_blocks.0.attn2")
    proc = IPAdapterAttnProcessor2_0(layer.width, 768, num_tokens=(4,), scale=1.3)
    kv = handle.adapter.model.ip_layers[layer.index]
    with torch.no_grad():
        proc.to_k_ip[0].weight.copy_(kv.to_k_ip.weight)
        proc.to_v_ip[0].weight.copy_(kv.to_v_ip.weight)
        theirs = proc(d_attn, x, encoder_hidden_states=(ctx, [tokens[:, None]]))
    assert (ours - theirs).abs().max() < TOL
