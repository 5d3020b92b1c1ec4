"""One cross-attention layer: `decoupled_attention` vs diffusers' `IPAdapterAttnProcessor2_0`.

diffusers' processor applies to_q/to_k/to_v and to_out itself; our function receives the
projected q/k/v and returns before to_out, so the test applies those around it. The image
tokens and K/V weights come from real-shaped synthetic adapters (our `IPAdapterModel`); the
diffusers processor gets the same layer's weights in `to_k_ip[0]` / `to_v_ip[0]`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0

from ip_adapter_core import IPAdapterModel, catalog
from ip_adapter_core.attention import ImageBranch, attention, decoupled_attention
from ip_adapter_core.testing import adapter_weights

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
BATCH, TEXT_TOKENS = 2, 77


def _sdxl_two_layers():
    """The SDXL 4-token adapter with only two of its layers (one 640, one 1280 wide)."""
    spec = catalog.published("ip-adapter_sdxl_vit-h.safetensors").spec
    return dataclasses.replace(spec, layer_widths=(640, 1280))


ADAPTERS = {
    # id: (variant, layer index, heads) -- SD1.5 attn2 has 8 heads, SDXL 64-d heads
    "sd15-4tok-320": ("ip-adapter_sd15.safetensors", 0, 8),
    "sd15-4tok-1280-mid": ("ip-adapter_sd15.safetensors", 15, 8),
    "sd15-plus-640": ("ip-adapter-plus_sd15.safetensors", 4, 8),
    "sdxl-4tok-640": (None, 0, 10),
    "sdxl-4tok-1280": (None, 1, 20),
}

_models: dict = {}


def adapter(variant: str | None) -> IPAdapterModel:
    if variant not in _models:
        source = variant if variant is not None else _sdxl_two_layers()
        weights = adapter_weights(source, seed=3, dtype=torch.float32)
        spec = None if variant is not None else source
        _models[variant] = IPAdapterModel.from_weights(weights, spec=spec).eval()
    return _models[variant]


IMAGES = 2


@functools.lru_cache(maxsize=None)
def image_tokens(variant: str | None) -> torch.Tensor:
    """[BATCH, IMAGES, T, D] tokens made by our projection from random image features (made
    once per adapter: the Plus projection over 257 CLIP tokens is the costly part)."""
    model = adapter(variant)
    spec = model.spec
    g = torch.Generator().manual_seed(5)
    if spec.encoder_output.value == "image_embeds":
        feats = torch.randn(BATCH * IMAGES, spec.feature_dim, generator=g)
    else:
        feats = torch.randn(BATCH * IMAGES, spec.clip_encoder.tokens, spec.feature_dim, generator=g)
    with torch.no_grad():
        tokens = model.project(feats)
    return tokens.reshape(BATCH, IMAGES, spec.tokens, spec.cross_attention_dim)


class _Layer:
    """A diffusers attn2 layer of width C with heads h, plus the matching adapter layer."""

    def __init__(self, key: str, seed: int = 0):
        variant, index, heads = ADAPTERS[key]
        self.variant = variant
        self.model = adapter(variant)
        self.index = index
        self.width = self.model.spec.layer_widths[index]
        self.cross = self.model.spec.cross_attention_dim
        self.heads = heads
        torch.manual_seed(seed)
        self.attn = Attention(
            query_dim=self.width, cross_attention_dim=self.cross, heads=heads, dim_head=self.width // heads
        ).eval()
        g = torch.Generator().manual_seed(seed + 1)
        self.tokens_hw = (8, 12)
        n = self.tokens_hw[0] * self.tokens_hw[1]
        self.x = torch.randn(BATCH, n, self.width, generator=g)
        self.text = torch.randn(BATCH, TEXT_TOKENS, self.cross, generator=g)

    def diffusers(self, tokens: list[torch.Tensor], scale, masks=None) -> torch.Tensor:
        """diffusers' processor, one adapter per entry of `tokens` ([B, n_img, T, D] each)."""
        proc = IPAdapterAttnProcessor2_0(
            self.width, self.cross, num_tokens=[t.shape[2] for t in tokens], scale=scale
        )
        layer = self.model.ip_layers[self.index]
        for i in range(len(tokens)):
            proc.to_k_ip[i].weight.data.copy_(layer.to_k_ip.weight)
            proc.to_v_ip[i].weight.data.copy_(layer.to_v_ip.weight)
        kwargs = {} if masks is None else {"ip_adapter_masks": masks}
        with torch.no_grad():
            return proc(self.attn, self.x, encoder_hidden_states=(self.text, tokens), **kwargs)

    def text_only(self) -> torch.Tensor:
        with torch.no_grad():
            return AttnProcessor2_0()(self.attn, self.x, encoder_hidden_states=self.text)

    def kv(self, tokens: torch.Tensor):
        """Our K/V for this layer from tokens [B, T, D] (`layer_kv` makes these for every layer
        at once; one layer is all this test needs)."""
        layer = self.model.ip_layers[self.index]
        with torch.no_grad():
            return layer.to_k_ip(tokens), layer.to_v_ip(tokens)

    def ours(self, branches: list[ImageBranch]) -> torch.Tensor:
        a = self.attn
        with torch.no_grad():
            q, k, v = a.to_q(self.x), a.to_k(self.text), a.to_v(self.text)
            out = decoupled_attention(q, k, v, self.heads, branches)
            return a.to_out[1](a.to_out[0](out))


@functools.lru_cache(maxsize=None)
def Layer(key: str) -> _Layer:  # noqa: N802 - read-only, shared by the tests
    return _Layer(key)


def _close(mine: torch.Tensor, reference: torch.Tensor) -> float:
    assert mine.shape == reference.shape
    diff = (mine - reference).abs().max().item()
    assert diff <= TOL, diff
    return diff


@pytest.mark.parametrize("key", list(ADAPTERS))
@pytest.mark.parametrize("scale", [0.0, 0.35, 1.0, 1.7])
def test_single_image(key, scale):
    layer = Layer(key)
    tokens = image_tokens(layer.variant)[:, :1]
    k, v = layer.kv(tokens[:, 0])
    mine = layer.ours([ImageBranch(k, v, scale)])
    reference = layer.diffusers([tokens], scale)
    if scale == 0:
        # exactly the text-only attention, in both implementations
        assert torch.equal(mine, layer.text_only())
        assert torch.equal(reference, layer.text_only())
        assert torch.equal(mine, reference)
    else:
        _close(mine, reference)
        assert (mine - layer.text_only()).abs().max() > 1e-3  # the image branch did something


@pytest.mark.parametrize("key", ["sd15-4tok-320", "sd15-plus-640", "sdxl-4tok-1280"])
def test_several_images_without_masks_share_one_softmax(key):
    layer = Layer(key)
    tokens = image_tokens(layer.variant)  # [B, 2, T, D]
    flat = tokens.reshape(BATCH, -1, layer.cross)  # all images' tokens side by side
    k, v = layer.kv(flat)
    mine = layer.ours([ImageBranch(k, v, 0.8)])
    _close(mine, layer.diffusers([tokens], 0.8))
    # not the same as a softmax per image
    per_image = layer.ours([ImageBranch(*layer.kv(tokens[:, i]), 0.8) for i in range(IMAGES)])
    assert (per_image - mine).abs().max() > 1e-3


def _region_masks(h: int, w: int) -> torch.Tensor:
    """[1, 2, h, w] binary masks: left third, and a lower-right block."""
    m = torch.zeros(1, 2, h, w)
    m[0, 0, :, : w // 3] = 1
    m[0, 1, h // 2 :, w // 2 :] = 1
    return m


def diffusers_style_mask(mask_hw: torch.Tensor, queries: int) -> torch.Tensor:
    """[1, N, 1]: diffusers' `IPAdapterMaskProcessor.downsample` rule, written out: aspect ratio
    from the mask, mask_h = int(sqrt(N / ratio)) (+1 if it does not divide N), bicubic, flatten,
    pad/crop to N."""
    h, w = mask_hw.shape[-2:]
    ratio = w / h
    mask_h = int(math.sqrt(queries / ratio))
    mask_h += int(queries % mask_h != 0)
    mask_w = queries // mask_h
    small = F.interpolate(mask_hw[None, None], size=(mask_h, mask_w), mode="bicubic")[0, 0].reshape(1, -1)
    if small.shape[1] < queries:
        small = F.pad(small, (0, queries - small.shape[1]))
    return small[:, :queries, None]


@pytest.mark.parametrize("key", ["sd15-4tok-320", "sd15-plus-640", "sdxl-4tok-640"])
@pytest.mark.parametrize("scales", [[0.7, 1.3], [1.0, 0.0]])
def test_masked_images_each_get_their_own_softmax(key, scales):
    layer = Layer(key)
    tokens = image_tokens(layer.variant)
    lat_h, lat_w = layer.tokens_hw
    masks = _region_masks(lat_h * 8, lat_w * 8)  # pixel-space masks of the same aspect
    n = lat_h * lat_w
    branches = []
    for i, scale in enumerate(scales):
        m = diffusers_style_mask(masks[0, i], n)
        # our resize rule is diffusers' (checked against its helper), so the comparison is fair
        theirs = IPAdapterMaskProcessor.downsample(masks[:, i], 1, n, 1)
        assert torch.equal(m, theirs)
        branches.append(ImageBranch(*layer.kv(tokens[:, i]), scale, mask=m))
    mine = layer.ours(branches)
    reference = layer.diffusers([tokens], [scales], masks=[masks])
    _close(mine, reference)
    # outside both masks only the text attention remains (the bicubic ring aside)
    outside = (branches[0].mask[0, :, 0] == 0) & (branches[1].mask[0, :, 0] == 0)
    assert outside.any()
    text = layer.text_only()
    assert torch.allclose(mine[:, outside], text[:, outside], atol=TOL)


def test_two_adapters_on_one_layer():
    """Two adapters (a 4-token and a Plus, same K/V shapes here): a branch each."""
    layer = Layer("sd15-4tok-320")
    plus = adapter("ip-adapter-plus_sd15.safetensors")
    t4 = image_tokens(layer.variant)[:, :1]
    t16 = image_tokens("ip-adapter-plus_sd15.safetensors")[:, 1:]
    k16, v16 = (f(t16[:, 0]) for f in (plus.ip_layers[0].to_k_ip, plus.ip_layers[0].to_v_ip))
    with torch.no_grad():
        mine = layer.ours([ImageBranch(*layer.kv(t4[:, 0]), 0.6), ImageBranch(k16, v16, 0.9)])
    proc = IPAdapterAttnProcessor2_0(layer.width, layer.cross, num_tokens=[4, 16], scale=[0.6, 0.9])
    for i, m in enumerate((layer.model, plus)):
        proc.to_k_ip[i].weight.data.copy_(m.ip_layers[0].to_k_ip.weight)
        proc.to_v_ip[i].weight.data.copy_(m.ip_layers[0].to_v_ip.weight)
    with torch.no_grad():
        reference = proc(layer.attn, layer.x, encoder_hidden_states=(layer.text, [t4, t16]))
    _close(mine, reference)


def test_per_sample_scale_tensor():
    """A [B, 1, 1] scale (e.g. cond/uncond weights) equals running each sample with its float."""
    layer = Layer("sd15-4tok-320")
    tokens = image_tokens(layer.variant)[:, :1]
    k, v = layer.kv(tokens[:, 0])
    scales = torch.tensor([0.25, 1.5]).view(BATCH, 1, 1)
    mine = layer.ours([ImageBranch(k, v, scales)])
    for b in range(BATCH):
        _close(mine[b], layer.ours([ImageBranch(k, v, float(scales[b]))])[b])


def test_layer_kv_gives_every_layer_in_checkpoint_order():
    model = adapter("ip-adapter_sd15.safetensors")
    tokens = image_tokens("ip-adapter_sd15.safetensors")[:, 0]
    with torch.no_grad():
        kvs = model.layer_kv(tokens)
    assert [kv.k.shape[-1] for kv in kvs] == list(model.spec.layer_widths)
    for i in (0, 15):
        layer = Layer(list(ADAPTERS)[0 if i == 0 else 1])
        assert layer.index == i
        k, v = layer.kv(tokens)
        assert torch.equal(kvs[i].k, k) and torch.equal(kvs[i].v, v)


def test_attention_broadcasts_batch_one_kv():
    """K/V computed once for one image serve a whole batch of latents."""
    g = torch.Generator().manual_seed(11)
    q = torch.randn(3, 20, 64, generator=g)
    k, v = torch.randn(1, 4, 64, generator=g), torch.randn(1, 4, 64, generator=g)
    out = attention(q, k, v, heads=4)
    assert torch.equal(out, attention(q, k.expand(3, -1, -1), v.expand(3, -1, -1), heads=4))
    reference = F.scaled_dot_product_attention(
        q.view(3, 20, 4, 16).transpose(1, 2),
        k.expand(3, -1, -1).reshape(3, 4, 4, 16).transpose(1, 2),
        v.expand(3, -1, -1).reshape(3, 4, 4, 16).transpose(1, 2),
    )
    assert torch.equal(out, reference.transpose(1, 2).reshape(3, 20, 64))
