"""FaceID through a real ComfyUI server with the full-size synthetic SD1.5 checkpoint.

insightface is not installed in the test environment, so the face analyser comes from a
test-only custom node (the stub analyser of ip_adapter_core.testing.faces) that this module
puts into its own server's custom_nodes folder. The FaceID-Plus v2 adapter file has the
published SD1.5 layout (real shapes, LoRA included) under a neutral name, so the unified
loader has to find it by content.

This module starts a second server (the shared `comfy_server` has no stub node); it runs
only while these tests do.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import e2e_server
import host_models
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FACEID_FILE = "ip-adapter-faceid-plusv2_sd15.bin"
NEUTRAL_NAME = "my-face-adapter.bin"
# The other SD1.5 FaceID layouts, under their published names (FaceID-Plus v1 has the v2 file's
# tensors: it is the neutral file with faceid_version v1). SDXL ones need a full SDXL checkpoint,
# too large for this machine: tests/nodes/test_faceid_apply.py samples them on small SDXL UNets.
OTHER_FILES = ("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid-portrait_sd15.bin")

STUB_NODES = '''
"""Test-only nodes for the IPAdapter Kit FaceID e2e tests (never shipped)."""
import sys
import torch

REPO = {repo!r}
if REPO not in sys.path:
    sys.path.append(REPO)
from ip_adapter_core.testing.faces import StubFaceAnalyzer, face_image


class StubInsightFace:
    RETURN_TYPES = ("INSIGHTFACE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{}}}}

    def run(self):
        return (StubFaceAnalyzer(),)


class FaceImages:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"count": ("INT", {{"default": 2}}), "blank": ("STRING", {{"default": ""}})}}}}

    def run(self, count, blank):
        skip = {{int(x) for x in blank.split(",") if x.strip()}}
        return (torch.cat([face_image(256, 256, [] if i in skip else [(40, 30, 210, 236)], seed=i) for i in range(count)]),)


class UseInsightFace:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"insightface": ("INSIGHTFACE",)}}}}

    def run(self, insightface):
        return {{"ui": {{"name": [str(getattr(insightface, "name", ""))]}}}}


NODE_CLASS_MAPPINGS = {{
    "IPAKTest_StubInsightFace": StubInsightFace,
    "IPAKTest_FaceImages": FaceImages,
    "IPAKTest_UseInsightFace": UseInsightFace,
}}
'''


@pytest.fixture(scope="module")
def faceid_server(tmp_path_factory):
    models = tmp_path_factory.mktemp("faceid-models")
    host_models.synthetic_models_dir(adapters=(), root=models)
    target = host_models.adapter_file(FACEID_FILE)
    (models / "ipadapter").mkdir(exist_ok=True)
    os.symlink(target, models / "ipadapter" / NEUTRAL_NAME)
    for name in OTHER_FILES:
        os.symlink(host_models.adapter_file(name), models / "ipadapter" / name)
    base = tmp_path_factory.mktemp("faceid-comfy-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ipak_faceid_test_nodes.py").write_text(STUB_NODES.format(repo=str(REPO)))
    srv = e2e_server.start_server(base, models)
    yield srv
    srv.stop()


def faceid_prompt(prefix: str, blank: str = "1", count: int = 2, unfold: bool = False) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": host_models.SD15_CHECKPOINT}},
        "stub": {"class_type": "IPAKTest_StubInsightFace", "inputs": {}},
        "loader": {"class_type": "IPAK_UnifiedLoaderFaceID", "inputs": {
            "model": ["ckpt", 0], "preset": "FACEID PLUS V2", "lora_strength": 0.6, "provider": "auto",
            "insightface": ["stub", 0],
        }},
        "faces": {"class_type": "IPAKTest_FaceImages", "inputs": {"count": count, "blank": blank}},
        "apply": {"class_type": "IPAK_ApplyFaceID", "inputs": {
            "model": ["loader", 0], "ipadapter": ["loader", 1], "image": ["faces", 0], "weight": 0.8,
            "weight_faceidv2": 1.0, "faceid_version": "auto", "weight_type": "linear", "combine_embeds": "concat",
            "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", "lora_strength": 0.6, "unfold_batch": unfold,
        }},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": count if unfold else 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 7, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        }},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
        "crops": {"class_type": "SaveImage", "inputs": {"images": ["apply", 1], "filename_prefix": prefix + "_crops"}},
    }


def _pixels(server, image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(server.fetch_image(image))).convert("RGB"))


def test_faceid_nodes_are_served_without_insightface(faceid_server):
    info = faceid_server.object_info()
    for node_id in ("IPAK_InsightFaceLoader", "IPAK_FaceAnalysis", "IPAK_ApplyFaceID", "IPAK_UnifiedLoaderFaceID"):
        assert node_id in info, node_id
    providers = info["IPAK_InsightFaceLoader"]["input"]["required"]["provider"]
    flat = str(providers)
    for name in ("CPUExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"):
        assert name in flat
    assert not e2e_server.pack_import_failures(faceid_server.log_text())


@pytest.mark.skipif(importlib.util.find_spec("insightface") is not None, reason="insightface is installed here")
def test_insightface_loader_without_the_package_says_how_to_install(faceid_server):
    prompt = {
        "load": {"class_type": "IPAK_InsightFaceLoader", "inputs": {"model_name": "buffalo_l", "provider": "auto"}},
        "use": {"class_type": "IPAKTest_UseInsightFace", "inputs": {"insightface": ["load", 0]}},
    }
    with pytest.raises(e2e_server.ExecutionFailed) as err:
        faceid_server.run(prompt, timeout=120)
    text = str(err.value)
    assert "OptionalDependencyError" in text and "pip install insightface onnxruntime" in text


def test_faceid_plus_v2_on_sd15_with_a_faceless_frame(faceid_server):
    start = len(faceid_server.log_text())
    entry = faceid_server.run(faceid_prompt("e2e_faceid"), timeout=900)
    log = faceid_server.log_text()[start:]
    assert f"FACEID PLUS V2' on SD1.5: {NEUTRAL_NAME}" in log  # found by content under a neutral name
    assert "no usable face in frame(s) 1 (no face) of a batch of 2" in log
    assert "applied the LoRA inside" in log and "lora key not loaded" not in log
    assert "invalid value encountered" not in log
    outputs = faceid_server.output_images(entry)
    picture = next(i for i in outputs if "crops" not in i["filename"])
    crop = next(i for i in outputs if "crops" in i["filename"])
    px = _pixels(faceid_server, picture)
    assert px.shape == (64, 64, 3) and px.std() > 1.0
    assert _pixels(faceid_server, crop).shape == (224, 224, 3)


def _variant_branch(tag: str, adapter_file: str, version: str, clip: bool) -> dict:
    apply_inputs = {
        "model": ["ckpt", 0], "ipadapter": [f"{tag}_load", 0], "image": ["faces", 0], "insightface": ["stub", 0],
        "weight": 0.8, "weight_faceidv2": 1.0, "faceid_version": version, "weight_type": "linear",
        "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", "lora_strength": 0.6,
    }
    if clip:
        apply_inputs["clip_vision"] = ["clip", 0]
    return {
        f"{tag}_load": {"class_type": "IPAK_ModelLoader", "inputs": {"ipadapter_file": adapter_file}},
        f"{tag}_apply": {"class_type": "IPAK_ApplyFaceID", "inputs": apply_inputs},
        f"{tag}_sampler": {"class_type": "KSampler", "inputs": {
            "model": [f"{tag}_apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 7, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        }},
        f"{tag}_decode": {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_sampler", 0], "vae": ["ckpt", 2]}},
        f"{tag}_save": {"class_type": "SaveImage", "inputs": {"images": [f"{tag}_decode", 0], "filename_prefix": f"e2e_variant_{tag}"}},
    }


def test_every_sd15_faceid_variant_loads_applies_and_samples(faceid_server):
    """FaceID, FaceID-Plus v1 and Portrait files (v2 is the test above) in one prompt: each branch
    loads its file by name, applies it with its LoRA (none for Portrait) and saves an image."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": host_models.SD15_CHECKPOINT}},
        "clip": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": host_models.clip_vision_vit_h().name}},
        "stub": {"class_type": "IPAKTest_StubInsightFace", "inputs": {}},
        "faces": {"class_type": "IPAKTest_FaceImages", "inputs": {"count": 1, "blank": ""}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    variants = {
        "faceid": ("ip-adapter-faceid_sd15.bin", "auto", False),
        "plus_v1": (NEUTRAL_NAME, "v1 (no shortcut)", True),
        "portrait": ("ip-adapter-faceid-portrait_sd15.bin", "auto", False),
    }
    for tag, (name, version, clip) in variants.items():
        prompt.update(_variant_branch(tag, name, version, clip))
    start = len(faceid_server.log_text())
    entry = faceid_server.run(prompt, timeout=900)
    log = faceid_server.log_text()[start:]
    assert "lora key not loaded" not in log and "invalid value encountered" not in log
    assert log.count("applied the LoRA inside") >= 2  # FaceID and Plus carry one; Portrait has none
    saved = {i["filename"].split("_00")[0]: i for i in faceid_server.output_images(entry) if i.get("type") == "output"}
    pixels = {tag: _pixels(faceid_server, saved[f"e2e_variant_{tag}"]) for tag in variants}
    for tag, px in pixels.items():
        assert px.shape == (64, 64, 3) and px.std() > 1.0, tag
    assert not np.array_equal(pixels["faceid"], pixels["portrait"])
