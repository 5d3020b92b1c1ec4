"""Tiled references (one shared adapter, one masked entry per tile), the ClipVision
enhancer (one meaning of enhance_ratio for single and batch input), and image prep."""

from __future__ import annotations

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
from feature_helpers import attn2, call_patch, entries_by_layer, image, image_kv, sdpa
from ipadapter_kit.ip_adapter_core import tiles as tiling
from ipadapter_kit.ip_adapter_core.spec import EncoderOutput, ProjectionKind
from ipadapter_kit.nodes.encoding import CropMode, encode_clip
from ipadapter_kit.nodes.tiled import ApplyTiled, ClipVisionEnhancer, PrepImage, enhanced_features

COMMON = dict(weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")


@pytest.fixture(scope="module")
def setup():
    model = tiny.tiny_model("sd15")
    return model, tiny.tiny_adapter(tiny.tiny_spec(model)), tiny.tiny_clip_vision()


def test_tiles_are_masked_entries_on_one_shared_adapter(setup):
    model, handle, clip = setup
    tall = image(5, h=96, w=64)  # 2:3 -> two tiles stacked vertically
    patched, tiles_out, masks = ApplyTiled.run(model, handle, tall, 0.7, sharpening=0.0, clip_vision=clip, **COMMON)
    assert tiles_out.shape == (2, 224, 224, 3) and masks.shape == (2, 336, 224)
    assert torch.equal(masks.sum(0), torch.ones(336, 224))
    assert masks[0, :168].min() == 1 and masks[0, 168:].max() == 0
    prompts = set()
    for layer, entries in entries_by_layer(patched):
        assert len(entries) == 2  # one entry per tile on the same patch object
        prompts.update(id(e.prompt) for e in entries)
        for e in entries:  # entries hold projected K/V, never a copy of the adapter module
            assert not any(isinstance(v, torch.nn.Module) for v in vars(e.prompt).values())
    assert len(prompts) == 2
    assert attn2(model) == {}  # the input model is untouched

    layer, _ = entries_by_layer(patched)[0]
    out, q, k, v, _ = call_patch(attn2(patched)[layer.key], layer, batch=1, grid=(6, 4))
    text = sdpa(q, k, v, layer.heads).reshape(6, 4, -1)
    got = out.reshape(6, 4, -1)
    for t, rows in ((0, slice(0, 3)), (1, slice(3, 6))):
        kt, vt = image_kv(handle, clip, tiles_out[t : t + 1])[layer.index]
        ip = sdpa(q, kt, vt, layer.heads).reshape(6, 4, -1)
        torch.testing.assert_close(got[rows], (text + 0.7 * ip)[rows], atol=1e-4, rtol=1e-4)


def test_tiled_with_a_user_mask_and_unfold(setup):
    model, handle, clip = setup
    frames = torch.cat([image(6, h=64, w=160), image(7, h=64, w=160)])  # 2.5:1 -> three tiles side by side
    user = torch.ones(64, 160)
    user[:, 80:] = 0.0
    patched, tiles_out, masks = ApplyTiled.run(model, handle, frames, [1.0, 0.5], sharpening=0.3, clip_vision=clip,
                                               attn_mask=user, unfold_batch=True, **COMMON)
    assert masks.shape[0] == 3 and tiles_out.shape[0] == 3 * 2
    assert masks[:, :, masks.shape[-1] // 2 + 2 :].max() == 0  # the user's mask limits every tile
    layer, entries = entries_by_layer(patched)[0]
    assert len(entries) == 3 and all(e.prompt.unfold and e.prompt.cond[layer.index][0].shape[0] == 2 for e in entries)
    assert entries[0].prompt.frame_weights.tolist() == [1.0, 0.5]


@pytest.mark.parametrize("kind", [ProjectionKind.RESAMPLER, ProjectionKind.LINEAR])
def test_enhance_ratio_means_the_same_for_one_image_and_a_batch(setup, kind):
    model, _, clip = setup
    output = EncoderOutput.PENULTIMATE if kind is ProjectionKind.RESAMPLER else EncoderOutput.IMAGE_EMBEDS
    a, b = image(8, 80, 80), image(9, 80, 80)
    plain = encode_clip(clip, a, output, CropMode.CENTER)
    assert torch.allclose(enhanced_features(clip, output, a, 2, 0.0).features, plain, atol=1e-5)
    tiles_only = enhanced_features(clip, output, a, 2, 1.0).features
    grid = tiling.grid_tiles(torch.nn.functional.interpolate(a.movedim(-1, 1), size=(448, 448), mode="bicubic",
                                                             antialias=True, align_corners=False).movedim(1, -1).clamp(0, 1), 2)
    per_tile = encode_clip(clip, grid[0], output, CropMode.CENTER)[None]
    merged = tiling.merge_tile_tokens(per_tile, 2) if output is EncoderOutput.PENULTIMATE else tiling.merge_tile_embeds(per_tile)
    assert torch.allclose(tiles_only, merged, atol=1e-4)
    half = enhanced_features(clip, output, a, 2, 0.5).features
    assert torch.allclose(half, (plain + merged) / 2, atol=1e-4)
    batch = enhanced_features(clip, output, torch.cat([b, a]), 2, 0.5).features
    assert batch.shape[0] == 2 and torch.allclose(batch[1:], half, atol=1e-4)


def test_enhancer_node_applies_the_enhanced_features(setup):
    model, _, clip = setup
    handle = tiny.tiny_adapter(tiny.tiny_spec(model, ProjectionKind.RESAMPLER), seed=1)
    img = image(8, 80, 80)
    patched = ClipVisionEnhancer.run(model, handle, img, 1.0, enhance_tiles=2, enhance_ratio=0.5, clip_vision=clip, **COMMON)[0]
    feats = enhanced_features(clip, EncoderOutput.PENULTIMATE, img, 2, 0.5).features
    with torch.no_grad():
        kv = handle.adapter.model.layer_kv(handle.adapter.model.project(feats))
    layer, (entry,) = entries_by_layer(patched)[0]
    assert torch.allclose(entry.prompt.cond[layer.index][0], kv[layer.index].k.float(), atol=1e-4)


def test_prep_image_at_the_encoders_resolution():
    tall = torch.zeros(1, 300, 100, 3)
    tall[:, :100, :, 0] = 1.0  # red top third
    out = PrepImage.run(tall, "LANCZOS", "top", 0.0)[0]
    assert out.shape == (1, 224, 224, 3) and out[..., 0].min() > 0.99 and out[..., 1:].max() < 0.01
    big = PrepImage.run(tall, "BICUBIC", "bottom", 0.0, size="auto", clip_vision=tiny.tiny_clip_vision(image_size=336))[0]
    assert big.shape == (1, 336, 336, 3) and big[..., 0].max() < 0.01
    padded = PrepImage.run(tall, "NEAREST", "pad", 0.5, size="336")[0]
    assert padded.shape == (1, 336, 336, 3)
