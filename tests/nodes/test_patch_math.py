"""The attn2 patch against the plain decoupled-attention formula, called the way ComfyUI
calls it (projected q/k/v, extra_options), over batch layouts, masks, schedules; and the fall back
to the two-call path when the fused kernel cannot run on a GPU."""

from __future__ import annotations

import pytest
import torch

import tiny  # noqa: F401  (sets up the host and the pack)
from ipadapter_kit.ip_adapter_core import fused
from ipadapter_kit.ip_adapter_core.embeds import EmbedsScaling
from ipadapter_kit.ip_adapter_core.weights import Route
from ipadapter_kit.nodes import host, patch

HEADS, C, N, L, T = 4, 32, 64, 77, 4


def _prompt(n_cond=1, **kw):
    g = torch.Generator().manual_seed(3)
    mk = lambda n: (torch.randn(n, T, C, generator=g), torch.randn(n, T, C, generator=g))  # noqa: E731
    return patch.PreparedPrompt(cond=[mk(n_cond)], uncond=[mk(1)], alt=[mk(1)], **kw)


def _layer():
    return host.HostLayer(index=0, key=("input", 1, 0), transformer_index=0, width=C, context_dim=768, heads=HEADS)


def _qkv(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N, C, generator=g), torch.randn(batch, L, C, generator=g), torch.randn(batch, L, C, generator=g)


def _sdpa(q, k, v):
    b = q.shape[0]
    if k.shape[0] != b:
        k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], HEADS, C // HEADS).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (C // HEADS) ** 0.5, dim=-1)
    return (w @ split(v)).transpose(1, 2).reshape(b, q.shape[1], C)


def _same(a, b):
    """Bit-exact on the plain path; the fused kernel computes the text part itself."""
    if fused.available(a):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
        return True
    return torch.equal(a, b)


def _extra(layout, sigma=1.0, **kw):
    return {"n_heads": HEADS, "dim_head": C // HEADS, "cond_or_uncond": layout, "sigmas": torch.tensor([sigma]),
            "original_shape": [1, 4, 8, 8], **kw}


@pytest.mark.parametrize("layout", [[0, 1], [1, 0], [0], [1]])
@pytest.mark.parametrize("per_chunk", [1, 3])
def test_layouts_match_formula(layout, per_chunk):
    prompt = _prompt()
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 0.7),))
    batch = per_chunk * len(layout)
    q, k, v = _qkv(batch)
    out = p(q, k, v, _extra(layout))
    expect = _sdpa(q, k, v)
    for c, kind in enumerate(layout):
        rows = slice(c * per_chunk, (c + 1) * per_chunk)
        ki, vi = (prompt.cond if kind == 0 else prompt.uncond)[0]
        expect[rows] += 0.7 * _sdpa(q[rows], ki, vi)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


def test_weight_zero_entry_is_exactly_text_attention():
    prompt = _prompt()
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 0.0),))
    q, k, v = _qkv(2)
    extra = _extra([0, 1])
    assert _same(p(q, k, v, extra), host.text_attention(q, k, v, extra))


def test_schedule_gates_on_device_without_sync():
    prompt = _prompt(sigma_start=5.0, sigma_end=2.0)
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0),))
    q, k, v = _qkv(2)
    inside = p(q, k, v, _extra([0, 1], sigma=3.0))
    before = p(q, k, v, _extra([0, 1], sigma=9.0))
    after = p(q, k, v, _extra([0, 1], sigma=1.0))
    text = host.text_attention(q, k, v, _extra([0, 1]))
    assert _same(before, text) and _same(after, text)
    assert not torch.allclose(inside, text)


def test_precise_route_feeds_the_image_to_uncond_only():
    prompt = _prompt()
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0, Route.NEGATIVE),))
    q, k, v = _qkv(2)
    out = p(q, k, v, _extra([0, 1]))
    text = _sdpa(q, k, v)
    torch.testing.assert_close(out[:1], text[:1], atol=1e-6, rtol=0)
    kc, vc = prompt.cond[0]
    torch.testing.assert_close(out[1:], text[1:] + _sdpa(q[1:], kc, vc), atol=1e-5, rtol=1e-5)
    # cond-only batches (cfg 1) get nothing at all from this layer
    q1, k1, v1 = _qkv(1)
    assert _same(p(q1, k1, v1, _extra([0])), host.text_attention(q1, k1, v1, _extra([0])))


def test_composition_route_uses_the_alt_image():
    prompt = _prompt()
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 0.5, Route.COMPOSITION),))
    q, k, v = _qkv(1)
    ka, va = prompt.alt[0]
    torch.testing.assert_close(p(q, k, v, _extra([0])), _sdpa(q, k, v) + 0.5 * _sdpa(q, ka, va), atol=1e-5, rtol=1e-5)


def test_mask_scales_the_image_branch_per_token():
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :8] = 1.0  # left half
    prompt = _prompt(mask=mask)
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0),))
    q, k, v = _qkv(1)
    out = p(q, k, v, _extra([0]))
    kc, vc = prompt.cond[0]
    ip = _sdpa(q, kc, vc).reshape(1, 8, 8, C)
    text = _sdpa(q, k, v).reshape(1, 8, 8, C)
    got = out.reshape(1, 8, 8, C)
    torch.testing.assert_close(got[:, :, :4], (text + ip)[:, :, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, :, 4:], text[:, :, 4:], atol=1e-5, rtol=1e-5)


def test_unfold_gives_frame_i_image_i_and_weight_i():
    prompt = _prompt(n_cond=3, unfold=True, frame_weights=torch.tensor([1.0, 0.5, 0.0]))
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 2.0),))
    q, k, v = _qkv(6)
    out = p(q, k, v, _extra([0, 1]))
    text = _sdpa(q, k, v)
    kc, vc = prompt.cond[0]
    ku, vu = prompt.uncond[0]
    for frame, w in enumerate([1.0, 0.5, 0.0]):
        expect = text[frame] + 2.0 * w * _sdpa(q[frame : frame + 1], kc[frame : frame + 1], vc[frame : frame + 1])[0]
        torch.testing.assert_close(out[frame], expect, atol=1e-5, rtol=1e-5)
        expect_u = text[3 + frame] + 2.0 * w * _sdpa(q[3 + frame : 4 + frame], ku, vu)[0]
        torch.testing.assert_close(out[3 + frame], expect_u, atol=1e-5, rtol=1e-5)


def test_animatediff_context_window_picks_frames_by_sub_idxs():
    prompt = _prompt(n_cond=5, unfold=True)
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0),))
    q, k, v = _qkv(2)
    out = p(q, k, v, _extra([0], ad_params={"sub_idxs": [3, 4], "full_length": 5}))
    kc, vc = prompt.cond[0]
    expect = _sdpa(q, k, v)
    expect[0] += _sdpa(q[:1], kc[3:4], vc[3:4])[0]
    expect[1] += _sdpa(q[1:], kc[4:5], vc[4:5])[0]
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["animatediff", "comfy"])
def test_successive_context_windows_through_one_patch_each_get_their_frames(style):
    """Windows of the same size reach the same patch one after another: each must get its
    own frames' tokens, not those of the first window seen (a per-shape cache must not
    hide the window)."""
    from types import SimpleNamespace

    prompt = _prompt(n_cond=5, unfold=True)
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0),))
    kc, vc = prompt.cond[0]
    for window in ([0, 1], [3, 4], [2, 0]):
        extra = {"ad_params": {"sub_idxs": window, "full_length": 5}} if style == "animatediff" else {
            "context_window": SimpleNamespace(dim=0, index_list=window)}
        q, k, v = _qkv(2, seed=sum(window))
        out = p(q, k, v, _extra([0], **extra))
        expect = _sdpa(q, k, v)
        for row, frame in enumerate(window):
            expect[row] += _sdpa(q[row : row + 1], kc[frame : frame + 1], vc[frame : frame + 1])[0]
        torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", list(EmbedsScaling))
def test_embeds_scaling_modes(mode):
    prompt = _prompt()
    w = 0.8
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, w, scaling=mode),))
    q, k, v = _qkv(1)
    kc, vc = prompt.cond[0]
    penalty = w * C / 1280
    if mode is EmbedsScaling.V_ONLY:
        ip = w * _sdpa(q, kc, vc)
    elif mode is EmbedsScaling.K_V:
        ip = _sdpa(q, kc * w, vc * w)
    elif mode is EmbedsScaling.K_V_C_PENALTY:
        ip = _sdpa(q, kc * penalty, vc * penalty)
    else:
        mean = vc.mean(dim=1, keepdim=True)
        ip = _sdpa(q, kc * penalty, (vc - mean) + mean * penalty)
    torch.testing.assert_close(p(q, k, v, _extra([0])), _sdpa(q, k, v) + ip, atol=1e-5, rtol=1e-5)


def test_foreign_patch_on_the_same_key_is_kept_as_the_text_part():
    calls = []

    def foreign(q, k, v, extra):
        calls.append(1)
        return host.text_attention(q, k, v, extra) * 2

    prompt = _prompt()
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0),), inner=foreign)
    q, k, v = _qkv(1)
    kc, vc = prompt.cond[0]
    torch.testing.assert_close(p(q, k, v, _extra([0])), 2 * _sdpa(q, k, v) + _sdpa(q, kc, vc), atol=1e-5, rtol=1e-5)
    assert calls == [1]


def test_patch_is_shared_not_copied_and_moves_with_to():
    import copy

    prompt = _prompt()
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0),))
    assert copy.deepcopy({"x": p})["x"] is p
    q, k, v = _qkv(1)
    p(q, k, v, _extra([0]))
    assert prompt.cache._data and (p._fast or p._plain)  # K/V placed for this device
    assert p.to(torch.device("meta")) is p
    assert not prompt.cache._data and not p._fast and not p._plain  # cached copies for other devices were dropped


def test_unfold_keeps_one_kv_row_per_distinct_reference():
    """300 frames made of 3 images (a weight schedule) store 3 rows of K/V, not 300."""
    from ipadapter_kit.nodes.apply_core import _distinct_frames
    from ipadapter_kit.nodes.encoding import ImageEmbeds
    from ipadapter_kit.ip_adapter_core.spec import EncoderOutput

    images = torch.randn(3, 8)
    frames = images[torch.tensor([i // 100 for i in range(300)])]
    unique, index = _distinct_frames(ImageEmbeds(EncoderOutput.IMAGE_EMBEDS, frames))
    assert unique.count == 3 and len(index) == 300
    assert all(torch.equal(unique.features[index[f]], frames[f]) for f in range(0, 300, 7))
    prompt = _prompt(n_cond=3, unfold=True, cond_index=tuple(index))
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(prompt, 0, 1.0),))
    q, k, v = _qkv(2)
    out = p(q, k, v, _extra([0], ad_params={"sub_idxs": [150, 299], "full_length": 300}))
    kc, vc = prompt.cond[0]
    expect = _sdpa(q, k, v)
    expect[0] += _sdpa(q[:1], kc[1:2], vc[1:2])[0]
    expect[1] += _sdpa(q[1:], kc[2:3], vc[2:3])[0]
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


# --- when the fused kernel cannot run on this GPU --------------------------------------------


@pytest.fixture
def failing_kernel(monkeypatch):
    """The fused path switched on for these tensors, its kernel replaced by one that fails
    (like a GPU or Triton it cannot compile for) until told otherwise."""
    from types import SimpleNamespace

    state = SimpleNamespace(calls=0, fail=True)

    def launch(q, k, v, heads, segments, sigmas=None, base=None):
        state.calls += 1
        if state.fail:
            raise RuntimeError("PTX .version 8.7 does not support .target sm_61")
        return torch.zeros_like(q)

    monkeypatch.setattr(fused, "_disabled_because", None)
    monkeypatch.setattr(fused, "available", lambda q: fused.enabled())
    monkeypatch.setattr(fused, "decoupled_attention_fused", launch)
    return state


def _fallback_call(seed=0):
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(_prompt(), 0, 0.7),))
    q, k, v = _qkv(2, seed)
    return p(q, k, v, _extra([0, 1]))


def test_first_kernel_failure_falls_back_to_the_two_call_path_for_good(failing_kernel, caplog, monkeypatch):
    """Its first failure switches the pack to the two-call path with one warning, and the call
    that failed still returns the right result."""
    import logging

    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        out = _fallback_call()
        again = _fallback_call(seed=1)
    assert failing_kernel.calls == 1  # tried once, never again
    assert not fused.enabled()
    assert caplog.text.count("fused kernel unavailable") == 1 and "sm_61" in caplog.text
    monkeypatch.setattr(fused, "available", lambda q: False)  # the two-call path, fresh patches
    torch.testing.assert_close(out, _fallback_call(), atol=0, rtol=0)
    torch.testing.assert_close(again, _fallback_call(seed=1), atol=0, rtol=0)


def test_a_kernel_that_ran_before_is_not_replaced_when_it_fails(failing_kernel):
    failing_kernel.fail = False
    p = patch.Attn2Patch(_layer(), (patch.LayerEntry(_prompt(), 0, 0.7),))
    q, k, v = _qkv(2)
    p(q, k, v, _extra([0, 1]))  # runs: the plan is proven
    failing_kernel.fail = True
    with pytest.raises(RuntimeError, match="sm_61"):
        p(q, k, v, _extra([0, 1]))
    assert fused.enabled()


def test_rocm_never_gets_the_fused_kernel(monkeypatch):
    """Never validated on ROCm (and its tf32 dots do not compile on most AMD GPUs)."""
    from types import SimpleNamespace

    monkeypatch.setattr(fused, "NVIDIA", False)
    monkeypatch.setattr(fused, "INTERPRET", False)
    q = SimpleNamespace(is_cuda=True, dtype=torch.float16)  # a HIP tensor reports is_cuda too
    assert not fused.available(q)
    monkeypatch.setattr(fused, "NVIDIA", True)
    assert fused.available(q) == (fused.triton is not None and fused.enabled())
