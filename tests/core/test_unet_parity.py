"""A whole (tiny) UNet: diffusers' own IP-Adapter loading and forward vs the same UNet run
with our core (IPAdapterModel for tokens and K/V, `decoupled_attention` in every attn2).

The adapter is written in the published format (`{2i+1}.to_k_ip.weight` in diffusers'
`attn_processors` order, nested `.bin`), read back with our loader on one side and handed to
`UNet2DConditionModel._load_ip_adapter_weights` on the other.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

from ip_adapter_core import (
    AdapterSpec,
    BaseModel,
    EncoderOutput,
    ImageBranch,
    ImageEncoder,
    IPAdapterModel,
    ProjectionKind,
    decoupled_attention,
    describe,
    layouts,
)
from ip_adapter_core.checkpoint import load_adapter_weights
from ip_adapter_core.errors import UnknownLayoutError
from ip_adapter_core.spec import ResamplerSpec
from ip_adapter_core.testing import adapter_state, write_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
CROSS = 32
BATCH = 2


def tiny_unet() -> UNet2DConditionModel:
    """SD-like: three levels (two with cross-attention, one of them 2 transformer blocks deep,
    like SDXL), a cross-attention mid block, 10 attn2 layers of widths 32 and 64."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2, 1),
        attention_head_dim=(2, 4, 4),  # diffusers' legacy name: the number of heads
        cross_attention_dim=CROSS,
        norm_num_groups=8,
    )
    return unet.eval()


def attn2_names(unet) -> list[str]:
    return [n for n in unet.attn_processors if n.endswith("attn2.processor")]


def attn2_widths(unet) -> tuple[int, ...]:
    modules = dict(unet.named_modules())
    return tuple(modules[n.removesuffix(".processor")].to_q.out_features for n in attn2_names(unet))


def linear_spec(widths) -> AdapterSpec:
    return AdapterSpec(
        BaseModel.SD15, ProjectionKind.LINEAR, 4, CROSS, widths, ImageEncoder.VIT_H,
        EncoderOutput.IMAGE_EMBEDS, feature_dim=24,
    )


def resampler_spec(widths) -> AdapterSpec:
    # diffusers always builds depth 4 and 64-d heads; inner (2 x 64) differs from dim on purpose
    res = ResamplerSpec(dim=64, depth=4, heads=2, dim_head=64, queries=8, in_dim=48, out_dim=CROSS)
    return AdapterSpec(
        BaseModel.SD15, ProjectionKind.RESAMPLER, 8, CROSS, widths, ImageEncoder.VIT_H,
        EncoderOutput.PENULTIMATE, feature_dim=48, resampler=res,
    )


class CoreAttn2:
    """attn2 processor that computes the layer with our core. `branches(index)` gives the
    image branches of checkpoint layer `index` for the current forward."""

    def __init__(self, index: int, branches):
        self.index, self.branches = index, branches

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert attention_mask is None and attn.spatial_norm is None and attn.group_norm is None
        assert not attn.norm_cross and hidden_states.ndim == 3
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        out = decoupled_attention(q, k, v, attn.heads, self.branches(self.index))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class Fixture:
    def __init__(self, tmp_path):
        self.base = tiny_unet()
        widths = attn2_widths(self.base)
        self.specs = {"linear": linear_spec(widths), "plus": resampler_spec(widths)}
        self.files = {
            kind: write_adapter(
                tmp_path, f"tiny-{kind}.bin", seed=11 + i, dtype=torch.float32, spec=spec, weight_std=0.1
            )
            for i, (kind, spec) in enumerate(self.specs.items())
        }
        g = torch.Generator().manual_seed(1)
        self.sample = torch.randn(BATCH, 4, 16, 16, generator=g)
        self.text = torch.randn(BATCH, 7, CROSS, generator=g)
        self.features = {
            "linear": torch.randn(BATCH, 24, generator=g),
            "plus": torch.randn(BATCH, 257, 48, generator=g),
        }
        self.t = torch.tensor(500)

    def plain(self) -> torch.Tensor:
        with torch.no_grad():
            return self.base(self.sample, self.t, self.text).sample

    def diffusers(self, kinds: list[str], scales: list[float]) -> torch.Tensor:
        unet = copy.deepcopy(self.base)
        state_dicts = [torch.load(self.files[k], map_location="cpu", weights_only=True) for k in kinds]
        unet._load_ip_adapter_weights(state_dicts, low_cpu_mem_usage=False)
        procs = [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
        assert len(procs) == len(attn2_names(self.base))
        for p in procs:
            p.scale = list(scales)
        embeds = [self.features[k][:, None] for k in kinds]  # [batch, images=1, ...]
        with torch.no_grad():
            return unet(self.sample, self.t, self.text, added_cond_kwargs={"image_embeds": embeds}).sample

    def ours(self, kinds: list[str], scales: list[float]) -> torch.Tensor:
        per_adapter = []
        for kind, scale in zip(kinds, scales):
            weights = load_adapter_weights(self.files[kind])
            model = IPAdapterModel.from_weights(weights, spec=self.specs[kind])
            with torch.no_grad():
                kv = model.layer_kv(model.project(self.features[kind]))
            per_adapter.append((kv, scale))

        def branches(index: int):
            return [ImageBranch(kv[index].k, kv[index].v, scale) for kv, scale in per_adapter]

        unet = copy.deepcopy(self.base)
        names = attn2_names(unet)
        unet.set_attn_processor(
            {n: CoreAttn2(names.index(n), branches) if n in names else AttnProcessor2_0() for n in unet.attn_processors}
        )
        with torch.no_grad():
            return unet(self.sample, self.t, self.text).sample


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return Fixture(tmp_path_factory.mktemp("tiny-unet"))


def test_tiny_unet_has_the_intended_topology(setup):
    assert attn2_widths(setup.base) == (32, 64, 64, 64, 64, 64, 64, 32, 32, 64)
    # published-format keys: 1, 3, ..., 19, one K and one V per attn2 layer
    state = adapter_state(setup.specs["linear"], device="meta")
    k_keys = [k for k in state if k.endswith("to_k_ip.weight")]
    assert k_keys == [f"ip_adapter.{2 * i + 1}.to_k_ip.weight" for i in range(10)]
    # not a published UNet, so describe() refuses it and the spec must be given explicitly
    with pytest.raises(UnknownLayoutError):
        describe(load_adapter_weights(setup.files["linear"]))


@pytest.mark.parametrize(
    "kinds, scales",
    [
        (["linear"], [1.0]),
        (["plus"], [0.8]),
        (["linear", "plus"], [0.6, 1.2]),
    ],
    ids=["linear", "resampler", "both"],
)
def test_noise_prediction_matches_diffusers(setup, kinds, scales):
    reference = setup.diffusers(kinds, scales)
    mine = setup.ours(kinds, scales)
    diff = (mine - reference).abs().max().item()
    assert diff <= TOL, diff
    # and the adapter changed the prediction well beyond that tolerance
    assert (mine - setup.plain()).abs().max().item() > 1000 * TOL


@pytest.mark.parametrize("kinds", [["linear"], ["linear", "plus"]], ids=["linear", "both"])
def test_scale_zero_is_exactly_the_plain_unet(setup, kinds):
    plain = setup.plain()
    zeros = [0.0] * len(kinds)
    assert torch.equal(setup.diffusers(kinds, zeros), plain)
    assert torch.equal(setup.ours(kinds, zeros), plain)


# --- the layer tables follow diffusers' processor order for the real UNets ----------------

SD15_CONFIG = dict(cross_attention_dim=768, sample_size=64)
SDXL_CONFIG = dict(
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


@pytest.mark.parametrize(
    "config, table, cross",
    [(SD15_CONFIG, layouts.sd15_layers, 768), (SDXL_CONFIG, layouts.sdxl_layers, 2048)],
    ids=["sd15", "sdxl"],
)
def test_layer_tables_follow_diffusers_processor_order(config, table, cross):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    names = [n.removesuffix(".processor") for n in attn2_names(unet)]
    layers = table()
    assert [layer.diffusers_name for layer in layers] == names
    assert tuple(layer.hidden for layer in layers) == attn2_widths(unet)
    assert [layer.ckpt_key for layer in layers] == list(range(1, 2 * len(layers), 2))
    modules = dict(unet.named_modules())
    for layer in layers:
        attn = modules[layer.diffusers_name]
        assert attn.to_k.in_features == cross
        # SD1.5: 8 heads everywhere; SDXL: 64-d heads
        assert attn.heads == (8 if cross == 768 else layer.hidden // 64)


def test_diffusers_loads_our_sd15_layout_into_the_right_processors():
    """diffusers' own conversion puts checkpoint key 2i+1 into the processor our table names."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_CONFIG)
    state = adapter_state("ip-adapter_sd15.safetensors", seed=2, dtype=torch.float32)
    kv = {k.removeprefix("ip_adapter."): v for k, v in state.items() if k.startswith("ip_adapter.")}
    ckpt = {"image_proj": {"proj.weight": state["image_proj.proj.weight"]}, "ip_adapter": kv}
    procs = unet._convert_ip_adapter_attn_to_diffusers([ckpt], low_cpu_mem_usage=False)
    for layer in layouts.sd15_layers():
        proc = procs[layer.diffusers_name + ".processor"]
        assert proc.num_tokens == [4]
        assert torch.equal(proc.to_k_ip[0].weight, kv[f"{layer.ckpt_key}.to_k_ip.weight"])
        assert torch.equal(proc.to_v_ip[0].weight, kv[f"{layer.ckpt_key}.to_v_ip.weight"])
