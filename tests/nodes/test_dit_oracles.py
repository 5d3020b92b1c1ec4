"""Flux and SD3.5 adapters through ComfyUI's own Flux / MMDiT classes (tiny widths, synthetic
weights in the published key layouts) against the reference implementations, fp32:

  XLabs v1/v2      diffusers FluxIPAdapterAttnProcessor, loaded by diffusers' FluxIPAdapterMixin
  InstantX Flux    the official attention_processor.py semantics, re-implemented below as the oracle
  InstantX SD3.5   diffusers SD3IPAdapterJointAttnProcessor2_0 + IPAdapterTimeImageProjection (SD3IPAdapterMixin)

Batches mix positive and negative chunks in either order (cond_or_uncond), 2 rows per chunk.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tiny_dit as td  # noqa: I001  (sets up the host first)
from ipadapter_kit.ip_adapter_core.dit.synthetic import synthetic_state
from ipadapter_kit.nodes import dit

TOL = 1e-4


@pytest.fixture(scope="module")
def flux():
    return td.flux_pair()


@pytest.fixture(scope="module")
def sd3():
    return td.sd3_pair()


def _rows(layout, cond, uncond, per_chunk=2):
    return torch.cat([cond if kind == 0 else uncond for kind in layout for _ in range(per_chunk)])


@pytest.mark.parametrize("tokens", [16, 4], ids=["v2-16-tokens", "v1-4-tokens"])
def test_xlabs_equals_diffusers(flux, tokens, tmp_path):
    from diffusers.loaders.ip_adapter import FluxIPAdapterMixin
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    comfy_model, diff = flux
    path = td.write(td.xlabs_spec(tokens), tmp_path, "ip_adapter.safetensors", seed=tokens)  # XLabs key names
    td.load_into_diffusers(FluxIPAdapterMixin, diff, str(tmp_path), "ip_adapter.safetensors")
    weight = 0.8
    for proc in diff.attn_processors.values():
        if isinstance(proc, FluxIPAdapterAttnProcessor):
            proc.scale = [weight]
    g = torch.Generator().manual_seed(9)
    cond, uncond = torch.randn(1, td.FEAT, generator=g), torch.randn(1, td.FEAT, generator=g)
    patched = dit.apply_dit(comfy_model, td.handle(path), cond, uncond, dit.DitSettings(weight=weight))
    for layout in ([1, 0], [0]):
        inp = td.flux_inputs(2 * len(layout))
        ours = td.comfy_flux(patched, inp, td.transformer_options(patched, layout, 0.75, 2))
        ref = td.diffusers_flux(diff, inp, ip_adapter_image_embeds=[_rows(layout, cond, uncond)[:, None]])
        plain = td.comfy_flux(comfy_model, inp, td.transformer_options(comfy_model, layout, 0.75, 2))
        assert (ours - ref).abs().max() < TOL
        assert (ours - plain).abs().max() > 0.1  # the image prompt has an effect


class InstantXOracle:
    """InstantX FLUX.1-dev-IP-Adapter's IPAFluxAttnProcessor2_0 (official attention_processor.py),
    re-implemented for diffusers' FluxAttention: the IP term uses the block's normalised,
    pre-RoPE query of the hidden states it gets (image tokens in double blocks, text + image in
    single blocks), K RMS-normalised (eps 1e-5, no gain), and is added before to_out."""

    def __init__(self, wk, wv, scale, v_norm=False):
        self.wk, self.wv, self.scale, self.v_norm = wk, wv, scale, v_norm

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, image_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        b = (encoder_hidden_states if encoder_hidden_states is not None else hidden_states).shape[0]

        def heads(t):
            return t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        def rms(t):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        ip_k, ip_v = rms(heads(F.linear(image_emb, self.wk))), heads(F.linear(image_emb, self.wv))
        if self.v_norm:
            ip_v = rms(ip_v)
        ip = F.scaled_dot_product_attention(q, ip_k, ip_v).transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])
        if encoder_hidden_states is not None:
            eq, ek, ev = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            q, k, v = torch.cat([attn.norm_added_q(eq), q], 2), torch.cat([attn.norm_added_k(ek), k], 2), torch.cat([ev, v], 2)
        if image_rotary_emb is not None:
            q, k = apply_rotary_emb(q, image_rotary_emb), apply_rotary_emb(k, image_rotary_emb)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])
        if encoder_hidden_states is not None:
            n = encoder_hidden_states.shape[1]
            ctx, h = h[:, :n], h[:, n:]
            return attn.to_out[1](attn.to_out[0](h + self.scale * ip)), attn.to_add_out(ctx)
        return h + self.scale * ip


@pytest.mark.parametrize("v_norm", [False, True], ids=["official-K-norm", "shakker-V-norm"])
def test_instantx_flux_equals_official_processor(flux, v_norm, tmp_path):
    comfy_model, diff = flux
    spec = td.instantx_flux_spec()
    path = td.write(spec, tmp_path, "ip-adapter.bin", seed=5)  # pickled {"image_proj", "ip_adapter"}
    state = synthetic_state(spec, seed=5)
    g = torch.Generator().manual_seed(9)
    cond, uncond = torch.randn(1, td.FEAT, generator=g), torch.zeros(1, td.FEAT)
    weight = 0.7
    patched = dit.apply_dit(comfy_model, td.handle(path), cond, uncond, dit.DitSettings(weight=weight, v_norm=v_norm))

    def project(pooled):  # MLPProjModel
        h = F.linear(F.gelu(F.linear(pooled, state["image_proj.proj.0.weight"], state["image_proj.proj.0.bias"])),
                     state["image_proj.proj.2.weight"], state["image_proj.proj.2.bias"])
        return F.layer_norm(h.reshape(pooled.shape[0], spec.tokens, -1), (spec.token_dim,),
                            state["image_proj.norm.weight"], state["image_proj.norm.bias"])

    original = diff.attn_processors
    diff.set_attn_processor({  # processor j: double blocks 0..1, then single blocks (diffusers' order)
        name: InstantXOracle(state[f"ip_adapter.{j}.to_k_ip.weight"], state[f"ip_adapter.{j}.to_v_ip.weight"], weight, v_norm)
        for j, name in enumerate(original)
    })
    try:
        for layout in ([0, 1], [1]):
            inp = td.flux_inputs(2 * len(layout))
            ours = td.comfy_flux(patched, inp, td.transformer_options(patched, layout, 0.75, 2))
            with torch.no_grad():
                ref = td.diffusers_flux(diff, inp, image_emb=project(_rows(layout, cond, uncond)))
            plain = td.comfy_flux(comfy_model, inp, td.transformer_options(comfy_model, layout, 0.75, 2))
            assert (ours - ref).abs().max() < TOL
            assert (ours - plain).abs().max() > 0.1
    finally:
        diff.set_attn_processor(original)


def test_instantx_sd35_equals_diffusers(sd3, tmp_path):
    from diffusers.loaders.ip_adapter import SD3IPAdapterMixin
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    comfy_model, diff = sd3
    path = td.write(td.sd35_spec(), tmp_path, "ip-adapter.bin", seed=3)  # InstantX's original names, nested
    td.load_into_diffusers(SD3IPAdapterMixin, diff, str(tmp_path), "ip-adapter.bin", image_encoder_folder=None)
    weight = 0.6
    for proc in diff.attn_processors.values():
        if isinstance(proc, SD3IPAdapterJointAttnProcessor2_0):
            proc.scale = weight
    g = torch.Generator().manual_seed(9)
    cond, uncond = torch.randn(1, 9, td.FEAT, generator=g), torch.zeros(1, 9, td.FEAT)
    patched = dit.apply_dit(comfy_model, td.handle(path), cond, uncond, dit.DitSettings(weight=weight))
    for layout, t in (([0, 1], 750.0), ([1, 0], 250.0), ([0], 500.0)):
        inp = td.sd3_inputs(2 * len(layout), t=t)
        ours = td.comfy_sd3(patched, inp, td.transformer_options(patched, layout, t / 1000, 2))
        ref = td.diffusers_sd3(diff, inp, ip_adapter_image_embeds=_rows(layout, cond, uncond))
        plain = td.comfy_sd3(comfy_model, inp, td.transformer_options(comfy_model, layout, t / 1000, 2))
        assert (ours - ref).abs().max() < TOL
        assert (ours - plain).abs().max() > 0.1
