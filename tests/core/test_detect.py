"""`describe` recognises every published variant from keys and shapes alone, and refuses the rest.

All layouts are built on the meta device (no memory, no data): recognition must never need
tensor values. Expected values are the published facts (reference checkpoint-formats.md 1.4).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ip_adapter_core import catalog, describe
from ip_adapter_core.adapter import IPAdapterModel
from ip_adapter_core.checkpoint import AdapterWeights, load_adapter_weights, split_adapter_state
from ip_adapter_core.errors import CheckpointError, NotAnAdapterError, UnknownLayoutError
from ip_adapter_core.spec import FACEID_PLUS_NOTE, BaseModel, ProjectionKind
from ip_adapter_core.testing import adapter_state, adapter_weights

H, G, L336 = "clip-vit-h-14", "clip-vit-bigg-14", "clip-vit-l-14-336"
FACE, FACE_H = "insightface", "insightface+clip-vit-h-14"
EMB, PEN, ID = "image_embeds", "penultimate_hidden_states", "face_embedding"
CLIP_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
CLIP_G = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"
CLIP_L336 = "clip-vit-large-patch14-336.bin"

PLUS_SD15, PLUS_XL = (768, 12, 1280), (1280, 20, 1280)

# file: (base, kind, tokens, layers, encoder, encoder_output, lora, cross dim, CLIP vision file,
#        resampler (dim, heads, in) or None)
EXPECTED = {
    "ip-adapter_sd15.safetensors": ("sd15", "linear", 4, 16, H, EMB, False, 768, CLIP_H, None),
    "ip-adapter_sd15_light.safetensors": ("sd15", "linear", 4, 16, H, EMB, False, 768, CLIP_H, None),
    "ip-adapter_sd15_light_v11.bin": ("sd15", "linear", 4, 16, H, EMB, False, 768, CLIP_H, None),
    "ip-adapter_sd15_vit-G.safetensors": ("sd15", "linear", 4, 16, G, EMB, False, 768, CLIP_G, None),
    "ip-adapter-plus_sd15.safetensors": ("sd15", "resampler", 16, 16, H, PEN, False, 768, CLIP_H, PLUS_SD15),
    "ip-adapter-plus-face_sd15.safetensors": ("sd15", "resampler", 16, 16, H, PEN, False, 768, CLIP_H, PLUS_SD15),
    "ip-adapter-full-face_sd15.safetensors": ("sd15", "full-face-mlp", 257, 16, H, PEN, False, 768, CLIP_H, None),
    "ip_plus_composition_sd15.safetensors": ("sd15", "resampler", 16, 16, H, PEN, False, 768, CLIP_H, PLUS_SD15),
    "ip-adapter_sdxl.safetensors": ("sdxl", "linear", 4, 70, G, EMB, False, 2048, CLIP_G, None),
    "ip-adapter_sdxl_vit-h.safetensors": ("sdxl", "linear", 4, 70, H, EMB, False, 2048, CLIP_H, None),
    "ip-adapter-plus_sdxl_vit-h.safetensors": ("sdxl", "resampler", 16, 70, H, PEN, False, 2048, CLIP_H, PLUS_XL),
    "ip-adapter-plus-face_sdxl_vit-h.safetensors": ("sdxl", "resampler", 16, 70, H, PEN, False, 2048, CLIP_H, PLUS_XL),
    "ip_plus_composition_sdxl.safetensors": ("sdxl", "resampler", 16, 70, H, PEN, False, 2048, CLIP_H, PLUS_XL),
    "ip-adapter-faceid_sd15.bin": ("sd15", "faceid-mlp", 4, 16, FACE, ID, True, 768, None, None),
    "ip-adapter-faceid-plus_sd15.bin": ("sd15", "faceid-plus", 4, 16, FACE_H, ID, True, 768, CLIP_H, PLUS_SD15),
    "ip-adapter-faceid-plusv2_sd15.bin": ("sd15", "faceid-plus", 4, 16, FACE_H, ID, True, 768, CLIP_H, PLUS_SD15),
    "ip-adapter-faceid_sdxl.bin": ("sdxl", "faceid-mlp", 4, 70, FACE, ID, True, 2048, None, None),
    "ip-adapter-faceid-plusv2_sdxl.bin": (
        "sdxl", "faceid-plus", 4, 70, FACE_H, ID, True, 2048, CLIP_H, (2048, 32, 1280),
    ),
    "ip-adapter-faceid-portrait_sd15.bin": ("sd15", "faceid-portrait", 16, 16, FACE, ID, False, 768, None, None),
    "ip-adapter-faceid-portrait-v11_sd15.bin": ("sd15", "faceid-portrait", 16, 16, FACE, ID, False, 768, None, None),
    "ip-adapter-faceid-portrait_sdxl.bin": ("sdxl", "faceid-portrait", 16, 70, FACE, ID, False, 2048, None, None),
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin": (
        "sdxl", "faceid-portrait-unnorm", 16, 70, FACE, ID, False, 2048, None, (1280, 20, 512),
    ),
    "ip_adapter_plus_general.bin": ("kolors", "resampler", 16, 70, L336, PEN, False, 2048, CLIP_L336, (2048, 12, 1024)),
}

ENTRIES = catalog.PUBLISHED
NAMES = [e.file_name for e in ENTRIES]


def meta_state(name: str) -> dict[str, torch.Tensor]:
    return dict(adapter_state(name, device="meta"))


def weights_of(state: dict, source: str = "test.safetensors") -> AdapterWeights:
    return split_adapter_state(state, source)


def test_expectations_cover_the_catalog():
    assert set(EXPECTED) == set(NAMES)


@pytest.mark.parametrize("entry", ENTRIES, ids=NAMES)
def test_describe_returns_the_catalog_spec(entry):
    spec = describe(adapter_weights(entry.file_name, device="meta"))
    assert spec == entry.spec
    base, kind, tokens, layers, encoder, output, lora, cross, clip_file, resampler = EXPECTED[entry.file_name]
    assert spec.base.value == base
    assert spec.kind.value == kind
    assert spec.tokens == tokens
    assert spec.layers == layers == len(spec.layer_widths)
    assert spec.encoder.value == encoder
    assert spec.encoder_output.value == output
    assert spec.lora is lora and spec.lora_rank == (128 if lora else 0)
    assert spec.cross_attention_dim == cross
    assert (spec.clip_encoder.file_name if spec.clip_encoder else None) == clip_file
    if resampler is None:
        assert spec.resampler is None
    else:
        assert (spec.resampler.dim, spec.resampler.heads, spec.resampler.in_dim) == resampler
        assert spec.resampler.depth == 4 and spec.resampler.dim_head == 64
    expected_widths = {16: {320, 640, 1280}, 70: {640, 1280}}[layers]
    assert set(spec.layer_widths) == expected_widths
    assert sum(spec.layer_widths) == {16: 12_480, 70: 83_200}[layers]


@pytest.mark.parametrize("name", ["ip-adapter-faceid-plus_sd15.bin", "ip-adapter-faceid-plusv2_sd15.bin"])
def test_faceid_plus_v1_v2_ambiguity_is_reported(name):
    spec = describe(adapter_weights(name, device="meta"))
    assert FACEID_PLUS_NOTE in spec.notes
    note = " ".join(spec.notes)
    assert "v1" in note and "v2" in note and "faceid_v2" in note
    assert any("rank-128 LoRA" in n for n in spec.notes)


def test_faceid_plus_v1_and_v2_files_are_indistinguishable():
    v1 = describe(adapter_weights("ip-adapter-faceid-plus_sd15.bin", device="meta"))
    v2 = describe(adapter_weights("ip-adapter-faceid-plusv2_sd15.bin", device="meta"))
    assert v1 == v2  # so the choice is the user's (the faceid_v2 option), as the note says


def test_portrait_versus_faceid():
    faceid = describe(adapter_weights("ip-adapter-faceid_sd15.bin", device="meta"))
    portrait = describe(adapter_weights("ip-adapter-faceid-portrait_sd15.bin", device="meta"))
    assert (faceid.kind, faceid.tokens, faceid.lora) == (ProjectionKind.FACEID_MLP, 4, True)
    assert (portrait.kind, portrait.tokens, portrait.lora) == (ProjectionKind.PORTRAIT, 16, False)
    assert portrait.notes == ()
    # the same projection keys; only the token count and the LoRA tell them apart
    proj_keys = lambda n: [k for k in meta_state(n) if k.startswith("image_proj.")]  # noqa: E731
    assert proj_keys("ip-adapter-faceid_sd15.bin") == proj_keys("ip-adapter-faceid-portrait_sd15.bin")
    assert faceid.feature_dim == portrait.feature_dim == 512

    # A FaceID file with its LoRA stripped is still FaceID (4 tokens), not a portrait.
    state = {k: v for k, v in meta_state("ip-adapter-faceid_sd15.bin").items() if "_lora." not in k}
    stripped = describe(weights_of(state))
    assert (stripped.kind, stripped.tokens, stripped.lora) == (ProjectionKind.FACEID_MLP, 4, False)

    unnorm = describe(adapter_weights("ip-adapter-faceid-portrait_sdxl_unnorm.bin", device="meta"))
    assert unnorm.kind is ProjectionKind.PORTRAIT_UNNORM and unnorm.needs_face and not unnorm.needs_clip


def test_kolors_versus_sdxl():
    kolors_state = meta_state("ip_adapter_plus_general.bin")
    sdxl_state = meta_state("ip-adapter-plus_sdxl_vit-h.safetensors")
    # identical K/V halves: the UNet topology is the same ...
    kv = lambda s: {k: tuple(v.shape) for k, v in s.items() if k.startswith("ip_adapter.")}  # noqa: E731
    assert kv(kolors_state) == kv(sdxl_state)
    kolors, sdxl = describe(weights_of(kolors_state)), describe(weights_of(sdxl_state))
    # ... and the image encoder (ViT-L/14-336, 2048-d Resampler) makes it Kolors
    assert (kolors.base, sdxl.base) == (BaseModel.KOLORS, BaseModel.SDXL)
    assert kolors.clip_encoder.image_size == 336 and kolors.clip_encoder.tokens == 577
    assert sdxl.clip_encoder.image_size == 224 and sdxl.clip_encoder.tokens == 257
    assert kolors.resampler.dim == 2048 and sdxl.resampler.dim == 1280


# --- unknown layouts -------------------------------------------------------------------


def _closest(message: str) -> list[str]:
    assert "Closest published layouts: " in message, message
    tail = message.split("Closest published layouts: ", 1)[1]
    return [part.split(" (")[0].strip() for part in tail.rstrip(".").split("), ")]


def _expect_unknown(state: dict, *found: str, closest: str | None = None) -> str:
    with pytest.raises(UnknownLayoutError) as info:
        describe(weights_of(state, "odd.safetensors"))
    message = str(info.value)
    assert "'odd.safetensors'" in message
    for text in found:
        assert text in message, (text, message)
    names = _closest(message)
    assert names and all(n in NAMES for n in names), names
    if closest is not None:
        assert names[0] == closest, names
    return message


def test_resampler_with_an_unknown_input_width():
    state = meta_state("ip-adapter-plus_sd15.safetensors")
    state["image_proj.proj_in.weight"] = torch.empty(768, 999, device="meta")
    _expect_unknown(state, "999", "clip-vit-h-14 (1280)", closest="ip-adapter-plus_sd15.safetensors")


def test_linear_projection_with_an_unknown_embedding_width():
    state = meta_state("ip-adapter_sdxl.safetensors")
    state["image_proj.proj.weight"] = torch.empty(8192, 999, device="meta")
    _expect_unknown(state, "999", "image_embeds", closest="ip-adapter_sdxl.safetensors")


def test_layers_numbered_from_zero():
    state = {}
    for key, value in meta_state("ip-adapter_sd15.safetensors").items():
        if key.startswith("ip_adapter."):
            number, rest = key.removeprefix("ip_adapter.").split(".", 1)
            key = f"ip_adapter.{int(number) - 1}.{rest}"
        state[key] = value
    _expect_unknown(state, "numbered 0, 2, 4", "1, 3, 5", closest="ip-adapter_sd15.safetensors")


def test_a_missing_layer():
    state = {k: v for k, v in meta_state("ip-adapter_sd15.safetensors").items() if not k.startswith("ip_adapter.17.")}
    _expect_unknown(state, "numbered", closest="ip-adapter_sd15.safetensors")


def test_a_layer_without_its_value_projection():
    state = {k: v for k, v in meta_state("ip-adapter_sd15.safetensors").items() if k != "ip_adapter.5.to_v_ip.weight"}
    _expect_unknown(state, "to_v", closest="ip-adapter_sd15.safetensors")


def test_key_and_value_of_a_layer_disagree():
    state = meta_state("ip-adapter_sd15.safetensors")
    state["ip_adapter.5.to_v_ip.weight"] = torch.empty(320, 768, device="meta")
    _expect_unknown(state, "layer 5", "[640, 768]", "[320, 768]")


def test_an_unknown_unet():
    state = {k: v for k, v in meta_state("ip-adapter_sd15.safetensors").items() if not k.startswith("ip_adapter.31.")}
    _expect_unknown(state, "15 cross-attention layers", "SD1.5 (16 layers", closest="ip-adapter_sd15.safetensors")


@pytest.mark.parametrize(
    "proj_from, kv_from, found",
    [
        ("ip-adapter-plus_sd15.safetensors", "ip-adapter_sdxl.safetensors", ("768-d image tokens", "2048-d")),
        ("ip-adapter_sdxl_vit-h.safetensors", "ip-adapter_sd15.safetensors", ("2048-d image tokens", "768-d")),
        ("ip-adapter-faceid_sdxl.bin", "ip-adapter-faceid_sd15.bin", ("2048-d image tokens", "768-d")),
        ("ip-adapter-full-face_sd15.safetensors", "ip-adapter_sdxl.safetensors", ("768-d image tokens", "2048-d")),
    ],
)
def test_mismatched_halves(proj_from, kv_from, found):
    proj = {k: v for k, v in meta_state(proj_from).items() if k.startswith("image_proj.")}
    kv = {k: v for k, v in meta_state(kv_from).items() if k.startswith("ip_adapter.")}
    _expect_unknown({**proj, **kv}, *found, "do not belong together")


def test_an_unknown_projection():
    kv = {k: v for k, v in meta_state("ip-adapter_sd15.safetensors").items() if k.startswith("ip_adapter.")}
    state = {"image_proj.mystery.weight": torch.empty(768, 768, device="meta"), **kv}
    _expect_unknown(state, "mystery.weight", "Known projections")


# --- not adapters at all ------------------------------------------------------------------


def _clip_vision_keys() -> list[str]:
    table = Path(__file__).resolve().parents[1] / "data" / "keys" / "clip_vision_vit-h.tsv"
    lines = table.read_text().splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


FOREIGN = {
    "sd-checkpoint": (
        [
            "model.diffusion_model.input_blocks.0.0.weight",
            "model.diffusion_model.out.2.bias",
            "first_stage_model.decoder.conv_in.weight",
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        ],
        "Stable Diffusion checkpoint",
        "models/checkpoints",
    ),
    "clip-vision": (_clip_vision_keys(), "CLIP vision encoder", "models/clip_vision"),
    "lora": (
        [
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight",
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha",
        ],
        "LoRA",
        "models/loras",
    ),
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_other_model_files_are_named(kind, tmp_path):
    keys, what, folder = FOREIGN[kind]
    path = tmp_path / f"{kind}.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(NotAnAdapterError) as info:
        load_adapter_weights(path)
    message = str(info.value)
    assert f"'{kind}.safetensors'" in message and what in message and folder in message, message
    assert "not an IP-Adapter" in message


def test_image_proj_without_kv_layers_is_not_an_adapter():
    state = meta_state("ip-adapter_sd15.safetensors")
    state = {k: v for k, v in state.items() if k.startswith("image_proj.")} | {
        "ip_adapter.0.to_q_lora.down.weight": torch.empty(128, 320, device="meta")
    }
    with pytest.raises(NotAnAdapterError, match="to_k_ip"):
        describe(weights_of(state))


def test_layouts_on_meta_need_no_data():
    """Recognition of the largest published file allocates nothing."""
    weights = adapter_weights("ip-adapter-faceid-plusv2_sdxl.bin", device="meta")
    assert weights.num_parameters() == 743_707_648  # published parameter count
    assert describe(weights).kind is ProjectionKind.FACEID_PLUS


# --- robustness: damaged layouts -------------------------------------------------------------


def _mutations(seed: int, count: int):
    """Deterministic single-tensor damage to published layouts: dropped tensors, wrong sizes,
    wrong ranks."""
    rng = random.Random(seed)
    for _ in range(count):
        entry = rng.choice([e for e in ENTRIES if e.spec.base is BaseModel.SD15])
        state = meta_state(entry.file_name)
        key = rng.choice(list(state))
        shape = list(state[key].shape)
        op = rng.choice(["drop", "resize", "rank+", "rank-"])
        if op == "drop":
            del state[key]
        elif op == "resize":
            i = rng.randrange(len(shape))
            shape[i] = max(1, shape[i] + rng.choice([-64, -1, 1, 64]))
            state[key] = torch.empty(shape, device="meta")
        elif op == "rank+":
            state[key] = torch.empty(shape + [2], device="meta")
        else:
            state[key] = torch.empty(shape[:-1], device="meta")
        yield f"{entry.file_name}: {op} {key}", state


def test_damaged_layouts_raise_only_checkpoint_errors():
    failures = []
    for label, state in _mutations(seed=0, count=200):
        if len(failures) >= 10:
            break
        try:
            describe(weights_of(state))
        except CheckpointError:
            pass
        except Exception as exc:  # noqa: BLE001 - the point of the test
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures[:10])


def test_describe_accepts_only_exact_layouts():
    problems = []
    for label, state in _mutations(seed=1, count=60):
        if len(problems) >= 10:
            break
        weights = weights_of(state)
        try:
            spec = describe(weights)
        except CheckpointError:
            continue
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if catalog.state_layout(spec) != shapes:
            problems.append(f"{label}: accepted as {spec.title}")
        try:
            IPAdapterModel.from_weights(weights)
        except CheckpointError:
            pass
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{label}: from_weights raised {type(exc).__name__}")
    assert not problems, "\n".join(problems[:10])
