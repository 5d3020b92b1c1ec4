"""FaceID presets found by content, the in-file LoRA key map, v1/v2 by name (host-free)."""

from __future__ import annotations

import dataclasses

import pytest

from ip_adapter_core import catalog
from ip_adapter_core.errors import UnknownLayoutError
from ip_adapter_core.faceid import (
    FaceIDPreset,
    check_lora,
    comfy_lora_targets,
    companion_lora_names,
    expects_lora,
    faceid_supported,
    rank_faceid,
    uses_raw_embedding,
    v2_from_name,
)
from ip_adapter_core.spec import BaseModel, ProjectionKind
from ip_adapter_core.testing.adapters import adapter_state

SD15, SDXL = BaseModel.SD15, BaseModel.SDXL
ALL = [(e.file_name, e.spec) for e in catalog.PUBLISHED]


@pytest.mark.parametrize(
    "preset, base, first",
    [
        (FaceIDPreset.FACEID, SD15, "ip-adapter-faceid_sd15.bin"),
        (FaceIDPreset.FACEID, SDXL, "ip-adapter-faceid_sdxl.bin"),
        (FaceIDPreset.PLUS_V2, SD15, "ip-adapter-faceid-plusv2_sd15.bin"),
        (FaceIDPreset.PLUS_V2, SDXL, "ip-adapter-faceid-plusv2_sdxl.bin"),
        (FaceIDPreset.PLUS_V1, SD15, "ip-adapter-faceid-plus_sd15.bin"),
        (FaceIDPreset.PORTRAIT, SD15, "ip-adapter-faceid-portrait-v11_sd15.bin"),
        (FaceIDPreset.PORTRAIT, SDXL, "ip-adapter-faceid-portrait_sdxl.bin"),
        (FaceIDPreset.PORTRAIT_UNNORM, SDXL, "ip-adapter-faceid-portrait_sdxl_unnorm.bin"),
    ],
)
def test_every_preset_finds_its_published_file(preset, base, first):
    ranked = rank_faceid(preset, base, ALL)
    assert ranked[0] == first
    kinds = {dict(ALL)[n].kind for n in ranked}
    assert len(kinds) == 1  # content decides; nothing of another kind slips in


def test_content_not_name_decides():
    plus = catalog.published("ip-adapter-faceid-plusv2_sd15.bin").spec
    portrait = catalog.published("ip-adapter-faceid-portrait_sd15.bin").spec
    renamed = [("my face model.bin", plus), ("faceid_sd15_portrait_renamed.bin", portrait)]
    assert rank_faceid(FaceIDPreset.PLUS_V2, SD15, renamed) == ["my face model.bin"]
    assert rank_faceid(FaceIDPreset.PORTRAIT, SD15, renamed) == ["faceid_sd15_portrait_renamed.bin"]
    assert rank_faceid(FaceIDPreset.FACEID, SD15, renamed) == []
    # v1 and v2 have the same tensors: either is usable, the name only orders them
    assert rank_faceid(FaceIDPreset.PLUS_V1, SD15, [("a-plusv2.bin", plus), ("b-plus.bin", plus)]) == ["b-plus.bin", "a-plusv2.bin"]


def test_base_limits():
    assert not faceid_supported(FaceIDPreset.PLUS_V1, SDXL)
    assert not faceid_supported(FaceIDPreset.PORTRAIT_UNNORM, SD15)
    assert rank_faceid(FaceIDPreset.FACEID, BaseModel.KOLORS, ALL) == []


def test_variant_flags():
    spec = {n: s for n, s in ALL}
    assert uses_raw_embedding(spec["ip-adapter-faceid-portrait_sdxl_unnorm.bin"])
    assert not uses_raw_embedding(spec["ip-adapter-faceid-portrait_sdxl.bin"])
    assert expects_lora(spec["ip-adapter-faceid_sd15.bin"]) and expects_lora(spec["ip-adapter-faceid-plus_sd15.bin"])
    assert not expects_lora(spec["ip-adapter-faceid-portrait_sd15.bin"])


def test_v2_from_name():
    assert v2_from_name("ip-adapter-faceid-plusv2_sd15.bin") is True
    assert v2_from_name("sub/IP-Adapter-FaceID-PlusV2_SDXL.bin") is True
    assert v2_from_name("ip-adapter-faceid-plus_sd15.bin") is False
    assert v2_from_name("face.bin") is None
    assert companion_lora_names("ip-adapter-faceid-plusv2_sd15.bin")[0] == "ip-adapter-faceid-plusv2_sd15_lora.safetensors"


def test_lora_targets_cover_both_attentions_of_every_layer():
    paths = [f"input_blocks.{i}.1.transformer_blocks.0" for i in range(3)]
    t = comfy_lora_targets(paths)
    assert len(t) == 3 * 2 * 4
    assert t["0.to_q"] == "diffusion_model.input_blocks.0.1.transformer_blocks.0.attn1.to_q.weight"
    assert t["1.to_k"] == "diffusion_model.input_blocks.0.1.transformer_blocks.0.attn2.to_k.weight"
    assert t["5.to_out"] == "diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_out.0.weight"
    assert t["4.to_v"] == "diffusion_model.input_blocks.2.1.transformer_blocks.0.attn1.to_v.weight"


@pytest.mark.parametrize("name", ["ip-adapter-faceid_sd15.bin", "ip-adapter-faceid-plusv2_sd15.bin", "ip-adapter-faceid_sdxl.bin"])
def test_published_lora_layout_passes_the_check(name):
    spec = catalog.published(name).spec
    state = adapter_state(name, device="meta")
    lora = {k[len("ip_adapter."):]: v for k, v in state.items() if "_lora." in k}
    assert check_lora(lora, spec, name) == 2 * spec.layers * 4


def test_broken_lora_is_refused():
    name = "ip-adapter-faceid_sd15.bin"
    spec = catalog.published(name).spec
    state = adapter_state(name, device="meta")
    lora = {k[len("ip_adapter."):]: v for k, v in state.items() if "_lora." in k}
    del lora["7.to_v_lora.up.weight"]
    with pytest.raises(UnknownLayoutError, match="missing"):
        check_lora(lora, spec, name)
    lora = {k[len("ip_adapter."):]: v for k, v in state.items() if "_lora." in k}
    lora["1.to_k_lora.down.weight"] = lora["0.to_k_lora.down.weight"]  # attn1 width, not the 768-d context
    with pytest.raises(UnknownLayoutError, match="1.to_k"):
        check_lora(lora, spec, name)


def test_kind_of_every_faceid_entry():
    kinds = {e.file_name: e.spec.kind for e in catalog.PUBLISHED if e.spec.needs_face}
    assert set(kinds.values()) == {ProjectionKind.FACEID_MLP, ProjectionKind.FACEID_PLUS, ProjectionKind.PORTRAIT, ProjectionKind.PORTRAIT_UNNORM}
    assert dataclasses.is_dataclass(catalog.published("ip-adapter-faceid_sd15.bin").spec)
