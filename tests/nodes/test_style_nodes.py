"""Style & composition and the precise nodes on small SD1.5/SDXL UNets: which layers get
which weight, which image, and which batch half (cond/uncond)."""

from __future__ import annotations

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
from feature_helpers import COND, UNCOND, call_patch, entries_by_layer, image, image_kv, sdpa
from ipadapter_kit.ip_adapter_core.weights import Route
from ipadapter_kit.nodes.apply import Apply
from ipadapter_kit.nodes.style import PreciseComposition, PreciseStyleTransfer, StyleComposition

STYLE = {"sd15": set(range(0, 4)) | set(range(9, 16)), "sdxl": {6}}
COMPOSITION = {"sd15": {4: 0.25, 5: 1.0}, "sdxl": {3: 1.0}}


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def setup(request):
    arch = request.param
    model = tiny.tiny_model(arch)
    return arch, model, tiny.tiny_adapter(tiny.tiny_spec(model)), tiny.tiny_clip_vision()


COMMON = dict(start_at=0.0, end_at=1.0, embeds_scaling="V only")


def _style_comp(setup, expand=False, ws=0.8, wc=0.6):
    arch, model, handle, clip = setup
    style_img, comp_img = image(1), image(2)
    patched = StyleComposition.run(model, handle, style_img, comp_img, ws, wc, expand, "average", clip_vision=clip, **COMMON)[0]
    return patched, image_kv(handle, clip, style_img), image_kv(handle, clip, comp_img)


def test_style_and_composition_layers_images_and_weights(setup):
    arch, model, handle, clip = setup
    patched, style_kv, comp_kv = _style_comp(setup)
    seen_comp = seen_style = 0
    for layer, entries in entries_by_layer(patched):
        t = layer.transformer_index
        if t in COMPOSITION[arch]:
            (e,) = entries
            assert e.route is Route.COMPOSITION and e.weight == pytest.approx(0.6 * COMPOSITION[arch][t])
            src = e.prompt.source(layer.index, e.route, COND)
            assert torch.allclose(src[0], comp_kv[layer.index][0], atol=1e-5)  # the composition image
            assert torch.allclose(e.prompt.source(layer.index, e.route, UNCOND)[0], e.prompt.uncond[layer.index][0])
            seen_comp += 1
        elif t in STYLE[arch]:
            (e,) = entries
            assert e.route is Route.NORMAL and e.weight == pytest.approx(0.8)
            assert torch.allclose(e.prompt.source(layer.index, e.route, COND)[0], style_kv[layer.index][0], atol=1e-5)
            seen_style += 1
        else:
            assert entries == ()  # untouched layers are not patched at all
    assert seen_comp and seen_style


def test_composition_layer_output_uses_the_composition_image(setup):
    arch, model, handle, clip = setup
    patched, _, comp_kv = _style_comp(setup)
    layer, entries = next((lay, es) for lay, es in entries_by_layer(patched) if lay.transformer_index == max(COMPOSITION[arch]))
    from feature_helpers import attn2

    out, q, k, v, _ = call_patch(attn2(patched)[layer.key], layer, batch=1)
    kc, vc = comp_kv[layer.index]
    expect = sdpa(q, k, v, layer.heads) + 0.6 * sdpa(q, kc, vc, layer.heads)
    torch.testing.assert_close(out, expect, atol=1e-4, rtol=1e-4)


def test_expand_style_sends_the_style_image_everywhere_else(setup):
    arch, *_ = setup
    patched, _, _ = _style_comp(setup, expand=True)
    for layer, entries in entries_by_layer(patched):
        (e,) = entries
        if layer.transformer_index in COMPOSITION[arch]:
            assert e.route is Route.COMPOSITION and e.weight == pytest.approx(0.6)
        else:
            assert e.route is Route.NORMAL and e.weight == pytest.approx(0.8)


def test_precise_style_transfer_negates_the_composition_layers(setup):
    arch, model, handle, clip = setup
    patched = PreciseStyleTransfer.run(model, handle, image(3), 1.0, "concat", clip_vision=clip, style_boost=2.0, **COMMON)[0]
    for layer, entries in entries_by_layer(patched):
        t = layer.transformer_index
        if t in COMPOSITION[arch]:
            (e,) = entries
            assert e.route is Route.NEGATIVE and e.weight == pytest.approx(2.0 * COMPOSITION[arch][t])
            assert e.prompt.source(layer.index, e.route, COND) is None  # cond half: nothing
            assert e.prompt.source(layer.index, e.route, UNCOND)[0] is e.prompt.cond[layer.index][0]  # uncond half: the image
        elif t in STYLE[arch]:
            assert entries[0].route is Route.NORMAL and entries[0].weight == pytest.approx(1.0)
        else:
            assert entries == ()


def test_precise_composition_boost_zero_patches_only_composition_layers(setup):
    arch, model, handle, clip = setup
    patched = PreciseComposition.run(model, handle, image(3), 0.9, "concat", clip_vision=clip, composition_boost=0.0, **COMMON)[0]
    patched_t = {lay.transformer_index for lay, es in entries_by_layer(patched) if es}
    assert patched_t == set(COMPOSITION[arch])
    boosted = PreciseComposition.run(model, handle, image(3), 0.9, "concat", clip_vision=clip, composition_boost=0.5, **COMMON)[0]
    for layer, entries in entries_by_layer(boosted):
        (e,) = entries
        t = layer.transformer_index
        if t in COMPOSITION[arch]:
            assert e.route is Route.NORMAL and e.weight == pytest.approx(0.9 * COMPOSITION[arch][t])
        else:
            assert e.route is Route.NEGATIVE
            assert e.weight == pytest.approx(0.5 if t in STYLE[arch] else 0.05)


def test_layer_weights_compose_with_weight_types():
    """The "mad scientist" string on IPAK_Apply multiplies the weight type's layers and
    keeps its routes (the incumbent forced linear, #795)."""
    model = tiny.tiny_model("sdxl")
    handle, clip = tiny.tiny_adapter(tiny.tiny_spec(model)), tiny.tiny_clip_vision()
    patched = Apply.run(model, handle, image(4), 1.0, "composition precise", "concat", 0.0, 1.0, "V only",
                        clip_vision=clip, layer_weights="3:0.8, 6:0.35")[0]
    got = {lay.transformer_index: (es[0].weight, es[0].route) for lay, es in entries_by_layer(patched) if es}
    assert set(got) == {3, 6}
    assert got[3][0] == pytest.approx(0.8) and got[3][1] is Route.NORMAL
    assert got[6][0] == pytest.approx(0.35) and got[6][1] is Route.NEGATIVE
    styled = Apply.run(model, handle, image(4), 1.0, "style transfer", "concat", 0.0, 1.0, "V only",
                       clip_vision=clip, layer_weights="6:0.5, *:1")[0]
    assert {lay.transformer_index: es[0].weight for lay, es in entries_by_layer(styled) if es} == {6: pytest.approx(0.5)}


def test_style_composition_samples_on_sd15():
    import comfy.sample

    model = tiny.tiny_model("sd15")
    handle, clip = tiny.tiny_adapter(tiny.tiny_spec(model)), tiny.tiny_clip_vision()
    patched = StyleComposition.run(model, handle, image(1), image(2), 1.0, 1.0, False, "average", clip_vision=clip, **COMMON)[0]
    pos, neg = tiny.conditioning("sd15")
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    a = comfy.sample.sample(patched, noise, 2, 5.0, "euler", "normal", pos, neg, latent, seed=0)
    b = comfy.sample.sample(model, noise, 2, 5.0, "euler", "normal", pos, neg, latent, seed=0)
    assert torch.isfinite(a).all() and not torch.equal(a, b)


@pytest.mark.slow
def test_style_composition_graph_runs_in_the_executor():
    """The example graph: prepped style/composition images, a noise negative, SD1.5."""
    import nodes as comfy_nodes
    from host import run_prompt
    from test_executor import LatentStats, TinyAdapter, TinyClipVision, TinyConditioning, TinyModel

    added = {"T_TinyModel": TinyModel, "T_TinyAdapter": TinyAdapter, "T_TinyClipVision": TinyClipVision,
             "T_TinyConditioning": TinyConditioning, "T_LatentStats": LatentStats}
    comfy_nodes.NODE_CLASS_MAPPINGS.update(added)
    try:
        g = {
            "1": {"class_type": "T_TinyModel", "inputs": {"arch": "sd15"}},
            "2": {"class_type": "T_TinyAdapter", "inputs": {"arch": "sd15", "kind": "resampler"}},
            "3": {"class_type": "T_TinyClipVision", "inputs": {}},
            "4": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 0x3366CC}},
            "14": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 96, "batch_size": 1, "color": 0xCC3322}},
            "10": {"class_type": "IPAK_PrepImage", "inputs": {"image": ["4", 0], "interpolation": "LANCZOS",
                                                              "crop_position": "center", "sharpening": 0.1, "size": "auto",
                                                              "clip_vision": ["3", 0]}},
            "11": {"class_type": "IPAK_PrepImage", "inputs": {"image": ["14", 0], "interpolation": "LANCZOS",
                                                              "crop_position": "top", "sharpening": 0.0, "size": "auto",
                                                              "clip_vision": ["3", 0]}},
            "12": {"class_type": "IPAK_Noise", "inputs": {"type": "fade", "strength": 0.5, "blur": 3, "seed": 1,
                                                          "image_optional": ["10", 0]}},
            "5": {"class_type": "IPAK_StyleComposition", "inputs": {
                "model": ["1", 0], "ipadapter": ["2", 0], "image_style": ["10", 0], "image_composition": ["11", 0],
                "weight_style": 1.0, "weight_composition": 0.8, "expand_style": False, "combine_embeds": "average",
                "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", "image_negative": ["12", 0],
                "clip_vision": ["3", 0]}},
            "6": {"class_type": "T_TinyConditioning", "inputs": {"arch": "sd15"}},
            "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "8": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["6", 0], "negative": ["6", 1],
                                                       "latent_image": ["7", 0], "seed": 3, "steps": 2, "cfg": 5.0,
                                                       "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "9": {"class_type": "T_LatentStats", "inputs": {"samples": ["8", 0]}},
        }
        assert run_prompt(g)["outputs"]["9"]["stats"][0]["finite"]
    finally:
        for key in added:
            comfy_nodes.NODE_CLASS_MAPPINGS.pop(key, None)
