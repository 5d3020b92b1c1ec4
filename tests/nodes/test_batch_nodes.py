"""Batch/unfold apply and per-frame weight schedules: frame i gets image i, weight i and
mask i, also inside AnimateDiff / ComfyUI context windows; schedules run in the executor."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
import comfy.utils
import nodes as comfy_nodes
from feature_helpers import attn2, call_patch, entries_by_layer, image, image_kv, sdpa
from host import run_prompt
from ipadapter_kit.nodes.apply import Apply, EncodeImage
from ipadapter_kit.nodes.batch import ApplyBatch, ApplyEmbedsBatch, CombineWeights, PromptScheduleFromStrategy, Weights, WeightsFromStrategy

COMMON = dict(weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only")


@pytest.fixture(scope="module")
def setup():
    model = tiny.tiny_model("sd15")
    return model, tiny.tiny_adapter(tiny.tiny_spec(model)), tiny.tiny_clip_vision()


def _frames():
    return torch.cat([image(10), image(11), image(12)])


def _layer_patch(patched, index=0):
    layer, _ = entries_by_layer(patched)[index]
    return layer, attn2(patched)[layer.key]


def _check_frames(patched, weights, cond_kv):
    """Run the first layer's patch on cond frames + uncond frames (one per weight): cond frame i
    must add weight i x Attn(q, cond_kv(i)); uncond frame i weight i x Attn(q, negative K/V)."""
    layer, p = _layer_patch(patched)
    (entry,) = p.entries
    ku, vu = entry.prompt.uncond[layer.index]
    n = len(weights)
    out, q, k, v, _ = call_patch(p, layer, batch=2 * n, layout=(0, 1))
    text = sdpa(q, k, v, layer.heads)
    for i, w in enumerate(weights):
        kc, vc = cond_kv(i)
        torch.testing.assert_close(out[i], text[i] + w * sdpa(q[i : i + 1], kc, vc, layer.heads)[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[n + i], text[n + i] + w * sdpa(q[n + i : n + i + 1], ku, vu, layer.heads)[0], atol=1e-4, rtol=1e-4)
    return out, text


def test_frame_i_gets_image_i_and_weight_i(setup):
    model, handle, clip = setup
    frames = _frames()
    weights = [1.0, 0.5, 0.0]
    patched = ApplyBatch.run(model, handle, frames, weights, clip_vision=clip, **COMMON)[0]
    layer, _ = _layer_patch(patched)
    kc, vc = image_kv(handle, clip, frames, per_image=True)[layer.index]
    out, text = _check_frames(patched, weights, lambda i: (kc[i : i + 1], vc[i : i + 1]))
    assert torch.equal(out[2], text[2]) or torch.allclose(out[2], text[2], atol=1e-6)


def test_plain_apply_takes_a_per_frame_weight_list(setup):
    """IPAdapter Apply with one reference and a weight list: every frame sees the same image
    tokens, frame i scaled by weight i (the list an IPAdapter Weights node outputs)."""
    model, handle, clip = setup
    ref = image(10)
    weights = [1.0, 0.5, 0.0]
    patched = Apply.run(model, handle, ref, weights, combine_embeds="concat", clip_vision=clip, **COMMON)[0]
    layer, _ = _layer_patch(patched)
    kc, vc = image_kv(handle, clip, ref)[layer.index]
    _check_frames(patched, weights, lambda i: (kc, vc))


@pytest.mark.parametrize("window", ["animatediff", "comfy"])
def test_context_windows_pick_frames_by_their_indices(setup, window):
    model, handle, clip = setup
    frames = _frames()
    weights = [1.0, 0.5, 0.25]
    patched = ApplyBatch.run(model, handle, frames, weights, clip_vision=clip, **COMMON)[0]
    layer, p = _layer_patch(patched)
    per_image = image_kv(handle, clip, frames, per_image=True)[layer.index]
    idx = [2, 0]
    extra = {"ad_params": {"sub_idxs": idx, "full_length": 3}} if window == "animatediff" else {
        "context_window": SimpleNamespace(dim=0, index_list=idx)}
    out, q, k, v, _ = call_patch(p, layer, batch=2, layout=(0,), **extra)
    text = sdpa(q, k, v, layer.heads)
    for row, frame in enumerate(idx):
        kc, vc = per_image[0][frame : frame + 1], per_image[1][frame : frame + 1]
        expect = text[row] + weights[frame] * sdpa(q[row : row + 1], kc, vc, layer.heads)[0]
        torch.testing.assert_close(out[row], expect, atol=1e-4, rtol=1e-4)


def test_frame_i_gets_mask_i(setup):
    model, handle, clip = setup
    masks = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])
    masks[0, :, 4:] = 0.0  # frame 0: left half only
    patched = ApplyBatch.run(model, handle, _frames()[:2], 1.0, clip_vision=clip, attn_mask=masks, **COMMON)[0]
    layer, p = _layer_patch(patched)
    per_image = image_kv(handle, clip, _frames()[:2], per_image=True)[layer.index]
    out, q, k, v, _ = call_patch(p, layer, batch=2, layout=(0,), grid=(4, 4))
    text = sdpa(q, k, v, layer.heads)
    torch.testing.assert_close(out[1], text[1], atol=1e-6, rtol=0)  # frame 1: mask 1 is empty
    ip0 = sdpa(q[:1], per_image[0][:1], per_image[1][:1], layer.heads)[0].reshape(4, 4, -1)
    got = out[0].reshape(4, 4, -1)
    torch.testing.assert_close(got[:, :2], (text[0].reshape(4, 4, -1) + ip0)[:, :2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[:, 2:], text[0].reshape(4, 4, -1)[:, 2:], atol=1e-5, rtol=0)


def test_embeds_batch_matches_image_batch_and_chunked_encoding_reports_progress(setup, monkeypatch):
    model, handle, clip = setup
    frames = _frames()
    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: calls.append((value, total)))
    by_image = ApplyBatch.run(model, handle, frames, 1.0, clip_vision=clip, encode_batch_size=1, **COMMON)[0]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    pos, neg = EncodeImage.run(handle, frames, clip_vision=clip)
    by_embeds = ApplyEmbedsBatch.run(model, handle, pos, 1.0, neg_embeds=neg, **COMMON)[0]
    for (layer, a), (_, b) in zip(entries_by_layer(by_image), entries_by_layer(by_embeds)):
        ka, kb = a[0].prompt.cond[layer.index][0], b[0].prompt.cond[layer.index][0]
        assert ka.shape[0] == 3 and torch.allclose(ka, kb, atol=1e-5)


def test_weights_node_lays_out_images_and_round_trips_its_strategy():
    imgs = torch.stack([torch.full((4, 4, 3), float(i)) for i in range(3)])
    out = Weights.run("1.0, 0.0", "linear", 3, 0, 9999, 1, 1, "shift batches", image=imgs)
    weights, invert, total, image_1, image_2, strategy, reversed_ = out
    assert total == len(weights) == 1 + 2 * 3 + 1
    assert [a + b for a, b in zip(weights, invert)] == pytest.approx([1.0] * total)
    assert image_1[:, 0, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert image_2[:, 0, 0, 0].tolist() == [0, 1, 1, 1, 2, 2, 2, 2]
    assert reversed_ == weights[::-1]
    again = WeightsFromStrategy.run(strategy, image=imgs)
    assert again[0] == weights and torch.equal(again[3], image_1)
    text = PromptScheduleFromStrategy.run(strategy, "red\ngreen\nblue")[0]
    assert text.splitlines() == ['"0": "red",', '"1": "red",', '"4": "green",', '"7": "blue",']
    assert CombineWeights.run([1.0, 0.5], 0.25) == ([1.0, 0.5, 0.25], 3)


@pytest.mark.slow
def test_cross_fade_schedule_runs_in_the_executor():
    from test_executor import LatentStats, TinyAdapter, TinyClipVision, TinyConditioning, TinyModel

    added = {"T_TinyModel": TinyModel, "T_TinyAdapter": TinyAdapter, "T_TinyClipVision": TinyClipVision,
             "T_TinyConditioning": TinyConditioning, "T_LatentStats": LatentStats}
    comfy_nodes.NODE_CLASS_MAPPINGS.update(added)
    try:
        g = {
            "1": {"class_type": "T_TinyModel", "inputs": {"arch": "sd15"}},
            "2": {"class_type": "T_TinyAdapter", "inputs": {"arch": "sd15", "kind": "linear"}},
            "3": {"class_type": "T_TinyClipVision", "inputs": {}},
            "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366CC}},
            "14": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xCC3322}},
            "15": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["14", 0]}},
            "10": {"class_type": "IPAK_Weights", "inputs": {"weights": "1.0, 0.0", "timing": "ease_in_out", "frames": 2,
                                                             "start_frame": 0, "end_frame": 9999, "add_starting_frames": 0,
                                                             "add_ending_frames": 1, "method": "shift batches", "image": ["15", 0]}},
            "11": {"class_type": "IPAK_ApplyBatch", "inputs": {"model": ["1", 0], "ipadapter": ["2", 0], "image": ["10", 3],
                                                               "weight": ["10", 0], "clip_vision": ["3", 0], **COMMON}},
            "5": {"class_type": "IPAK_ApplyBatch", "inputs": {"model": ["11", 0], "ipadapter": ["2", 0], "image": ["10", 4],
                                                              "weight": ["10", 1], "clip_vision": ["3", 0], **COMMON}},
            "6": {"class_type": "T_TinyConditioning", "inputs": {"arch": "sd15"}},
            "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": ["10", 2]}},
            "8": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["6", 0], "negative": ["6", 1],
                                                       "latent_image": ["7", 0], "seed": 3, "steps": 2, "cfg": 5.0,
                                                       "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "9": {"class_type": "T_LatentStats", "inputs": {"samples": ["8", 0]}},
        }
        stats = run_prompt(g)["outputs"]["9"]["stats"][0]
        assert stats["finite"] and stats["shape"][0] == 3
    finally:
        for key in added:
            comfy_nodes.NODE_CLASS_MAPPINGS.pop(key, None)


def test_non_unet_adapters_are_refused_clearly(setup):
    from ipadapter_kit.ip_adapter_core.errors import IncompatibleModelError
    from ipadapter_kit.nodes.adapter_store import IPAdapterHandle

    model, handle, clip = setup
    fake = IPAdapterHandle(SimpleNamespace(name="flux-ip-adapter.safetensors", spec=object()))
    with pytest.raises(IncompatibleModelError, match="Flux / SD3.5"):
        ApplyBatch.run(model, fake, _frames(), 1.0, clip_vision=clip, **COMMON)
