"""Regional image prompts: params objects, combining them, one patch per layer holding
every region, each region's image acting only inside its mask; the text mask."""

from __future__ import annotations

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
from feature_helpers import attn2, call_patch, entries_by_layer, image, image_kv, sdpa
from ipadapter_kit.ip_adapter_core.errors import InvalidInputError
from ipadapter_kit.nodes.regional import ApplyFromParams, CombineParams, RegionalConditioning

REGION = dict(weight_type="linear", start_at=0.0, end_at=1.0)


def _halves():
    left = torch.zeros(1, 16, 16)
    left[:, :, :8] = 1.0
    return left, 1.0 - left


def test_regional_conditioning_masks_the_text_too():
    pos, neg = tiny.conditioning("sd15")
    left, _ = _halves()
    params, p2, n2 = RegionalConditioning.run(image(1), 0.8, 2.5, mask=left, positive=pos, negative=neg, **REGION)
    assert params["weight"] == [0.8] and params["attn_mask"][0] is left and len(params["image"]) == 1
    for cond in (p2, n2):
        extra = cond[0][1]
        assert extra["mask"] is left and extra["set_area_to_bounds"] is False and extra["mask_strength"] == 2.5
    assert "mask" not in pos[0][1]  # the input conditioning is not modified
    unmasked = RegionalConditioning.run(image(1), 1.0, 1.0, positive=pos, **REGION)
    assert unmasked[1] is pos


def test_regions_stack_in_one_patch_and_act_inside_their_masks():
    model = tiny.tiny_model("sd15")
    handle, clip = tiny.tiny_adapter(tiny.tiny_spec(model)), tiny.tiny_clip_vision()
    left, right = _halves()
    a, b = image(1), image(2)
    ra = RegionalConditioning.run(a, 1.0, 1.0, mask=left, **REGION)[0]
    rb = RegionalConditioning.run(b, 0.5, 1.0, mask=right, **{**REGION, "weight_type": "style transfer"})[0]
    params = CombineParams.run(ra, rb)[0]
    assert len(params["image"]) == 2 and params["weight_type"] == ["linear", "style transfer"]
    patched = ApplyFromParams.run(model, handle, params, "concat", "V only", clip_vision=clip)[0]
    counts = {lay.transformer_index: len(es) for lay, es in entries_by_layer(patched)}
    assert counts[0] == 2 and counts[6] == 1  # t6 (middle) is not a style layer on SD1.5
    layer = entries_by_layer(patched)[0][0]
    out, q, k, v, _ = call_patch(attn2(patched)[layer.key], layer, batch=1, grid=(4, 4))
    ka, va = image_kv(handle, clip, a)[layer.index]
    kb, vb = image_kv(handle, clip, b)[layer.index]
    text = sdpa(q, k, v, layer.heads).reshape(4, 4, -1)
    ia = sdpa(q, ka, va, layer.heads).reshape(4, 4, -1)
    ib = sdpa(q, kb, vb, layer.heads).reshape(4, 4, -1)
    got = out.reshape(4, 4, -1)
    torch.testing.assert_close(got[:, :2], (text + ia)[:, :2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[:, 2:], (text + 0.5 * ib)[:, 2:], atol=1e-4, rtol=1e-4)


def test_regions_with_schedules_and_incumbent_params():
    model = tiny.tiny_model("sd15")
    handle, clip = tiny.tiny_adapter(tiny.tiny_spec(model)), tiny.tiny_clip_vision()
    frames = torch.cat([image(3), image(4)])
    params = RegionalConditioning.run(frames, [1.0, 0.25], 1.0, **REGION)[0]
    patched = ApplyFromParams.run(model, handle, params, "concat", "V only", clip_vision=clip, unfold_batch=True)[0]
    layer, (entry,) = entries_by_layer(patched)[0]
    assert entry.prompt.unfold and entry.prompt.frame_weights.tolist() == [1.0, 0.25]
    # a dict as the incumbent pack builds it works as input
    incumbent = {"image": [image(5)], "attn_mask": [None], "weight": [0.7], "weight_type": ["ease in"],
                 "start_at": [0.0], "end_at": [0.5]}
    assert ApplyFromParams.run(model, handle, incumbent, "average", "K+V", clip_vision=clip)[0] is not model
    with pytest.raises(InvalidInputError):
        ApplyFromParams.run(model, handle, {"image": [image(5)]}, "concat", "V only", clip_vision=clip)
