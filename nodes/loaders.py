"""Loader nodes: adapter files, the unified preset loader, HF-format CLIP vision folders."""

from __future__ import annotations

import logging
import os

import folder_paths

from ..ip_adapter_core.errors import MissingModelFileError
from ..ip_adapter_core.presets import Preset
from ..ip_adapter_core.spec import BaseModel
from . import host, model_files, paths
from ._api import Input, NodeSpec, Output, PackNode
from .adapter_store import IPAdapterHandle, load_adapter

log = logging.getLogger("ipadapter_kit")

IPADAPTER = "IPADAPTER"


class ModelLoader(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ModelLoader",
        display_name="IPAdapter Model Loader",
        category="ipadapter/loaders",
        description="Loads an IP-Adapter file from the ipadapter model folders. The file is recognised "
        "by its tensors (any file name works), loaded once and shared by every node that uses it.",
        inputs=lambda: [
            Input("ipadapter_file", "COMBO", "Adapter file in models/ipadapter (or an extra_model_paths.yaml 'ipadapter' path).", options=paths.adapter_files),
        ],
        outputs=[Output(IPADAPTER, "ipadapter", "The loaded adapter; connect a CLIP vision model where you apply it.")],
    )

    @classmethod
    def run(cls, ipadapter_file: str):
        path = paths.adapter_path(ipadapter_file)
        from . import dit_store  # Flux / SD3.5 adapters (applied by IPAK_ApplyDiT)

        if dit_store.is_dit_file(path):
            return (IPAdapterHandle(dit_store.load_dit_adapter(path)),)
        return (IPAdapterHandle(load_adapter(path)),)


class UnifiedLoader(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_UnifiedLoader",
        display_name="IPAdapter Unified Loader",
        category="ipadapter/loaders",
        description="Picks the adapter for a preset and the image encoder it needs among the installed "
        "files, by what the files contain (not by file name), for the connected model's base "
        "(SD1.5, SDXL, Kolors; Flux and SD3.5 Large with their presets). If a file is missing it says "
        "which one, for which base, and where.",
        inputs=lambda: [
            Input("model", "MODEL", "The model the adapter will be applied to; its base (SD1.5/SDXL/Kolors) decides the files."),
            Input("preset", "COMBO", "Which adapter: light/standard/vit-g use pooled CLIP embeds (4 tokens); plus and face variants use CLIP hidden states (16 or 257 tokens); flux/sd3.5 presets pick the XLabs (CLIP-L) or InstantX (SigLIP) adapters.", default=Preset.STANDARD.value, options=[p.value for p in Preset]),
        ],
        outputs=[
            Output("MODEL", "model", "The same model, passed through."),
            Output(IPADAPTER, "ipadapter", "Adapter with its CLIP vision encoder attached."),
        ],
    )

    @classmethod
    def run(cls, model, preset: str):
        from .dit import unified_dit, wants_dit  # Flux / SD3.5 models and presets

        if wants_dit(model, preset):
            return unified_dit(model, preset)
        preset = Preset(preset)
        layers = host.cross_attention_layers(model)
        family = host.model_family(model, layers)
        try:
            base = BaseModel(family)
        except ValueError:
            raise MissingModelFileError(f"No published IP-Adapter fits this model: {family}.") from None
        name = model_files.find_adapter(preset, base)
        adapter = load_adapter(paths.adapter_path(name))
        clip_name = model_files.find_clip_vision(adapter.spec.clip_encoder.encoder)
        log.info("IPAdapter preset '%s' on %s: %s + %s", preset.value, base.label, name, clip_name)
        return model, IPAdapterHandle(adapter, clip_vision=model_files.load_clip_vision(clip_name))


def _hf_folders() -> list[str]:
    out = []
    for root in folder_paths.get_folder_paths("clip_vision"):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            if os.path.isfile(os.path.join(root, entry, "config.json")):
                out.append(entry)
    return out


class ClipVisionLoaderHF(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ClipVisionLoaderHF",
        display_name="CLIP Vision Loader (Hugging Face folder)",
        category="ipadapter/loaders",
        description="Loads a CLIP image encoder saved as a Hugging Face folder (config.json + "
        "model.safetensors, e.g. h94/IP-Adapter's models/image_encoder) with transformers.",
        inputs=lambda: [
            Input("folder", "COMBO", "A sub-folder of models/clip_vision that holds config.json and the weights.", options=_hf_folders),
        ],
        outputs=[Output("CLIP_VISION", "clip_vision", "The encoder, usable wherever a CLIP_VISION is expected by this pack.")],
    )

    @classmethod
    def run(cls, folder: str):
        from .clip_hf import HFClipVision

        for root in folder_paths.get_folder_paths("clip_vision"):
            path = os.path.join(root, folder)
            if os.path.isfile(os.path.join(path, "config.json")):
                return (HFClipVision(path),)
        raise MissingModelFileError(f"No folder '{folder}' with a config.json in the clip_vision folders.")


NODES = [ModelLoader, UnifiedLoader, ClipVisionLoaderHF]
