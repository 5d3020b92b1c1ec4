"""CLIP vision encoders stored as Hugging Face folders (config.json + weights), run with
transformers and exposed with the same interface as ComfyUI's CLIP_VISION."""

from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.model_patcher
from comfy.clip_vision import clip_preprocess

from ..ip_adapter_core.errors import MissingModelFileError, UnreadableCheckpointError


class HFClipVision:
    def __init__(self, folder: str):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise MissingModelFileError(f"'{folder}' has no config.json: it is not a Hugging Face model folder.")
        try:
            config = CLIPVisionConfig.from_pretrained(folder, local_files_only=True)
            model = CLIPVisionModelWithProjection.from_pretrained(folder, config=config, local_files_only=True, use_safetensors=None)
        except (OSError, ValueError) as exc:
            raise UnreadableCheckpointError(f"Could not load the CLIP vision folder '{folder}': {exc}") from exc
        self.image_size = int(config.image_size)
        self.load_device = mm.text_encoder_device()
        offload = mm.text_encoder_offload_device()
        self.model = model.eval().to(offload, torch.float32)
        self.patcher = comfy.model_patcher.ModelPatcher(self.model, load_device=self.load_device, offload_device=offload)

    def encode_pixels(self, pixels: torch.Tensor) -> dict:
        mm.load_model_gpu(self.patcher)
        with torch.no_grad():
            out = self.model(pixel_values=pixels.to(self.load_device, torch.float32), output_hidden_states=True)
        dev = mm.intermediate_device()
        return {
            "image_embeds": out.image_embeds.to(dev),
            "last_hidden_state": out.last_hidden_state.to(dev),
            "penultimate_hidden_states": out.hidden_states[-2].to(dev),
        }

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> dict:
        pixels = clip_preprocess(image.to(self.load_device), size=self.image_size, crop=crop)
        return self.encode_pixels(pixels)
