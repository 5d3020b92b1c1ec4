"""The synthetic model files are what ComfyUI itself expects (in-process host checks).

Key tables are checked on the meta device (no file written); the full-size files are loaded by
the e2e tests and, for the CLIP vision encoder, the slow test below.
"""

from __future__ import annotations

import json

import pytest
import torch

import host_models
from ip_adapter_core.testing import clip_vision as cv


def meta_state(specs):
    return {s.name: torch.empty(s.shape, dtype=s.dtype, device="meta") for s in specs}


@pytest.mark.parametrize(
    "cfg, bundled",
    [
        (cv.VIT_H, "clip_vision_config_h.json"),
        (cv.VIT_BIGG, "clip_vision_config_g.json"),
        (cv.VIT_L_336, "clip_vision_config_vitl_336.json"),
    ],
    ids=["vit-h", "vit-bigg", "vit-l-336"],
)
def test_comfy_json_equals_bundled_config(comfy, cfg, bundled):
    path = comfy.root / "comfy" / bundled
    want = json.loads(path.read_text())
    got = cv.comfy_json_config(cfg)
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("cfg", [cv.TINY, cv.TINY_336], ids=lambda c: c.name)
def test_tiny_encoder_builds_in_comfy(comfy, tmp_path, cfg):
    import comfy.clip_vision

    model = comfy.clip_vision.ClipVisionModel(str(cv.write_comfy_json(cfg, tmp_path)))
    missing, unexpected = model.load_sd(cv.clip_vision_state_dict(cfg))
    assert not missing and not unexpected
    out = model.encode_image(torch.rand(1, cfg.image_size, cfg.image_size, 3))
    assert tuple(out["image_embeds"].shape) == (1, cfg.projection_dim)
    assert tuple(out["penultimate_hidden_states"].shape) == (1, cfg.tokens, cfg.hidden_size)
    assert torch.isfinite(out["penultimate_hidden_states"]).all()


def test_sd15_checkpoint_table_is_detected_as_sd15(comfy):
    import comfy.model_detection
    import comfy.supported_models

    sd = meta_state(host_models.sd15_checkpoint_specs())
    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    assert type(config) is comfy.supported_models.SD15
    clip_keys = config.process_clip_state_dict(dict(sd))
    assert "clip_l.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in clip_keys
    assert "clip_l.transformer.text_model.final_layer_norm.weight" in clip_keys
    assert sum(1 for k in sd if k.startswith("first_stage_model.")) == 248
    assert sum(s.numel for s in host_models.sd15_checkpoint_specs() if s.dtype.is_floating_point) == 1_066_235_307


def test_controlnet_table_is_detected_as_sd15(comfy):
    import comfy.model_detection
    import comfy.supported_models

    specs = host_models.sd15_controlnet_specs()
    sd = meta_state(specs)
    assert "control_model.zero_convs.0.0.weight" in sd and sd["control_model.input_hint_block.0.weight"].shape[1] == 3
    config = comfy.model_detection.model_config_from_unet(sd, "control_model.", True)
    assert type(config) is comfy.supported_models.SD15
    assert sum(s.numel for s in specs) == 361_279_120  # control_v11p_sd15_canny_fp16: 722.6 MB


@pytest.mark.slow
def test_full_vit_h_file_is_detected(comfy):
    """`comfy.clip_vision.load` picks its config from the layer count: 32 layers -> ViT-H."""
    import comfy.clip_vision

    model = comfy.clip_vision.load(str(host_models.clip_vision_vit_h()))
    assert model is not None
    out = model.encode_image(torch.rand(1, 224, 224, 3))
    assert tuple(out["image_embeds"].shape) == (1, 1024)
    assert tuple(out["penultimate_hidden_states"].shape) == (1, 257, 1280)
    assert torch.isfinite(out["image_embeds"]).all()


def test_models_dir_registers_and_restores_folders(comfy, tmp_path):
    folder_paths = comfy.folder_paths
    names = ("ipadapter", "clip_vision", "checkpoints", "controlnet")
    before = {name: folder_paths.folder_names_and_paths.get(name) for name in names}
    with comfy.models_dir(tmp_path) as root:
        for name in names:
            (root / name / f"probe-{name}.safetensors").write_bytes(b"")
            assert folder_paths.get_folder_paths(name)[0] == str(root / name)
            assert f"probe-{name}.safetensors" in folder_paths.get_filename_list(name)
    for name in names:
        assert folder_paths.folder_names_and_paths.get(name) == before[name]
        if before[name] is not None:
            assert f"probe-{name}.safetensors" not in folder_paths.get_filename_list(name)
