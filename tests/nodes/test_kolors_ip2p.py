"""Kolors (ViT-L/14-336, 2048-d Resampler, `encoder_hid_proj` on the UNet) and CosXL edit /
ip2p under DualCFGGuider, whose batches put the negative first: the negative chunk must get
the negative image tokens."""

from __future__ import annotations

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.samplers
import comfy.supported_models
from feature_helpers import entries_by_layer, image, kolors_model, kolors_spec
from ipadapter_kit.ip_adapter_core.errors import IncompatibleModelError
from ipadapter_kit.ip_adapter_core.weights import Route
from ipadapter_kit.nodes import host
from ipadapter_kit.nodes.apply import Apply
from ipadapter_kit.nodes.style import StyleComposition
from ipadapter_kit.nodes.tiled import ApplyTiled, PrepImage

COMMON = dict(start_at=0.0, end_at=1.0, embeds_scaling="V only")
APPLY = dict(weight_type="linear", combine_embeds="concat", **COMMON)


def _sample(model, guider):
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2).cpu()
    return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0)


@pytest.mark.slow
def test_kolors_apply_style_layers_prep_and_tiles():
    model = kolors_model()
    layers = host.cross_attention_layers(model)
    assert host.model_family(model, layers) == "kolors"
    handle, clip = tiny.tiny_adapter(kolors_spec(model)), tiny.tiny_clip_vision(image_size=336)
    patched = StyleComposition.run(model, handle, image(1), image(2), 1.0, 0.5, False, "average", clip_vision=clip, **COMMON)[0]
    got = {lay.transformer_index: (es[0].weight, es[0].route) for lay, es in entries_by_layer(patched) if es}
    assert got == {3: (0.5, Route.COMPOSITION), 6: (1.0, Route.NORMAL)}
    first = next(es for _, es in entries_by_layer(patched) if es)
    assert first[0].prompt.cond[0][0].shape[1] == 16  # 16 Resampler tokens from 577 ViT-L-336 tokens
    guider = comfy.samplers.CFGGuider(Apply.run(model, handle, image(3), 1.0, clip_vision=clip, **APPLY)[0])
    pos, neg = tiny.conditioning("sdxl")
    guider.set_conds(pos, neg)
    guider.set_cfg(4.0)
    assert torch.isfinite(_sample(model, guider)).all()
    assert PrepImage.run(image(4), "BICUBIC", "center", 0.0, size="auto", ipadapter=handle)[0].shape == (1, 336, 336, 3)
    _, tiles_out, masks = ApplyTiled.run(model, handle, image(5, h=64, w=128), 1.0, sharpening=0.0, clip_vision=clip, **APPLY)
    assert tiles_out.shape[1:3] == (336, 336) and masks.shape[-2:] == (336, 672)
    sdxl = tiny.tiny_adapter(tiny.tiny_spec(model))  # an SDXL adapter (same layer widths)
    with pytest.raises(IncompatibleModelError, match="Kolors"):
        Apply.run(model, sdxl, image(3), 1.0, clip_vision=tiny.tiny_clip_vision(), **APPLY)


@pytest.fixture(scope="module")
def ip2p_model():
    config = comfy.supported_models.SDXL_instructpix2pix(dict(tiny.SDXL_UNET, in_channels=8))
    model = comfy.model_base.SDXL_instructpix2pix(config, device="cpu")
    tiny._init_(model, 0)
    model.eval()
    mm = comfy.model_management
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    original = host.chunk_kinds

    def spy(extra, cond=0, uncond=1):
        kinds = original(extra, cond, uncond)
        calls.append((tuple(extra["cond_or_uncond"]), extra.get(host.CHUNK_ROLES), kinds))
        return kinds

    monkeypatch.setattr(host, "chunk_kinds", spy)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [(1.5, 5.0), (1.5, 1.0)])
def test_dual_cfg_negative_chunk_gets_the_negative_image(recorded, cfg, ip2p_model):
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    model = ip2p_model
    assert host.model_family(model, host.cross_attention_layers(model)) == "sdxl"
    handle = tiny.tiny_adapter(tiny.tiny_spec(model))
    patched = Apply.run(model, handle, image(1), 1.0, clip_vision=tiny.tiny_clip_vision(), **APPLY)[0]
    pos, neg = tiny.conditioning("sdxl", seed=1)
    middle, _ = tiny.conditioning("sdxl", seed=2)
    guider = Guider_DualCFG(patched)
    guider.set_conds(pos, middle, neg)
    guider.set_cfg(*cfg)
    assert torch.isfinite(_sample(model, guider)).all()
    assert recorded
    kind_of = {"positive": 0, "middle": 1, "negative": 1}
    for layout, roles, kinds in recorded:
        assert roles is not None and roles[1:] == ("middle", "positive")  # [negative, middle, positive]
        assert roles[0] == ("negative" if cfg[1] != 1.0 else None)
        assert kinds == tuple(kind_of[roles[i]] for i in layout)
    seen = {p for layout, _, _ in recorded for p in layout}
    assert seen == ({0, 1, 2} if cfg[1] != 1.0 else {1, 2})


def test_plain_cfg_keeps_positive_first(recorded):
    model = tiny.tiny_model("sd15")
    handle = tiny.tiny_adapter(tiny.tiny_spec(model))
    patched = Apply.run(model, handle, image(1), 1.0, clip_vision=tiny.tiny_clip_vision(), **APPLY)[0]
    guider = comfy.samplers.CFGGuider(patched)
    pos, neg = tiny.conditioning("sd15")
    guider.set_conds(pos, neg)
    guider.set_cfg(5.0)
    _sample(model, guider)
    assert recorded and all(roles == ("positive", "negative") for _, roles, _ in recorded)
    assert all(kinds == tuple(layout) for layout, _, kinds in recorded)


def test_roles_survive_context_window_copies():
    """Context windows hand calc_cond_batch new lists of copied conds: roles follow the uuids."""
    import uuid

    pos = [{"uuid": uuid.uuid4()}, {"uuid": uuid.uuid4()}]
    neg = [{"uuid": uuid.uuid4()}]
    mid = [{"uuid": uuid.uuid4()}]
    seen = {}

    class Exec:
        def __init__(self, obj=None, fn=None):
            self.class_obj, self.fn = obj, fn

        def __call__(self, *args):
            return self.fn(*args)

    guider = type("G", (), {"conds": {"negative": neg, "middle": mid, "positive": pos}})()

    def inner(model, conds, x, t, model_options):
        seen["roles"] = model_options["transformer_options"][host.CHUNK_ROLES]

    def predict(x, t, model_options, seed):
        copies = [[dict(c) for c in neg], None, [dict(c) for c in pos]]
        host._note_chunk_roles(Exec(fn=inner), None, copies, x, t, model_options)

    host._note_guider_roles(Exec(guider, predict), None, None, {"transformer_options": {}}, None)
    assert seen["roles"] == ("negative", None, "positive")
    extra = {"cond_or_uncond": [2, 0], host.CHUNK_ROLES: seen["roles"]}
    assert host.chunk_kinds(extra) == (0, 1)


def test_conds_without_uuids_fall_back_to_positions():
    guider = type("G", (), {"conds": {"positive": [{}], "negative": [{}]}})()
    seen = {}

    class Exec:
        class_obj = guider

        def __call__(self, x, t, model_options, seed):
            seen["options"] = model_options

    host._note_guider_roles(Exec(), None, None, {"transformer_options": {}}, None)
    assert seen["options"]["transformer_options"]["ipadapter_kit.roles_by_conds"] == {}
    assert host.chunk_kinds({"cond_or_uncond": [1, 0]}) == (1, 0)
