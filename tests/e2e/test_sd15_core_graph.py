"""The synthetic full-size SD1.5 files work in a real server with core nodes only.

CheckpointLoaderSimple must detect the checkpoint as SD1.5, KSampler (64x64, 2 steps) +
VAEDecode must give finite pixels, and ControlNetLoader + ControlNetApplyAdvanced must compose
in the same graph. Random weights make noise images; these tests check plumbing.
"""

from __future__ import annotations

import io

import host_models
import numpy as np
from PIL import Image


def sd15_prompt(prefix: str, controlnet: str | None = None, size: int = 64, steps: int = 2) -> dict:
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": host_models.SD15_CHECKPOINT}},
        "pos": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a photo of a red fox in snow", "clip": ["ckpt", 1]},
        },
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sampler": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["ckpt", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "seed": 7,
                "steps": steps,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    if controlnet:
        prompt["cnet"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
        prompt["hint"] = {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0xFFFFFF},
        }
        prompt["apply"] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "control_net": ["cnet", 0],
                "image": ["hint", 0],
                "strength": 1.0,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        }
        prompt["sampler"]["inputs"]["positive"] = ["apply", 0]
        prompt["sampler"]["inputs"]["negative"] = ["apply", 1]
    return prompt


def fetch_pixels(server, entry) -> np.ndarray:
    images = server.output_images(entry)
    assert len(images) == 1, images
    return np.asarray(Image.open(io.BytesIO(server.fetch_image(images[0]))).convert("RGB"))


def assert_finite_noise(server, pixels: np.ndarray, log_start: int, size: int = 64):
    assert pixels.shape == (size, size, 3)
    # NaN/inf would reach SaveImage's uint8 cast: numpy warns, and the picture turns flat.
    new_log = server.log_text()[log_start:]
    assert "invalid value encountered" not in new_log, new_log[-3000:]
    assert pixels.std() > 1.0, "flat image: the decoded latent was not finite or the model did nothing"


def test_checkpoint_loads_samples_and_decodes(comfy_server):
    start = len(comfy_server.log_text())
    entry = comfy_server.run(sd15_prompt("e2e_sd15"), timeout=600)
    assert_finite_noise(comfy_server, fetch_pixels(comfy_server, entry), start)
    log = comfy_server.log_text()[start:]
    assert "model_type EPS" in log  # SD1.5 detected (the SD2-v checkpoints would say V_PREDICTION)
    assert "clip missing" not in log, "the text encoder keys were not all found"


def test_controlnet_composes(comfy_server):
    start = len(comfy_server.log_text())
    entry = comfy_server.run(sd15_prompt("e2e_sd15_cnet", controlnet=host_models.SD15_CONTROLNET), timeout=600)
    assert_finite_noise(comfy_server, fetch_pixels(comfy_server, entry), start)
    assert "missing controlnet keys" not in comfy_server.log_text()[start:]
