"""The synthetic CLIP vision writer reproduces the published encoder layouts and byte sizes.

Sources of truth: tests/data/keys/clip_vision_*.tsv (every key and shape of the published
files, without the int64 `position_ids` buffer the h94 files also carry) and the published byte
sizes in reference checkpoint-formats.md 1.2. Sizes are computed from the header, never by
writing multi-GB files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from ip_adapter_core.testing import clip_vision as cv
from ip_adapter_core.testing.safetensors_writer import (
    TensorSpec,
    safetensors_file_size,
    safetensors_header,
    state_dict,
    write_safetensors,
)

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
REAL = {"vit-h": cv.VIT_H, "vit-bigg": cv.VIT_BIGG, "vit-l-336": cv.VIT_L_336}


def tsv_rows(name: str) -> list[tuple[str, tuple[int, ...]]]:
    lines = (KEYS / f"clip_vision_{name}.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:2] == ["key", "shape"]
    return [(k, tuple(json.loads(s))) for k, s, *_ in (line.split("\t") for line in lines[1:])]


@pytest.mark.parametrize("name", sorted(REAL))
def test_key_table_matches_published(name):
    rows = tsv_rows(name)
    assert "vision_model.embeddings.position_ids" not in dict(rows)  # the tables list parameters only
    assert cv.key_shapes(REAL[name]) == rows  # every key and shape, in the file's order


@pytest.mark.parametrize("name", sorted(REAL))
def test_position_ids_buffer_is_extra(name):
    cfg = REAL[name]
    with_ids = dict(cv.key_shapes(cfg, position_ids=True))
    assert with_ids.pop("vision_model.embeddings.position_ids") == (1, cfg.tokens)
    assert with_ids == dict(tsv_rows(name))
    spec = next(s for s in cv.tensor_specs(cfg, position_ids=True) if s.name.endswith("position_ids"))
    assert spec.dtype == torch.int64 and spec.init == "arange"


@pytest.mark.parametrize(
    "cfg, params, keys",
    [(cv.VIT_H, 632_076_800, 520), (cv.VIT_BIGG, 1_844_907_264, 776), (cv.VIT_L_336, 304_293_888, 392)],
    ids=["vit-h", "vit-bigg", "vit-l-336"],
)
def test_parameter_counts(cfg, params, keys):
    assert cv.parameter_count(cfg) == params
    assert len(cv.key_shapes(cfg)) == keys


@pytest.mark.parametrize(
    "cfg, size",
    [(cv.VIT_H, 2_528_373_448), (cv.VIT_BIGG, 3_689_912_664)],
    ids=["vit-h-fp32", "vit-bigg-fp16"],
)
def test_published_byte_size(cfg, size):
    """h94's encoders: ViT-H fp32, bigG fp16, both with int64 position_ids and {"format": "pt"}."""
    assert cfg.published_bytes == size
    assert cv.published_file_size(cfg) == size
    # Both facts matter: without the buffer or the metadata the size is off.
    assert (
        safetensors_file_size(cv.tensor_specs(cfg, cfg.published_dtype, position_ids=False), {"format": "pt"}) != size
    )
    assert safetensors_file_size(cv.tensor_specs(cfg, cfg.published_dtype, position_ids=True)) != size


def test_vit_h_fp16_size_without_buffer():
    """checkpoint-formats.md 4: a real-shaped random ViT-H written in fp16 is 1,264,217,216 B."""
    assert safetensors_file_size(cv.tensor_specs(cv.VIT_H, torch.float16, position_ids=False)) == 1_264_217_216


@pytest.mark.parametrize("name", sorted(REAL))
def test_hf_model_has_the_same_layout(name):
    """transformers' CLIPVisionModelWithProjection, built on the meta device from hf_config."""
    from transformers import CLIPVisionModelWithProjection

    cfg = REAL[name]
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(cv.hf_config(cfg))
    assert sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()) == sorted(cv.key_shapes(cfg))


def test_header_identical_to_reference_writer(tmp_path):
    """Our streaming writer lays a file out byte for byte as safetensors.torch.save does."""
    cfg = cv.TINY
    specs = cv.tensor_specs(cfg, torch.float16, position_ids=True)
    path = cv.write_clip_vision(tmp_path, cfg, seed=3, position_ids=True)
    assert path.name == cfg.file_name
    reference = safetensors.torch.save(state_dict(specs, seed=3), metadata={"format": "pt"})
    assert path.read_bytes() == reference
    assert path.stat().st_size == safetensors_file_size(specs, {"format": "pt"})


def test_chunked_writing_is_independent_of_chunk_size(tmp_path):
    specs = [
        TensorSpec("a", (1000, 7)),
        TensorSpec("b", (3,), torch.float32, "ones"),
        TensorSpec("c", (2, 5), torch.int64, "arange"),
    ]
    one = write_safetensors(tmp_path / "one.safetensors", specs, seed=1, chunk_elements=64)
    two = write_safetensors(tmp_path / "two.safetensors", specs, seed=1)
    assert one.read_bytes() == two.read_bytes()
    with safe_open(str(one), "pt") as f:
        assert f.get_tensor("c").tolist() == [[0, 1, 2, 3, 4]] * 2
        assert f.get_tensor("b").tolist() == [1.0, 1.0, 1.0]
    assert len(safetensors_header(specs)) % 8 == 0


def test_values_are_seeded_and_sane(tmp_path):
    cfg = cv.TINY
    a = cv.write_clip_vision(tmp_path / "a", cfg, seed=0)
    b = cv.write_clip_vision(tmp_path / "b", cfg, seed=0)
    c = cv.write_clip_vision(tmp_path / "c", cfg, seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    with safe_open(str(a), "pt") as f:
        assert f.get_tensor("vision_model.encoder.layers.0.layer_norm1.weight").eq(1).all()
        assert f.get_tensor("vision_model.encoder.layers.0.mlp.fc1.bias").eq(0).all()
        w = f.get_tensor("vision_model.encoder.layers.1.self_attn.q_proj.weight").float()
        assert w.dtype == torch.float32 and 0.015 < w.std() < 0.025
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("cfg", [cv.TINY, cv.TINY_336], ids=lambda c: c.name)
def test_tiny_encoder_runs_in_transformers(cfg):
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(cv.hf_config(cfg)).eval()
    sd = cv.clip_vision_state_dict(cfg, seed=0)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("position_ids")]
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, cfg.image_size, cfg.image_size), output_hidden_states=True)
    assert out.image_embeds.shape == (2, cfg.projection_dim)
    assert out.last_hidden_state.shape == (2, cfg.tokens, cfg.hidden_size)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    assert torch.isfinite(out.image_embeds).all() and torch.isfinite(out.hidden_states[-2]).all()


def test_cached_file_is_written_once(tmp_path):
    first = cv.cached_clip_vision(tmp_path, cv.TINY)
    mtime = first.stat().st_mtime_ns
    again = cv.cached_clip_vision(tmp_path, cv.TINY)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert f"v{cv.WRITER_VERSION}" in first.parent.name


def test_comfy_json_config_fields():
    d = cv.comfy_json_config(cv.VIT_L_336)
    assert d["image_size"] == 336 and d["hidden_act"] == "quick_gelu" and d["projection_dim"] == 768
    assert d["model_type"] == "clip_vision_model"
