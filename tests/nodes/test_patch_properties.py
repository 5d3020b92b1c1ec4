"""Property-based test of the attn2 patch (nodes/patch.py) called the way ComfyUI calls it:
random head layouts, token grids, batch layouts (cond_or_uncond [0,1], [1,0], [0], [1] with
1..3 rows per chunk), up to three stacked adapters with their own weights (negative, zero,
large), routes, scaling modes, masks of random sizes and batches, schedules, unfolded batches
with per-frame weights, and another pack's patch underneath. Every call must equal the plain
formula (computed here in float64, independently of the patch's caches and batching):

    out = base(q, k, v) + sum over adapters of  gate * mask * w_row * Attn(q, K_row, V_row)

and nothing may crash on these valid inputs; a second call with another layout and sigma on
the same patch objects checks that the caches never serve stale tensors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny  # noqa: F401  (sets up the host and the pack)
from ipadapter_kit.ip_adapter_core.embeds import EmbedsScaling
from ipadapter_kit.ip_adapter_core.masks import resize_to_tokens
from ipadapter_kit.ip_adapter_core.weights import Route
from ipadapter_kit.nodes import host, patch

COND, UNCOND = patch.COND, patch.UNCOND


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: a second intra-op thread only costs on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
PROPERTIES = settings(max_examples=80, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IDENTITIES = settings(PROPERTIES, max_examples=40)


# --- the reference --------------------------------------------------------------------------


def sdpa(q, k, v, heads):
    """Plain multi-head softmax attention in float64; k/v [1 or B, T, C]."""
    q, k, v = q.double(), k.double(), v.double()
    b, n, c = q.shape
    d = c // heads
    k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
    split = lambda t: t.reshape(b, t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ split(v)).transpose(1, 2).reshape(b, n, c)


def reference(case, call, q, k, v):
    heads, width = case["heads"], case["width"]
    base = sdpa(q, k, v, heads) * (2.0 if case["inner"] else 1.0)
    out = base.clone()
    layout, per_chunk = call["layout"], call["per_chunk"]
    for e in case["entries"]:
        p = e["prompt"]
        if p.sigma_start is not None and not (p.sigma_end <= call["sigma"] <= p.sigma_start):
            continue
        for c, kind in enumerate(layout):
            for r in range(per_chunk):
                row = c * per_chunk + r
                frame = r
                if e["route"] is Route.NEGATIVE:
                    src = p.cond if kind == UNCOND else None
                elif kind == UNCOND:
                    src = p.alt_uncond if (e["route"] is Route.COMPOSITION and p.alt_uncond is not None) else p.uncond
                else:
                    src = p.alt if (e["route"] is Route.COMPOSITION and p.alt is not None) else p.cond
                if src is None:
                    continue
                kk, vv = src[0]
                i = min(frame, kk.shape[0] - 1) if p.unfold else 0
                kk, vv = kk[i : i + 1].double(), vv[i : i + 1].double()
                w = e["weight"]
                if p.frame_weights is not None:
                    w = w * float(p.frame_weights[min(frame, p.frame_weights.shape[0] - 1)])
                mode = e["scaling"]
                if mode is EmbedsScaling.V_ONLY:
                    ip = w * sdpa(q[row : row + 1], kk, vv, heads)
                else:
                    s = w * width / 1280 if mode in (EmbedsScaling.K_V_C_PENALTY, EmbedsScaling.K_MEAN_V_C_PENALTY) else w
                    if mode is EmbedsScaling.K_MEAN_V_C_PENALTY:
                        mean = vv.mean(dim=1, keepdim=True)
                        ip = sdpa(q[row : row + 1], kk * s, (vv - mean) + mean * s, heads)
                    else:
                        ip = sdpa(q[row : row + 1], kk * s, vv * s, heads)
                if p.mask is not None:
                    m = resize_to_tokens(p.mask, call["grid"]).double()
                    ip = ip * m[min(frame, m.shape[0] - 1)][None]
                out[row : row + 1] += ip
    return out


# --- strategies -------------------------------------------------------------------------------

LAYOUTS = [(0, 1), (1, 0), (0,), (1,)]


@st.composite
def calls(draw):
    """One ComfyUI call: batch layout, rows per chunk, latent size and the layer's grid, sigma."""
    lh, lw, level = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(0, 2))
    grid = (math.ceil(lh / 2**level), math.ceil(lw / 2**level))
    return {"layout": draw(st.sampled_from(LAYOUTS)), "per_chunk": draw(st.integers(1, 3)), "latent": (lh, lw),
            "grid": grid, "sigma": draw(st.sampled_from([0.5, 2.0, 5.0, 9.0])), "activations": draw(st.booleans()),
            "text_tokens": draw(st.integers(1, 6)), "seed": draw(st.integers(0, 2**16))}


@st.composite
def entries(draw, width):
    """One applied adapter: its prepared K/V (random token counts and unfold rows) and settings."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    kv = lambda n, t: (torch.randn(n, t, width, generator=g), torch.randn(n, t, width, generator=g))  # noqa: E731
    unfold = draw(st.booleans())
    rows = draw(st.integers(1, 3)) if unfold else 1
    tokens, alt_tokens = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    has_alt = draw(st.booleans())
    alt = [kv(rows, alt_tokens)] if has_alt else None
    # apply_embeds gives the negative the same token count as what it stands against
    alt_uncond = [kv(1, alt_tokens)] if has_alt and (alt_tokens != tokens or draw(st.booleans())) else None
    mask = None
    if draw(st.booleans()):
        m, mh, mw = draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
        kind = draw(st.sampled_from(["random", "random", "random", "zeros", "ones"]))
        mask = {"random": torch.rand(m, mh, mw, generator=g), "zeros": torch.zeros(m, mh, mw), "ones": torch.ones(m, mh, mw)}[kind]
    schedule = draw(st.one_of(st.none(), st.tuples(st.sampled_from([1.0, 3.0, 8.0]), st.sampled_from([0.0, 1.0, 3.0]))))
    frame_weights = draw(st.one_of(st.none(), st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=4)))
    prompt = patch.PreparedPrompt(
        cond=[kv(rows, tokens)], uncond=[kv(draw(st.sampled_from([1, rows])), tokens)], alt=alt, alt_uncond=alt_uncond,
        unfold=unfold, sigma_start=None if schedule is None else max(schedule), sigma_end=None if schedule is None else min(schedule),
        mask=mask, frame_weights=None if frame_weights is None else torch.tensor(frame_weights),
    )
    weight = draw(st.one_of(st.just(0.0), st.floats(-3, 3, allow_nan=False, allow_infinity=False), st.just(20.0)))
    return {"prompt": prompt, "weight": weight, "route": draw(st.sampled_from(list(Route))),
            "scaling": draw(st.sampled_from(list(EmbedsScaling)))}


@st.composite
def cases(draw):
    heads, dim_head = draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([2, 4, 8]))
    width = heads * dim_head
    return {"heads": heads, "width": width, "inner": draw(st.booleans()),
            "entries": draw(st.lists(entries(width), min_size=1, max_size=3)), "calls": draw(st.lists(calls(), min_size=1, max_size=2))}


def foreign(q, k, v, extra_options):
    """Another pack's attn2 replace patch, underneath ours."""
    return host.text_attention(q, k, v, extra_options) * 2


# --- the properties --------------------------------------------------------------------------


@pytest.mark.slow
@PROPERTIES
@given(case=cases())
def test_patch_equals_the_formula_for_any_valid_input(case):
    heads, width = case["heads"], case["width"]
    layer = host.HostLayer(index=0, key=("input", 1, 0), transformer_index=0, width=width, context_dim=768, heads=heads)
    entries = tuple(patch.LayerEntry(e["prompt"], 0, e["weight"], e["route"], e["scaling"]) for e in case["entries"])
    attn2 = patch.Attn2Patch(layer, entries, inner=foreign if case["inner"] else None)
    for call in case["calls"]:  # the same patch objects, so the second call goes through the caches
        batch = call["per_chunk"] * len(call["layout"])
        g = torch.Generator().manual_seed(call["seed"])
        n = call["grid"][0] * call["grid"][1]
        q = torch.randn(batch, n, width, generator=g)
        k = torch.randn(batch, call["text_tokens"], width, generator=g)
        v = torch.randn(batch, call["text_tokens"], width, generator=g)
        extra = {"n_heads": heads, "dim_head": width // heads, "cond_or_uncond": list(call["layout"]),
                 "sigmas": torch.tensor([call["sigma"]]), "original_shape": [batch, 4, *call["latent"]],
                 "transformer_index": 0, "block": ("input", 1)}
        if call["activations"]:
            extra["activations_shape"] = [batch, width, *call["grid"]]
        with torch.no_grad():
            out = attn2(q, k, v, extra)
        assert out.shape == q.shape and out.dtype == q.dtype
        expect = reference(case, call, q, k, v)
        torch.testing.assert_close(out.double(), expect, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
@IDENTITIES
@given(case=cases())
def test_all_ones_mask_equals_no_mask_and_zero_weight_equals_text_only(case):
    """Two exact identities, whatever the rest: a mask of ones changes nothing, and an adapter
    at weight 0 (V only) leaves exactly what the layer computes without it."""
    heads, width = case["heads"], case["width"]
    layer = host.HostLayer(index=0, key=("input", 1, 0), transformer_index=0, width=width, context_dim=768, heads=heads)
    call = case["calls"][0]
    batch = call["per_chunk"] * len(call["layout"])
    g = torch.Generator().manual_seed(call["seed"])
    n = call["grid"][0] * call["grid"][1]
    q, k, v = (torch.randn(batch, t, width, generator=g) for t in (n, call["text_tokens"], call["text_tokens"]))
    extra = {"n_heads": heads, "dim_head": width // heads, "cond_or_uncond": list(call["layout"]),
             "sigmas": torch.tensor([call["sigma"]]), "original_shape": [batch, 4, *call["latent"]]}
    e = case["entries"][0]
    p = e["prompt"]
    fields = dict(cond=p.cond, uncond=p.uncond, alt=p.alt, alt_uncond=p.alt_uncond, unfold=p.unfold, frame_weights=p.frame_weights)
    ones = patch.PreparedPrompt(**fields, mask=torch.ones(2, 5, 3))
    plain = patch.PreparedPrompt(**fields)
    with torch.no_grad():
        a = patch.Attn2Patch(layer, (patch.LayerEntry(ones, 0, e["weight"], e["route"], e["scaling"]),))(q, k, v, extra)
        b = patch.Attn2Patch(layer, (patch.LayerEntry(plain, 0, e["weight"], e["route"], e["scaling"]),))(q, k, v, extra)
        zero = patch.Attn2Patch(layer, (patch.LayerEntry(plain, 0, 0.0, e["route"]),))(q, k, v, extra)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert torch.equal(zero, host.text_attention(q, k, v, extra))
