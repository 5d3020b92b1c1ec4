"""Shared pieces of the feature nodes (style, batch, tiled, regional, embeds): common
inputs, encoding with a progress bar, and per-frame weight values."""

from __future__ import annotations

import torch

from ..ip_adapter_core.embeds import CombineMethod, EmbedsScaling
from ..ip_adapter_core.errors import IncompatibleModelError, InvalidInputError, WeightSpecError
from ..ip_adapter_core.schedules import as_weight_list
from ..ip_adapter_core.spec import AdapterSpec, EncoderOutput
from ..ip_adapter_core.weights import WeightType
from ._api import Input
from .adapter_store import IPAdapterHandle
from .apply_core import ApplySettings
from .encoding import (
    CropMode, ImageEmbeds, clip_image_size, embeds_from_images, encode_clip, require_clip_input, validate_images,
    zero_pixel_features,
)

UNFOLD = Input(
    "unfold_batch", "BOOLEAN",
    "Off: all reference images act together on every latent. On: image i acts on latent i (batches, "
    "animations); fewer images than latents repeat the last one.",
    optional=True, default=False,
)
ENCODE_BATCH = Input(
    "encode_batch_size", "INT",
    "Encode this many images at a time (0 = all at once). Lower it for hundreds of frames (a progress bar shows the chunks); results are the same up to float rounding.",
    optional=True, default=0, min=0, max=4096, step=1,
)
FRAME_WEIGHT_NOTE = " Link a per-frame weight list (IPAdapter Weights) for one weight per latent frame."


def clip_for(handle: IPAdapterHandle, clip_vision):
    return clip_vision if clip_vision is not None else handle.clip_vision


def unet_adapter(handle) -> IPAdapterHandle:
    """Refuse what is not an SD1.5/SDXL/Kolors adapter handle, with what to use instead."""
    if not isinstance(handle, IPAdapterHandle):
        raise InvalidInputError(f"ipadapter must come from an IPAdapter loader, got {type(handle).__name__}.")
    if not isinstance(handle.spec, AdapterSpec):
        raise IncompatibleModelError(
            f"'{handle.adapter.name}' is a Flux / SD3.5 IP-Adapter; this node works with SD1.5, SDXL and Kolors "
            "adapters. Use IPAdapter Apply (Flux / SD3.5) for it."
        )
    return handle


def option(enum_type, value, what: str, error=InvalidInputError):
    """A combo value as its enum, or an error listing the valid values (old workflows and
    Python callers can pass names the validator never saw)."""
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_type)
        raise error(f"{what} {value!r} is not one of {choices}; pick one of those in the node.") from None


def split_weight(value) -> tuple[float, list[float] | None]:
    """A FLOAT socket value -> (scalar weight, per-frame weights or None). A list from the
    IPAdapter Weights node becomes per-frame weights with a scalar of 1."""
    frames = as_weight_list(value)
    if frames is None:
        return float(value), None
    if len(frames) == 1:
        return frames[0], None
    return 1.0, frames


def settings_for(
    weight,
    weight_type,
    start_at,
    end_at,
    embeds_scaling,
    combine_embeds=CombineMethod.CONCAT.value,
    attn_mask=None,
    layer_weights="",
    unfold=False,
    weight_composition=None,
    **extra,
) -> ApplySettings:
    scalar, frames = split_weight(weight)
    return ApplySettings(
        weight=scalar,
        weight_type=option(WeightType, weight_type, "weight_type", WeightSpecError),
        weight_composition=None if weight_composition is None else float(weight_composition),
        start_at=float(start_at),
        end_at=float(end_at),
        combine=option(CombineMethod, combine_embeds, "combine_embeds"),
        scaling=option(EmbedsScaling, embeds_scaling, "embeds_scaling"),
        attn_mask=attn_mask,
        layer_weights=layer_weights or "",
        unfold=bool(unfold),
        frame_weights=frames,
        **extra,
    )


def encode_pair(handle: IPAdapterHandle, clip_vision, image, image_negative=None, crop=CropMode.CENTER.value, batch_size=0):
    """(cond, uncond) features of a reference batch and its negative."""
    unet_adapter(handle)
    negative = None if image_negative is None else validate_images(image_negative, "image_negative")
    return embeds_from_images(
        handle.spec, clip_for(handle, clip_vision), validate_images(image), negative, option(CropMode, crop, "crop"), handle.adapter.name,
        batch_size=int(batch_size or 0),
    )


def encoder_size(handle: IPAdapterHandle, clip_vision) -> int:
    """The encoder's input resolution: the CLIP model's own, else what the adapter needs."""
    clip = clip_for(handle, clip_vision) if handle is not None else clip_vision
    if clip is not None:
        return clip_image_size(clip)
    if handle is not None and handle.spec.clip_encoder is not None:
        return handle.spec.clip_encoder.image_size
    return 224


def require_clip(handle: IPAdapterHandle, clip_vision):
    unet_adapter(handle)
    clip = clip_for(handle, clip_vision)
    require_clip_input(handle.spec, clip, handle.adapter.name)
    return clip


def same_kind(embeds: list[ImageEmbeds], what: str = "embeds") -> None:
    """Refuse mixing features of different encoders/outputs."""
    first = embeds[0]
    for i, e in enumerate(embeds[1:], start=2):
        if not isinstance(e, ImageEmbeds):
            raise InvalidInputError(f"{what} {i} is not IPAdapter embeds (got {type(e).__name__}).")
        if e.output is not first.output or e.features.shape[1:] != first.features.shape[1:]:
            raise InvalidInputError(
                f"{what} 1 holds {first.output.value} {list(first.features.shape[1:])} but {what} {i} holds "
                f"{e.output.value} {list(e.features.shape[1:])}: they come from different encoders or adapters "
                "and cannot be combined."
            )
        if (e.clip_features is None) != (first.clip_features is None):
            raise InvalidInputError(f"{what} {i} and {what} 1 are of different kinds (one has face-crop CLIP features).")


def as_embeds(value, what: str) -> ImageEmbeds:
    if not isinstance(value, ImageEmbeds):
        raise InvalidInputError(f"{what} must be IPAdapter embeds (from Encode Image, Load or Combine Embeds), got {type(value).__name__}.")
    return value


def concat_embeds(embeds: list[ImageEmbeds]) -> ImageEmbeds:
    same_kind(embeds)
    features = torch.cat([e.features.float() for e in embeds])
    clip = None
    if embeds[0].clip_features is not None:
        clip = torch.cat([e.clip_features.float() for e in embeds])
    return ImageEmbeds(embeds[0].output, features, clip)


def is_sequence(output: EncoderOutput) -> bool:
    return output is EncoderOutput.PENULTIMATE


def negative_features(handle: IPAdapterHandle, clip, image_negative=None, batch_size: int = 0, crop=CropMode.CENTER) -> ImageEmbeds:
    """The uncond features: the negative image's, else the reference implementations'
    default (zeros; an all-zero normalised image for token features). Computed once and
    shared by every entry of a node (tiles, regions)."""
    output = handle.spec.encoder_output
    if image_negative is not None:
        features = encode_clip(clip, validate_images(image_negative, "image_negative"), output, option(CropMode, crop, "crop"), batch_size)
    elif output is EncoderOutput.IMAGE_EMBEDS:
        features = torch.zeros(1, handle.spec.feature_dim)
    else:
        features = zero_pixel_features(clip, output)
    return ImageEmbeds(output, features)
