"""Flux and SD3.5 IP-Adapters: encode the reference, project, patch a model clone.

    XLabs flux-ip-adapter v1/v2    CLIP-L image_embeds          K/V added after the 19 double blocks
    InstantX FLUX.1-dev            SigLIP pooled output         K/V before proj/gate in all 57 blocks
    InstantX SD3.5-Large           SigLIP penultimate states    per-step resampler, K/V in the 38 joint blocks

Everything goes through `patches_replace["dit"]` on a clone (nodes/dit_patch.py); the input
model is never changed.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
from dataclasses import dataclass

import torch

import comfy.model_management as mm

from ..ip_adapter_core.dit.presets import DIT_RULES, is_dit_preset, presets_for, rank_dit, suggestion
from ..ip_adapter_core.dit.spec import DIT_ENCODERS, DitAdapterSpec, DitEncoder, DitEncoderOutput, DitKind
from ..ip_adapter_core.errors import (
    EncoderMismatchError,
    IncompatibleModelError,
    MissingModelFileError,
    WeightSpecError,
)
from ..ip_adapter_core.presets import Preset
from . import dit_host, dit_patch, dit_store, host, model_files
from ._api import Input, NodeSpec, Output, PackNode
from .adapter_store import IPAdapterHandle
from .encoding import CropMode, to_square, validate_images

log = logging.getLogger("ipadapter_kit")


class DitCrop(str, enum.Enum):
    AUTO = "auto"  # the adapter's reference preprocessing: CLIP centre crop, SigLIP squash
    CENTER = "center"
    SQUASH = "squash"
    PAD = "pad"


class DitCombine(str, enum.Enum):
    CONCAT = "concat"  # every reference's tokens side by side
    AVERAGE = "average"  # one token set from the mean features


@dataclass
class DitSettings:
    weight: float = 1.0
    start_at: float = 0.0
    end_at: float = 1.0
    combine: DitCombine = DitCombine.CONCAT
    v_norm: bool = False  # InstantX-Flux only: also RMS-normalise V (Shakker pack); official: K only

    def validate(self) -> None:
        for name in ("weight", "start_at", "end_at"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise WeightSpecError(f"{name} must be a finite number, got {value!r}.")
        if not (0.0 <= self.start_at <= self.end_at <= 1.0):
            raise WeightSpecError(
                f"start_at ({self.start_at}) and end_at ({self.end_at}) are fractions of the schedule with "
                "0 <= start_at <= end_at <= 1."
            )


def dit_spec(handle, what: str = "ipadapter") -> DitAdapterSpec:
    spec = handle.spec
    if not getattr(spec, "is_dit", False):
        raise IncompatibleModelError(
            f"'{handle.adapter.name}' is an IP-Adapter for {spec.base.label} (a UNet model); this node applies "
            "Flux / SD3.5 adapters. Use 'IPAdapter Apply' for it, or load a Flux / SD3.5 adapter."
        )
    return spec


# --- encoding -----------------------------------------------------------------------------


def _vision(clip_vision):
    return getattr(getattr(clip_vision, "model", None), "vision_model", None)


def _is_siglip(clip_vision) -> bool:
    return bool(getattr(_vision(clip_vision), "output_layernorm", False))


def _check_encoder(spec: DitAdapterSpec, clip_vision, name: str) -> None:
    info = DIT_ENCODERS[spec.encoder]
    want = f"the {spec.encoder.value} image encoder ('{info.file_name}', {info.repo}) in models/clip_vision"
    if clip_vision is None:
        raise EncoderMismatchError(
            f"'{name}' ({spec.title}) needs {want}: connect a CLIPVisionLoader to clip_vision, or use the "
            "Unified Loader with a Flux / SD3.5 preset."
        )
    siglip = _is_siglip(clip_vision)
    if (spec.encoder is DitEncoder.SIGLIP) != siglip:
        have = "a SigLIP model" if siglip else "a CLIP model"
        raise EncoderMismatchError(f"'{name}' ({spec.title}) needs {want}; the connected encoder is {have}.")


def _encode(clip_vision, image: torch.Tensor, crop: DitCrop, encoder: DitEncoder) -> dict:
    mode = crop
    if mode is DitCrop.AUTO:
        mode = DitCrop.SQUASH if encoder is DitEncoder.SIGLIP else DitCrop.CENTER
    size = int(getattr(clip_vision, "image_size", 224))
    center = mode is DitCrop.CENTER
    if mode is DitCrop.PAD:
        image = to_square(image, CropMode.PAD, size)
        center = True  # already square at the encoder's size: nothing left to crop
    if "crop" in inspect.signature(clip_vision.encode_image).parameters:
        return clip_vision.encode_image(image, crop=center)
    return clip_vision.encode_image(to_square(image, CropMode.SQUASH, size) if not center else image)


def _features(spec: DitAdapterSpec, clip_vision, image: torch.Tensor, crop: DitCrop, name: str) -> torch.Tensor:
    out = _encode(clip_vision, image, crop, spec.encoder)
    if spec.encoder_output is DitEncoderOutput.IMAGE_EMBEDS:
        feats = out["image_embeds"]
    elif spec.encoder_output is DitEncoderOutput.PENULTIMATE:
        feats = out["penultimate_hidden_states"]
    else:
        head = dit_store.siglip_head_for(clip_vision, name)
        with torch.no_grad():
            feats = head(out["last_hidden_state"])
    feats = feats.float().to(mm.intermediate_device())
    want_ndim = 3 if spec.encoder_output is DitEncoderOutput.PENULTIMATE else 2  # [n, tokens, F] or [n, F]
    if feats.shape[-1] != spec.feature_dim or feats.ndim != want_ndim:
        info = DIT_ENCODERS[spec.encoder]
        raise EncoderMismatchError(
            f"'{name}' ({spec.title}) takes {spec.feature_dim}-d {spec.encoder_output.value} of "
            f"{spec.encoder.value}; the connected encoder gives {list(feats.shape[1:])}. Load "
            f"'{info.file_name}' ({info.repo}) with a CLIPVisionLoader."
        )
    return feats


def dit_embeds(spec: DitAdapterSpec, clip_vision, image, negative, crop: DitCrop, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) encoder features of the references, as the reference pipelines
    make them: XLabs' negative is a black image, SD3.5's and InstantX-Flux's are zeros."""
    _check_encoder(spec, clip_vision, name)
    cond = _features(spec, clip_vision, validate_images(image), crop, name)
    if negative is not None:
        uncond = _features(spec, clip_vision, validate_images(negative, "image_negative"), crop, name)
    elif spec.kind is DitKind.XLABS:
        size = int(getattr(clip_vision, "image_size", 224))
        uncond = _features(spec, clip_vision, torch.zeros(1, size, size, 3), crop, name)
    else:
        uncond = torch.zeros_like(cond[:1])
    return cond, uncond


# --- apply --------------------------------------------------------------------------------


def _combined(features: torch.Tensor, combine: DitCombine, count: int | None = None) -> torch.Tensor:
    if combine is DitCombine.AVERAGE:
        return features.mean(0, keepdim=True)
    if count is not None and features.shape[0] != count:
        idx = torch.tensor([min(i, features.shape[0] - 1) for i in range(count)])
        features = features.index_select(0, idx)
    return features


def apply_dit(model, handle: IPAdapterHandle, cond: torch.Tensor, uncond: torch.Tensor, settings: DitSettings):
    """A clone of `model` with this Flux / SD3.5 adapter in its blocks."""
    settings.validate()
    spec = dit_spec(handle)
    name = handle.adapter.name
    info = dit_host.dit_model_info(model)
    dit_host.check_fits(spec, info, model, name)
    clone = model.clone()
    if settings.weight == 0 or settings.start_at == settings.end_at:
        log.info("IPAdapter '%s' has no effect with these settings (weight 0 or empty start/end range)", name)
        return clone
    sigma_start = sigma_end = None
    if (settings.start_at, settings.end_at) != (0.0, 1.0):
        sigma_start, sigma_end = host.sigma_range(model, settings.start_at, settings.end_at)
    cond = _combined(cond, settings.combine)
    uncond = _combined(uncond, settings.combine, cond.shape[0])
    store = host.storage_device()
    entries: dict = {}
    if spec.kind is DitKind.INSTANTX_SD35:
        prepared = dit_patch.SD35Prepared(
            settings.weight, sigma_start, sigma_end, adapter=handle.adapter, cond=cond.float().to(store),
            uncond=uncond.float().to(store), multiplier=dit_host.timestep_multiplier(model),
        )
        for j in range(spec.blocks):
            block = dit_host.mmdit_joint_block(model, j)
            entries[("double_block", j)] = (dit_patch.MMDIT_JOINT, block, dit_patch.SD35Entry(prepared, j))
    else:
        adapter = handle.adapter.model
        host.load_to_device(handle.adapter.patcher)
        with torch.no_grad():
            kv = []
            for feats in (cond, uncond):
                tokens = adapter.project(feats)  # [n, tokens, d]
                tokens = tokens.reshape(1, -1, tokens.shape[-1])  # several references: one token sequence
                kv.append([(k.float().to(store), v.float().to(store))
                           for k, v in adapter.flux_kv(tokens, info.head_dim, settings.v_norm)])
        prepared = dit_patch.FluxPrepared(settings.weight, sigma_start, sigma_end, kind=spec.kind, cond=kv[0], uncond=kv[1])
        for j in range(spec.blocks):
            entry = dit_patch.FluxEntry(prepared, j)
            if j < info.double_blocks:
                entries[("double_block", j)] = (dit_patch.FLUX_DOUBLE, dit_host.flux_double_block(model, j), entry)
            else:
                i = j - info.double_blocks
                entries[("single_block", i)] = (dit_patch.FLUX_SINGLE, dit_host.flux_single_block(model, i), entry)
    dit_patch.install(clone, entries)
    track = getattr(host, "track_cond_roles", None)
    if track is not None:
        track(clone)  # positive/negative chunks by role under any guider
    return clone


# --- unified loader -----------------------------------------------------------------------


def wants_dit(model, preset: str) -> bool:
    """Whether the Unified Loader should take the Flux / SD3.5 path."""
    try:
        if is_dit_preset(Preset(preset)):
            return True
    except ValueError:
        return False
    return dit_host.dit_model_info(model) is not None


def unified_dit(model, preset: str):
    """(model, handle) for a Flux / SD3.5 preset: the adapter and image encoder by content."""
    preset = Preset(preset)
    info = dit_host.dit_model_info(model)
    if info is None:
        rule = DIT_RULES[preset]
        raise IncompatibleModelError(
            f"The '{preset.value}' preset is for {rule.base.label} models; the model is "
            f"{type(getattr(model, 'model', model)).__name__}. Choose an SD1.5/SDXL preset."
        )
    if not is_dit_preset(preset) or DIT_RULES[preset].base is not info.base:
        choices = ", ".join(f"'{p.value}'" for p in presets_for(info.base))
        raise IncompatibleModelError(
            f"The '{preset.value}' preset does not apply to this {info.label}. Presets for {info.base.label}: {choices}."
        )
    installed = dit_store.installed_dit_adapters()
    names = rank_dit(preset, info.base, installed)
    if not names:
        seen = "; ".join(f"{n} ({s.title})" for n, s in installed[:6]) or "no Flux / SD3.5 adapter files"
        raise MissingModelFileError(
            f"The '{preset.value}' preset needs {suggestion(preset)} in the ipadapter folder (any file name; it is "
            f"recognised by content). Installed: {seen}."
        )
    from . import paths

    adapter = dit_store.load_dit_adapter(paths.adapter_path(names[0]))
    clip_name = dit_store.find_encoder_file(adapter.spec.encoder)
    log.info("IPAdapter preset '%s' on %s: %s + %s", preset.value, info.label, names[0], clip_name)
    return model, IPAdapterHandle(adapter, clip_vision=model_files.load_clip_vision(clip_name))


# --- nodes --------------------------------------------------------------------------------


class ApplyDiT(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ApplyDiT",
        display_name="IPAdapter Apply (Flux / SD3.5)",
        category="ipadapter/dit",
        description="Adds an image prompt to a Flux.1 or SD3.5 Large model with the XLabs (v1/v2) or InstantX "
        "Flux adapter, or the InstantX SD3.5-Large adapter, the way their reference implementations do. "
        "Returns a patched copy of the model; the input model is not changed.",
        inputs=lambda: [
            Input("model", "MODEL", "A Flux.1 (dev/schnell) or SD3.5 Large model."),
            Input("ipadapter", "IPADAPTER", "A Flux or SD3.5 adapter from the IPAdapter Model Loader or Unified Loader."),
            Input("image", "IMAGE", "Reference image(s)."),
            Input("weight", "FLOAT", "Strength of the image prompt (the reference implementations' scale; InstantX SD3.5's pipeline default is 0.5). 0 = off.", default=1.0, min=-1.0, max=5.0, step=0.01),
            Input("start_at", "FLOAT", "Fraction of the sampling schedule at which the adapter starts acting.", default=0.0, min=0.0, max=1.0, step=0.001),
            Input("end_at", "FLOAT", "Fraction of the sampling schedule after which the adapter stops acting.", default=1.0, min=0.0, max=1.0, step=0.001),
            Input("combine_embeds", "COMBO", "Several reference images: concat keeps every image's tokens; average makes one token set from the mean features.", default=DitCombine.CONCAT.value, options=[m.value for m in DitCombine]),
            Input("image_negative", "IMAGE", "Optional negative image prompt (used by the negative/uncond pass, i.e. with cfg > 1). Default: a black image (XLabs) or zero features (InstantX).", optional=True),
            Input("clip_vision", "CLIP_VISION", "Image encoder: CLIP-L (XLabs) or SigLIP so400m-384 (InstantX). Optional when the Unified Loader supplied one.", optional=True),
            Input("crop", "COMBO", "How references become the encoder's square: auto = the adapter's reference preprocessing (CLIP: centre crop; SigLIP: squash), or center / squash / pad.", optional=True, default=DitCrop.AUTO.value, options=[m.value for m in DitCrop]),
            Input("instantx_v_norm", "BOOLEAN", "InstantX Flux only: also RMS-normalise the image values (the Shakker-Labs pack's behaviour). Off = InstantX's official processor (keys only).", optional=True, default=False),
        ],
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )

    @classmethod
    def run(cls, model, ipadapter, image, weight, start_at, end_at, combine_embeds=DitCombine.CONCAT.value,
            image_negative=None, clip_vision=None, crop=DitCrop.AUTO.value, instantx_v_norm=False):
        spec = dit_spec(ipadapter)
        settings = DitSettings(float(weight), float(start_at), float(end_at), DitCombine(combine_embeds), bool(instantx_v_norm))
        settings.validate()
        if instantx_v_norm and spec.kind is not DitKind.INSTANTX_FLUX:
            log.info("IPAdapter: instantx_v_norm only affects the InstantX Flux adapter; ignored for %s", spec.title)
        if settings.weight == 0 or settings.start_at == settings.end_at:
            dit_host.check_fits(spec, dit_host.dit_model_info(model), model, ipadapter.adapter.name)
            return (model.clone(),)
        clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
        cond, uncond = dit_embeds(spec, clip, image, image_negative, DitCrop(crop), ipadapter.adapter.name)
        return (apply_dit(model, ipadapter, cond, uncond, settings),)


NODES = [ApplyDiT]

__all__ = ["NODES", "ApplyDiT", "DitSettings", "apply_dit", "dit_embeds", "unified_dit", "wants_dit"]
