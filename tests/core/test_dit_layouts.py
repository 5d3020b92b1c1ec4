"""Flux / SD3.5 adapter formats: published key tables (real shapes, meta device), recognition
of every naming, errors, encoder detection, presets. Host-free."""

from __future__ import annotations

import pytest
import torch

from ip_adapter_core.checkpoint import describe_foreign_state
from ip_adapter_core.dit import catalog, layouts
from ip_adapter_core.dit.detect import describe_dit, encoder_of, is_dit_state, siglip_head_prefix
from ip_adapter_core.dit.presets import rank_dit
from ip_adapter_core.dit.spec import DitBase, DitEncoder, DitEncoderOutput, DitKind, NotAUNetAdapterError
from ip_adapter_core.dit.synthetic import nested, synthetic_state
from ip_adapter_core.errors import IPAdapterError, NotAnAdapterError, UnknownLayoutError
from ip_adapter_core.presets import Preset


def meta(table: dict) -> dict:
    return {k: torch.empty(shape, dtype=torch.float16, device="meta") for k, shape in table.items()}


# Rows of the reference's key tables (docs: dit-ipadapters.md §1), written out independently.
XLABS_ROWS = {
    "ip_adapter_proj_model.norm.weight": (4096,),
    "ip_adapter_proj_model.norm.bias": (4096,),
    "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight": (3072, 4096),
    "double_blocks.0.processor.ip_adapter_double_stream_k_proj.bias": (3072,),
    "double_blocks.18.processor.ip_adapter_double_stream_v_proj.weight": (3072, 4096),
    "double_blocks.18.processor.ip_adapter_double_stream_v_proj.bias": (3072,),
}
INSTANTX_ROWS = {
    "image_proj.proj.0.weight": (2304, 1152),
    "image_proj.proj.0.bias": (2304,),
    "image_proj.proj.2.weight": (524288, 2304),
    "image_proj.proj.2.bias": (524288,),
    "image_proj.norm.weight": (4096,),
    "image_proj.norm.bias": (4096,),
    "ip_adapter.0.to_k_ip.weight": (3072, 4096),
    "ip_adapter.56.to_v_ip.weight": (3072, 4096),
}
SD35_ROWS = {
    "image_proj.latents": (1, 64, 1280),
    "image_proj.proj_in.weight": (1280, 1152),
    "image_proj.proj_in.bias": (1280,),
    "image_proj.proj_out.weight": (2432, 1280),
    "image_proj.norm_out.bias": (2432,),
    "image_proj.time_embedding.linear_1.weight": (1280, 320),
    "image_proj.time_embedding.linear_2.weight": (1280, 1280),
    "image_proj.layers.3.0.norm1.weight": (1280,),
    "image_proj.layers.3.0.norm2.bias": (1280,),
    "image_proj.layers.0.0.to_q.weight": (1280, 1280),
    "image_proj.layers.0.0.to_kv.weight": (2560, 1280),
    "image_proj.layers.0.0.to_out.weight": (1280, 1280),
    "image_proj.layers.2.1.0.weight": (1280,),
    "image_proj.layers.2.1.1.weight": (5120, 1280),
    "image_proj.layers.2.1.3.weight": (1280, 5120),
    "image_proj.layers.1.2.1.weight": (5120, 1280),
    "image_proj.layers.1.2.1.bias": (5120,),
    "ip_adapter.0.norm_ip.linear.weight": (4864, 1280),
    "ip_adapter.37.norm_ip.linear.bias": (4864,),
    "ip_adapter.37.to_k_ip.weight": (2432, 2432),
    "ip_adapter.0.to_v_ip.weight": (2432, 2432),
    "ip_adapter.12.norm_q.weight": (64,),
    "ip_adapter.12.norm_k.weight": (64,),
    "ip_adapter.12.norm_ip_k.weight": (64,),
}
# (entry, tensor count, parameters, listed size in bytes)
SIZES = [
    (catalog.XLABS_V1, 80, 490_874_880, 982e6),
    (catalog.XLABS_V2, 80, 528_672_768, 1.06e9),
    (catalog.INSTANTX_FLUX, 120, 2_645_600_512, 5.29e9),
    (catalog.INSTANTX_SD35, 329, 797_925_888, 1.6e9),
]


@pytest.mark.parametrize("entry,count,params,listed", SIZES, ids=lambda v: getattr(v, "repo", None))
def test_published_tables_have_the_reference_counts_and_sizes(entry, count, params, listed):
    table = entry.layout()
    assert len(table) == count
    assert layouts.parameter_count(entry.spec) == params == entry.parameters
    assert abs(params * 2 - listed) / listed < 0.01  # 2-byte dtypes; the listings round


def test_published_tables_match_the_reference_rows():
    v1, v2 = catalog.XLABS_V1.layout(), catalog.XLABS_V2.layout()
    for table in (v1, v2):
        for key, shape in XLABS_ROWS.items():
            assert table[key] == shape, key
        assert not any(k.startswith("single_blocks.") for k in table)
    assert v1["ip_adapter_proj_model.proj.weight"] == (16384, 768) and v1["ip_adapter_proj_model.proj.bias"] == (16384,)
    assert v2["ip_adapter_proj_model.proj.weight"] == (65536, 768) and v2["ip_adapter_proj_model.proj.bias"] == (65536,)
    table = catalog.INSTANTX_FLUX.layout()
    for key, shape in INSTANTX_ROWS.items():
        assert table[key] == shape, key
    assert not any(k.endswith("_ip.bias") for k in table)  # InstantX K/V have no bias
    assert sum(k.startswith("ip_adapter.") for k in table) == 57 * 2
    table = catalog.INSTANTX_SD35.layout()
    for key, shape in SD35_ROWS.items():
        assert table[key] == shape, key
    assert sum(k.startswith("image_proj.") for k in table) == 63
    assert sum(k.startswith("ip_adapter.") for k in table) == 7 * 38


@pytest.mark.parametrize("entry", catalog.PUBLISHED_DIT, ids=lambda e: e.repo)
def test_published_layouts_are_recognised_on_the_meta_device(entry):
    spec = describe_dit(meta(entry.layout()), entry.file_name)
    assert spec == entry.spec
    assert catalog.published_for(spec) is entry
    data = spec.to_json()
    expected = {
        catalog.XLABS_V1: ("flux", 4, "clip-vit-l-14", "image_embeds", "xlabs-flux", 19),
        catalog.XLABS_V2: ("flux", 16, "clip-vit-l-14", "image_embeds", "xlabs-flux", 19),
        catalog.INSTANTX_FLUX: ("flux", 128, "siglip-so400m-14-384", "pooler_output", "instantx-flux", 57),
        catalog.INSTANTX_SD35: ("sd3.5", 64, "siglip-so400m-14-384", "penultimate_hidden_states", "instantx-sd3.5", 38),
    }[entry]
    got = (data["base"], data["tokens"], data["image_encoder"], data["encoder_output"], data["kind"], data["blocks"])
    assert got == expected
    assert data["lora"] is False and data["lora_rank"] == 0
    assert data["timestep_dependent"] is (entry is catalog.INSTANTX_SD35)


def test_instantx_flux_splits_19_double_and_38_single_blocks():
    spec = catalog.INSTANTX_FLUX.spec
    assert (spec.double_blocks, spec.single_blocks) == (19, 38)
    assert catalog.INSTANTX_SD35.spec.head_dim == 64 and catalog.INSTANTX_SD35.spec.resampler.depth == 4


def test_nested_flat_and_diffusers_named_files_describe_the_same():
    for entry in (catalog.INSTANTX_FLUX, catalog.INSTANTX_SD35):
        flat = meta(entry.layout())
        assert describe_dit(nested(flat)) == describe_dit(flat) == entry.spec
    # an SD3.5 file saved from a diffusers pipeline (refs/pr/10 'ip-adapter_diffusers.*') uses diffusers' names
    renames = {".0.norm1.": ".ln0.", ".0.norm2.": ".ln1.", ".0.to_q.": ".attn.to_q.", ".0.to_kv.": ".attn.to_kv.",
               ".0.to_out.": ".attn.to_out.0.", ".1.0.": ".adaln_norm.", ".1.1.": ".ff.net.0.proj.", ".1.3.": ".ff.net.2.",
               ".2.1.": ".adaln_proj."}
    diffusers_named = {}
    for key, value in meta(catalog.INSTANTX_SD35.layout()).items():
        if key.startswith("image_proj.layers."):
            _, _, i, rest = key.split(".", 3)  # image_proj . layers . i . rest
            for old, new in renames.items():
                if ("." + rest).startswith(old):
                    key = f"image_proj.layers.{i}{new}{rest[len(old) - 1:]}"
                    break
        diffusers_named[key] = value
    assert any(".adaln_proj." in k for k in diffusers_named)
    assert describe_dit(diffusers_named) == catalog.INSTANTX_SD35.spec


def test_recognition_rejects_damaged_files_and_other_models():
    table = meta(catalog.XLABS_V2.layout())
    broken = {k: v for k, v in table.items() if not k.startswith("double_blocks.7.")}
    with pytest.raises(UnknownLayoutError, match="blocks \\[7\\]"):
        describe_dit(broken, "xlabs.safetensors")
    wrong = dict(table)
    wrong["ip_adapter_proj_model.norm.weight"] = torch.empty(3072, device="meta")
    with pytest.raises(UnknownLayoutError, match="do not belong together|multiple"):
        describe_dit(wrong)
    sd35 = meta(catalog.INSTANTX_SD35.layout())
    del sd35["ip_adapter.5.norm_ip_k.weight"]
    with pytest.raises(UnknownLayoutError, match="norm_ip_k"):
        describe_dit(sd35)
    flux_model = meta({"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "img_in.weight": (3072, 64)})
    assert not is_dit_state(flux_model)
    with pytest.raises(NotAnAdapterError):
        describe_dit(flux_model, "flux1-dev.safetensors")


def test_unet_adapter_layouts_are_not_taken_for_dit_adapters():
    from ip_adapter_core.catalog import PUBLISHED, state_layout

    for entry in PUBLISHED:
        assert not is_dit_state(meta(state_layout(entry.spec))), entry.file_name


def test_foreign_state_hint_names_xlabs_files():
    assert "XLabs" in describe_foreign_state(meta(catalog.XLABS_V1.layout()))
    assert describe_foreign_state(meta({"double_blocks.0.img_attn.qkv.weight": (9216, 3072)})) == "it looks like a Flux model"


def test_dit_spec_refuses_unet_only_questions_with_a_pack_error():
    spec = catalog.XLABS_V2.spec
    assert not hasattr(spec, "layer_widths")  # hasattr stays False ...
    with pytest.raises(IPAdapterError, match="IPAdapter Apply \\(Flux / SD3.5\\)"):
        spec.needs_face  # noqa: B018  ... and UNet code gets a message naming the right node


def _encoder_layout(hidden, layers, positions, cls, projection=None, head=False):
    table = {
        "vision_model.embeddings.position_embedding.weight": (positions, hidden),
        "vision_model.post_layernorm.weight": (hidden,),
    }
    for i in range(layers):
        table[f"vision_model.encoder.layers.{i}.layer_norm1.weight"] = (hidden,)
    if cls:
        table["vision_model.embeddings.class_embedding"] = (hidden,)
    if projection:
        table["visual_projection.weight"] = (projection, hidden)
    if head:
        table["vision_model.head.probe"] = (1, 1, hidden)
        table["vision_model.head.attention.in_proj_weight"] = (3 * hidden, hidden)
    return meta(table)


def test_image_encoders_are_recognised_by_shape():
    clip_l = _encoder_layout(1024, 24, 257, True, 768)
    siglip = _encoder_layout(1152, 27, 729, False, head=True)
    assert encoder_of(clip_l) is DitEncoder.CLIP_L
    assert encoder_of(siglip) is DitEncoder.SIGLIP
    assert siglip_head_prefix(siglip) == "vision_model.head." and siglip_head_prefix(clip_l) is None
    assert encoder_of(_encoder_layout(1024, 24, 577, True, 768)) is None  # ViT-L/336 (Kolors)
    assert encoder_of(_encoder_layout(1280, 32, 257, True, 1024)) is None  # ViT-H


def test_dit_presets_rank_installed_files_by_content():
    small = layouts.xlabs_spec(16, 32, 64, 48, 2)
    files = [
        ("b.safetensors", catalog.XLABS_V2.spec),
        ("a.safetensors", small),
        ("v1.safetensors", catalog.XLABS_V1.spec),
        ("x.bin", catalog.INSTANTX_FLUX.spec),
        ("s.bin", catalog.INSTANTX_SD35.spec),
    ]
    assert rank_dit(Preset.FLUX_XLABS_V2, DitBase.FLUX, files) == ["b.safetensors", "a.safetensors"]
    assert rank_dit(Preset.FLUX_XLABS_V1, DitBase.FLUX, files) == ["v1.safetensors"]
    assert rank_dit(Preset.FLUX_INSTANTX, DitBase.FLUX, files) == ["x.bin"]
    assert rank_dit(Preset.SD35_INSTANTX, DitBase.SD35, files) == ["s.bin"]
    assert rank_dit(Preset.SD35_INSTANTX, DitBase.FLUX, files) == []
    assert rank_dit(Preset.PLUS, DitBase.FLUX, files) == []
    from ip_adapter_core.presets import rank, suggested_file, supported
    from ip_adapter_core.spec import BaseModel

    assert not supported(Preset.FLUX_INSTANTX, BaseModel.SDXL)
    assert rank(Preset.FLUX_INSTANTX, BaseModel.SDXL, []) == [] and suggested_file(Preset.FLUX_INSTANTX, BaseModel.SDXL) is None


def test_synthetic_files_round_trip(tmp_path):
    from ip_adapter_core.checkpoint import read_layout, read_tensors
    from ip_adapter_core.dit.synthetic import write_dit_adapter

    for spec, name in ((layouts.xlabs_spec(4, 32, 64, 48, 2), "ip_adapter.safetensors"),
                       (layouts.instantx_flux_spec(8, 32, 40, 64, 48, 5), "ip-adapter.bin")):
        path = write_dit_adapter(tmp_path / name, spec)
        state, _ = read_tensors(path)
        assert describe_dit(state) == describe_dit(read_layout(path)) == spec
        assert spec.encoder_output in (DitEncoderOutput.IMAGE_EMBEDS, DitEncoderOutput.POOLED)
    assert synthetic_state(spec, device="meta")["image_proj.proj.2.weight"].device.type == "meta"
    assert DitKind.INSTANTX_FLUX is spec.kind
    assert issubclass(NotAUNetAdapterError, AttributeError)


@pytest.mark.parametrize("entry", catalog.PUBLISHED_DIT, ids=lambda e: e.repo)
def test_adapter_modules_take_the_published_tables_strictly(entry):
    """The modules load every published tensor (real shapes, meta device, strict)."""
    from ip_adapter_core.dit.layouts import to_canonical
    from ip_adapter_core.dit.projection import DitAdapterModel

    state = meta(entry.layout())
    proj, kv, naming = to_canonical(state)
    assert naming == ("xlabs" if entry.spec.kind is DitKind.XLABS else "flat")
    model = DitAdapterModel.from_state(proj, kv, entry.spec)
    assert sum(p.numel() for p in model.parameters()) == entry.parameters
    assert model.placement()[0].type == "meta"


@pytest.mark.parametrize("entry", [catalog.XLABS_V1, catalog.INSTANTX_FLUX, catalog.INSTANTX_SD35], ids=lambda e: e.repo)
def test_every_dropped_or_reshaped_tensor_is_a_checkpoint_error(entry):
    """Damaged files raise the pack's checkpoint errors only (never IndexError & co.)."""
    from ip_adapter_core.errors import CheckpointError

    table = entry.layout()
    keys = list(table)[:: max(1, len(table) // 40)] + [k for k in table if ".0." in k or "proj" in k][:20]
    for key in keys:
        dropped = {k: v for k, v in table.items() if k != key}
        for variant in (dropped, {**table, key: (7,)}, {**table, key: (0,)}, {**table, key: tuple(table[key]) + (1,)}):
            with pytest.raises(CheckpointError):
                describe_dit(meta(variant), entry.file_name)
