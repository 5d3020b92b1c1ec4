"""DiT adapter modules against diffusers / transformers (fp32, tiny widths, published key
layouts): XLabs projection, SD3.5 TimeResampler and per-block AdaLN K/V, SigLIP's pooling
head, the timestep sinusoid; `inspect` on DiT files. Host-free."""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F

from ip_adapter_core.dit import attention as dit_math
from ip_adapter_core.dit import layouts
from ip_adapter_core.dit.layouts import to_canonical
from ip_adapter_core.dit.projection import DitAdapterModel, SiglipPoolingHead
from ip_adapter_core.dit.spec import TimeResamplerSpec
from ip_adapter_core.dit.synthetic import synthetic_state

TOL = 1e-5


def _model(spec, seed=0):
    proj, kv, _ = to_canonical(synthetic_state(spec, seed))
    return DitAdapterModel.from_state(proj, kv, spec), synthetic_state(spec, seed)


def _sd35_spec():
    res = TimeResamplerSpec(dim=128, depth=4, heads=2, dim_head=64, queries=8, in_dim=32, out_dim=192, ff_mult=4, timestep_dim=320)
    return layouts.sd35_spec(res, 192, 3, 64)


def test_xlabs_projection_equals_diffusers_image_projection():
    from diffusers.models.embeddings import ImageProjection

    for tokens in (4, 16):
        spec = layouts.xlabs_spec(tokens, 32, 64, 48, 2)
        model, state = _model(spec, tokens)
        ref = ImageProjection(image_embed_dim=32, cross_attention_dim=64, num_image_text_embeds=tokens)
        ref.load_state_dict({k.replace("ip_adapter_proj_model.proj", "image_embeds").replace("ip_adapter_proj_model.", ""): v
                             for k, v in state.items() if k.startswith("ip_adapter_proj_model.")})
        e = torch.randn(3, 32)
        with torch.no_grad():
            assert (model.project(e) - ref(e)).abs().max() < TOL


def test_instantx_flux_projection_and_k_norm():
    spec = layouts.instantx_flux_spec(8, 32, 40, 64, 48, 5)
    model, state = _model(spec, 1)
    p = torch.randn(2, 32)
    with torch.no_grad():
        tokens = model.project(p)
        h = F.linear(F.gelu(F.linear(p, state["image_proj.proj.0.weight"], state["image_proj.proj.0.bias"])),
                     state["image_proj.proj.2.weight"], state["image_proj.proj.2.bias"])
        ref = F.layer_norm(h.reshape(2, 8, 64), (64,), state["image_proj.norm.weight"], state["image_proj.norm.bias"])
        assert (tokens - ref).abs().max() < TOL
        k, v = model.flux_kv(tokens, head_dim=24)[3]
        kh = F.linear(tokens, state["ip_adapter.3.to_k_ip.weight"]).view(2, 8, 2, 24)
        kh = kh * torch.rsqrt(kh.pow(2).mean(-1, keepdim=True) + 1e-5)  # RMSNorm(eps 1e-5), no gain
        assert (k - kh.reshape(2, 8, 48)).abs().max() < TOL
        assert (v - F.linear(tokens, state["ip_adapter.3.to_v_ip.weight"])).abs().max() < TOL
        _, v_norm = model.flux_kv(tokens, head_dim=24, v_norm=True)[3]
        assert (v_norm - v).abs().max() > 0.1


def _diffusers_resampler(state, spec):
    from diffusers.loaders.transformer_sd3 import SD3Transformer2DLoadersMixin

    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    holder = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    return SD3Transformer2DLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(holder, proj, low_cpu_mem_usage=False)


def test_time_resampler_equals_diffusers_ip_adapter_time_image_projection():
    spec = _sd35_spec()
    model, state = _model(spec, 2)
    ref = _diffusers_resampler(state, spec).eval()
    x = torch.randn(2, 9, 32)
    t = torch.tensor([750.0, 120.5])
    with torch.no_grad():
        tokens, temb = model.image_proj(x, t)
        ref_tokens, ref_temb = ref(x, t)
        assert (temb - ref_temb).abs().max() < TOL
        assert (tokens - ref_tokens).abs().max() < TOL
        # the cached split gives the same: proj_in once, the rest per timestep
        x_in = model.image_proj.project_in(x)
        assert torch.equal(model.image_proj.resample(x_in, model.image_proj.embed_time(t)), tokens)


def test_sd35_block_kv_equals_diffusers_processor():
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    spec = _sd35_spec()
    model, state = _model(spec, 3)
    j = 1
    proc = SD3IPAdapterJointAttnProcessor2_0(hidden_size=192, ip_hidden_states_dim=192, head_dim=64, timesteps_emb_dim=128)
    proc.load_state_dict({k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"ip_adapter.{j}.")})
    tokens, temb = torch.randn(2, 8, 192), torch.randn(2, 128)
    with torch.no_grad():
        k, v = model.sd35_block_kv(j, tokens, temb)
        n = proc.norm_ip(tokens, temb=temb)
        ref_k = proc.norm_ip_k(proc.to_k_ip(n).view(2, -1, 3, 64)).reshape(2, 8, 192)
        assert (k - ref_k).abs().max() < TOL
        assert (v - proc.to_v_ip(n)).abs().max() < TOL


def test_sd35_ip_attention_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 64, generator=g) for _ in range(3))
    k_ip, v_ip = torch.randn(1, 3, 4, 64, generator=g), torch.randn(1, 3, 4, 64, generator=g)
    wq, wk = 1 + 0.1 * torch.randn(64, generator=g), 1 + 0.1 * torch.randn(64, generator=g)
    out = dit_math.sd35_ip_attention(q, k, v, k_ip, v_ip, wq, wk)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    keys = torch.cat([rms(k, wk), k_ip.expand(2, -1, -1, -1)], 2)
    vals = torch.cat([v, v_ip.expand(2, -1, -1, -1)], 2)
    attn = torch.softmax(rms(q, wq) @ keys.transpose(-1, -2) / 8.0, -1) @ vals
    assert (out - attn.transpose(1, 2).reshape(2, 10, 192)).abs().max() < TOL


def test_sinusoid_equals_diffusers_timesteps():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.5, 750.0, 999.0])
    ref = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert (dit_math.sinusoid(t, 320) - ref).abs().max() < TOL


def test_siglip_pooling_head_equals_transformers():
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    cfg = SiglipVisionConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4)
    torch.manual_seed(0)
    ref = SiglipMultiheadAttentionPoolingHead(cfg).eval()
    state = {f"vision_model.head.{k}": v for k, v in ref.state_dict().items()}
    head = SiglipPoolingHead.from_state(state, "vision_model.head.", heads=4, eps=cfg.layer_norm_eps)
    x = torch.randn(3, 17, 48)
    with torch.no_grad():
        assert (head(x) - ref(x)).abs().max() < TOL


def test_inspect_describes_dit_files_and_keeps_unet_errors(tmp_path, capsys):
    from ip_adapter_core.dit.synthetic import write_dit_adapter
    from ip_adapter_core.errors import NotAnAdapterError, UnreadableCheckpointError
    from ip_adapter_core.inspect import inspect_file, main

    path = write_dit_adapter(tmp_path / "ip_adapter.safetensors", layouts.xlabs_spec(16, 32, 64, 48, 2))
    sd35 = write_dit_adapter(tmp_path / "ip-adapter.bin", _sd35_spec())
    assert main([path, sd35, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["base"], r["kind"], r["tokens"], r["image_encoder"], r["encoder_output"]) for r in rows] == [
        ("flux", "xlabs-flux", 16, "clip-vit-l-14", "image_embeds"),
        ("sd3.5", "instantx-sd3.5", 8, "siglip-so400m-14-384", "penultimate_hidden_states"),
    ]
    assert rows[0]["lora"] is False and rows[1]["timestep_dependent"] is True
    assert main([path]) == 0 and "XLabs Flux IP-Adapter v2" in capsys.readouterr().out
    # a Flux *model* keeps the UNet path's message
    from safetensors.torch import save_file

    flux = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2), "img_in.weight": torch.zeros(2, 4)}, str(flux))
    with pytest.raises(NotAnAdapterError, match="looks like a Flux model"):
        inspect_file(flux)
    # a truncated DiT safetensors is reported, although only its header is read
    data = open(path, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(UnreadableCheckpointError, match="truncated"):
        inspect_file(cut)
