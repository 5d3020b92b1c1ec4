"""Wrong combinations through the real apply nodes in ComfyUI's executor: an adapter for another
base model (SD1.5 / SDXL / Kolors), the wrong image encoder or embeds from another kind of
adapter, a Flux adapter on a UNet node. Each message names both sides and the file or node to
use instead."""

from __future__ import annotations

import pytest

import robust_nodes as rn  # noqa: I001  (sets up the host first)
import tiny_dit
from host import models_dir

VIT_H = "'CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors'"
VIT_BIGG = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"


@pytest.fixture(scope="module", autouse=True)
def robust_nodes():
    with rn.registered():
        yield


def _error(graph) -> str:
    return rn.message_of(rn.node_error(graph))


BASE_MISMATCH = [
    # (model, adapter, words)
    ("sd15", "sdxl-linear", ["is an IP-Adapter for SDXL, but the model is SD1.5", "Use an SD1.5 adapter (e.g. ip-adapter_sd15.safetensors) with this model", "or load a SDXL checkpoint"]),
    ("sdxl", "sd15-linear", ["is an IP-Adapter for SD1.5, but the model is SDXL", "Use an SDXL adapter (e.g. ip-adapter_sdxl_vit-h.safetensors)"]),
    ("sdxl", "kolors-plus", ["is an IP-Adapter for Kolors, but the model is SDXL", "Use an SDXL adapter", "or load a Kolors checkpoint"]),
    ("kolors", "sdxl-plus", ["is an IP-Adapter for SDXL, but the model is Kolors", "Use the Kolors adapter (ip_adapter_plus_general.bin)"]),
]


@pytest.mark.parametrize("model, adapter, words", BASE_MISMATCH, ids=[f"{a}-on-{m}" for m, a, _ in BASE_MISMATCH])
def test_adapter_for_another_base_model_names_both(model, adapter, words):
    message = _error(rn.apply_graph(model=model, adapter=adapter, clip="tiny"))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.IncompatibleModelError: "), message
    assert f"'{adapter}.safetensors'" in message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def _embeds_graph(encode_with: str, apply_with: str, clip: str, model: str = "sd15", neg: bool = True) -> dict:
    """IPAK_EncodeImage with one adapter, IPAK_ApplyEmbeds with another."""
    g = rn.apply_graph(model=model, adapter=encode_with, clip=clip)
    g["apply_adapter"] = {"class_type": "R_Adapter", "inputs": {"name": apply_with, "fresh": False}}
    g["encode"] = {"class_type": "IPAK_EncodeImage", "inputs": {"ipadapter": ["adapter", 0], "image": ["image", 0],
                                                                "clip_vision": ["clip", 0]}}
    inputs = {"model": ["model", 0], "ipadapter": ["apply_adapter", 0], "pos_embeds": ["encode", 0], "weight": 1.0,
              "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}
    if neg:
        inputs["neg_embeds"] = ["encode", 1]
    g["apply"] = {"class_type": "IPAK_ApplyEmbeds", "inputs": inputs}
    return g


ENCODER_MISMATCH = [
    # (adapter, clip, words): the encoder connected to IPAK_Apply is not the adapter's
    ("sd15-linear-vith", "vit-bigg", [f"needs the clip-vit-h-14 image encoder ({VIT_H} in models/clip_vision)", "1024-d image_embeds",
                                      f"The connected CLIP vision model is clip-vit-bigg-14 ({VIT_BIGG})", "Load the matching encoder"]),
    ("sdxl-plus-vith", "vit-bigg", [f"needs the clip-vit-h-14 image encoder ({VIT_H}", "1280-d penultimate_hidden_states at 224px",
                                    "clip-vit-bigg-14"]),
    ("sd15-linear-bigg", "vit-h", [f"needs the clip-vit-bigg-14 image encoder ('{VIT_BIGG}' in models/clip_vision)",
                                   "The connected CLIP vision model is clip-vit-h-14"]),
    ("kolors-plus", "tiny", ["needs the clip-vit-l-14-336 image encoder ('clip-vit-large-patch14-336.bin'", "at 336px"]),
]


@pytest.mark.parametrize("adapter, clip, words", ENCODER_MISMATCH, ids=[f"{a}-with-{c}" for a, c, _ in ENCODER_MISMATCH])
def test_wrong_image_encoder_names_the_file_the_adapter_needs(adapter, clip, words):
    model = adapter.split("-")[0]
    message = _error(rn.apply_graph(model=model, adapter=adapter, clip=clip))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.EncoderMismatchError: "), message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_bigg_embeds_into_a_vit_h_adapter_name_the_vit_h_file():
    """Embeds encoded (by IPAK_EncodeImage) for a ViT-bigG adapter, applied with a ViT-H one."""
    message = _error(_embeds_graph("sd15-linear-bigg", "sd15-linear-vith", "vit-bigg"))
    assert "EncoderMismatchError" in message
    assert "needs 1024-d image_embeds but got 1280-d features (that is clip-vit-bigg-14)" in message
    assert f"Use the image encoder {VIT_H} (clip-vit-h-14)" in message


@pytest.mark.parametrize("encode_with, apply_with, need, have", [
    ("sd15-linear", "sd15-plus", "penultimate_hidden_states", "image_embeds"),
    ("sd15-plus", "sd15-linear", "image_embeds", "penultimate_hidden_states"),
])
def test_embeds_of_another_kind_of_adapter_name_the_encoder_and_the_fix(encode_with, apply_with, need, have):
    message = _error(_embeds_graph(encode_with, apply_with, "tiny"))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.EncoderMismatchError: "), message
    assert f"needs {need} from the clip-vit-h-14 image encoder ({VIT_H})" in message
    assert f"the pos_embeds hold {have}" in message
    assert "Encode the image with IPAdapter Encode Image using this adapter" in message


def test_embeds_path_checks_the_base_model_too():
    message = _error(_embeds_graph("sdxl-linear", "sdxl-linear", "tiny", model="sd15"))
    assert "IncompatibleModelError" in message and "for SDXL, but the model is SD1.5" in message


def test_plus_default_negative_needs_a_clip_vision():
    g = _embeds_graph("sd15-plus", "sd15-plus", "tiny", neg=False)
    message = _error(g)
    assert "InvalidInputError" in message
    assert "connect clip_vision or neg_embeds" in message


def test_no_clip_vision_names_the_encoder_file():
    message = _error(rn.apply_graph(clip=None))
    assert "EncoderMismatchError" in message
    assert f"connect a CLIPVisionLoader with {VIT_H} to clip_vision, or use the Unified Loader" in message


def test_flux_adapter_on_the_unet_apply_node_names_the_right_node(tmp_path):
    """A (tiny, XLabs-layout) Flux adapter file through the real loader, into IPAK_Apply."""
    tiny_dit.write(tiny_dit.xlabs_spec(), str(tmp_path / "ipadapter"), "flux-ip-adapter.safetensors")
    with models_dir(tmp_path):
        g = rn.apply_graph()
        g.update(rn.loader_graph("flux-ip-adapter.safetensors"))
        g["apply"]["inputs"]["ipadapter"] = ["loader", 0]
        del g["adapter"], g["adapter_info"]
        message = _error(g)
    assert "NotAUNetAdapterError" in message
    assert "is an IP-Adapter for Flux.1" in message and "Apply it with 'IPAdapter Apply (Flux / SD3.5)'" in message
