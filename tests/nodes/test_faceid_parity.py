"""The FaceID node path, embeddings -> tokens -> per-layer K/V, against diffusers.

Published SD1.5 projection shapes (FaceID MLP; FaceID-Plus with its 4-layer, 12-head
perceiver over 257 x 1280 CLIP features; portrait 16 tokens), fp32, converted for diffusers
by diffusers' own `_convert_ip_adapter_image_proj_to_diffusers`. The K/V layers follow the
tiny UNet's widths. What IPAdapter Apply FaceID stores in its patch (cond and uncond K/V of
every layer) must equal diffusers' projection followed by to_k_ip / to_v_ip within 1e-5.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection

import tiny  # noqa: I001  (host first)
from ipadapter_kit.ip_adapter_core.spec import AdapterSpec, BaseModel, EncoderOutput, ImageEncoder, ProjectionKind, ResamplerSpec
from ipadapter_kit.nodes import faceid, host
from ipadapter_kit.nodes.encoding import ImageEmbeds

TOL = 1e-5
_HOST = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def model():
    return tiny.tiny_model("sd15")


def sd15_spec(model, kind: ProjectionKind) -> AdapterSpec:
    widths = tuple(layer.width for layer in host.cross_attention_layers(model))
    face = dict(encoder=ImageEncoder.INSIGHTFACE, encoder_output=EncoderOutput.FACE, feature_dim=512)
    if kind is ProjectionKind.FACEID_PLUS:
        res = ResamplerSpec(dim=768, depth=4, heads=12, dim_head=64, queries=0, in_dim=1280, out_dim=768)
        return AdapterSpec(BaseModel.SD15, kind, 4, 768, widths, ImageEncoder.INSIGHTFACE_VIT_H, EncoderOutput.FACE, 512,
                           clip_output=EncoderOutput.PENULTIMATE, clip_dim=1280, resampler=res)
    return AdapterSpec(BaseModel.SD15, kind, 16 if kind is ProjectionKind.PORTRAIT else 4, 768, widths, **face)


def oracle(handle):
    proj_sd = {k[len("image_proj."):]: v for k, v in tiny.adapter_state(handle.spec, seed=3).items() if k.startswith("image_proj.")}
    proj = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(_HOST, proj_sd, low_cpu_mem_usage=False).eval()
    layers = handle.adapter.model.ip_layers
    return proj, [(layer.to_k_ip.weight.detach(), layer.to_v_ip.weight.detach()) for layer in layers]


def stored_kv(patched):
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    prompt = next(iter(patches.values())).entries[0].prompt
    return prompt.cond, prompt.uncond


def run_apply(model, handle, pos, neg, **kw):
    args = dict(weight=1.0, weight_faceidv2=1.0, faceid_version="auto", weight_type="linear", combine_embeds="concat",
                start_at=0.0, end_at=1.0, embeds_scaling="V only", lora_strength=0.0)
    args.update(kw)
    return faceid.ApplyFaceID.run(model, handle, face_embeds=pos, neg_embeds=neg, **args)[0]


def compare(ours, tokens, kv_weights):
    assert len(ours) == len(kv_weights)
    worst = 0.0
    for (k, v), (wk, wv) in zip(ours, kv_weights):
        assert k.shape == (1, tokens.shape[1], wk.shape[0])
        worst = max(worst, (k - tokens @ wk.T).abs().max().item(), (v - tokens @ wv.T).abs().max().item())
    assert worst <= TOL, worst


def ids(n, seed=1):
    return F.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("kind", [ProjectionKind.FACEID_MLP, ProjectionKind.PORTRAIT], ids=["faceid", "portrait"])
def test_faceid_mlp_node_path_matches_diffusers(model, kind):
    handle = tiny.tiny_adapter(sd15_spec(model, kind), seed=3)
    proj, kv = oracle(handle)
    assert isinstance(proj, IPAdapterFaceIDImageProjection)
    face = ids(3)
    cond, uncond = stored_kv(run_apply(model, handle, ImageEmbeds(EncoderOutput.FACE, face), None))
    with torch.no_grad():
        want = proj(face).reshape(1, -1, 768)  # several faces: tokens side by side
        want_uncond = proj(torch.zeros(3, 512)).reshape(1, -1, 768)  # reference uncond: zero identity
    compare(cond, want, kv)
    compare(uncond, want_uncond, kv)


@pytest.mark.parametrize("v2, scale", [(False, 1.0), (True, 1.0), (True, 1.7)], ids=["v1", "v2", "v2-scale1.7"])
def test_faceid_plus_node_path_matches_diffusers(model, v2, scale):
    handle = tiny.tiny_adapter(sd15_spec(model, ProjectionKind.FACEID_PLUS), seed=3)
    proj, kv = oracle(handle)
    assert isinstance(proj, IPAdapterFaceIDPlusImageProjection)
    g = torch.Generator().manual_seed(5)
    face, clip = ids(2), torch.randn(2, 257, 1280, generator=g)
    neg_clip = torch.randn(1, 257, 1280, generator=g)  # stands for the zero-pixel CLIP features
    pos = ImageEmbeds(EncoderOutput.FACE, face, clip)
    neg = ImageEmbeds(EncoderOutput.FACE, torch.zeros(1, 512), neg_clip)
    version = "v2 (shortcut)" if v2 else "v1 (no shortcut)"
    cond, uncond = stored_kv(run_apply(model, handle, pos, neg, faceid_version=version, weight_faceidv2=scale))
    proj.shortcut, proj.shortcut_scale = v2, scale
    with torch.no_grad():
        proj.clip_embeds = clip[:, None]
        want = proj(face).reshape(1, -1, 768)
        proj.clip_embeds = neg_clip.expand(2, -1, -1)[:, None]
        want_uncond = proj(torch.zeros(2, 512)).reshape(1, -1, 768)
    compare(cond, want, kv)
    compare(uncond, want_uncond, kv)


def test_unnorm_portrait_node_path_takes_the_raw_embedding(model):
    """portrait-unnorm: the raw (unnormalised) embedding as a one-token sequence through its resampler."""
    from faceid_tiny import faceid_adapter
    from ipadapter_kit.ip_adapter_core.testing.faces import StubFaceAnalyzer, face_image

    sdxl = tiny.tiny_model("sdxl")
    handle = faceid_adapter(sdxl, ProjectionKind.PORTRAIT_UNNORM, seed=4)
    stub = StubFaceAnalyzer(embedding_norm=25.0)
    img = face_image(96, 96, [(10, 10, 80, 90)], seed=2)
    patched, _ = faceid.ApplyFaceID.run(sdxl, handle, 1.0, 1.0, "auto", "linear", "concat", 0.0, 1.0, "V only", 0.0,
                                        image=img, insightface=stub)
    cond, _ = stored_kv(patched)
    raw = torch.from_numpy(stub.detect(img[0])[0].embedding)[None]
    assert raw.norm().item() == pytest.approx(25.0, rel=1e-5)
    with torch.no_grad():
        tokens = handle.adapter.model.image_proj(raw[:, None, :])
    kv = [(layer.to_k_ip.weight.detach(), layer.to_v_ip.weight.detach()) for layer in handle.adapter.model.ip_layers]
    compare(cond, tokens, kv)
