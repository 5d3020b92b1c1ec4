"""Apply nodes: image (or embeds) + adapter -> patched model clone."""

from __future__ import annotations

import math

from ..ip_adapter_core.embeds import CombineMethod, EmbedsScaling
from ..ip_adapter_core.errors import InvalidInputError
from ..ip_adapter_core.spec import AdapterSpec
from ..ip_adapter_core.weights import WeightType
from . import host
from ._api import Input, NodeSpec, Output, PackNode
from .apply_core import apply_embeds
from .apply_helpers import FRAME_WEIGHT_NOTE, option, settings_for
from .encoding import CropMode, ImageEmbeds, embeds_from_images, mask_pixels, validate_images

EMBEDS = "IPADAPTER_EMBEDS"

WEIGHT = Input("weight", "FLOAT", "Strength of the image prompt (the reference formula's scale). 0 = off; negative pushes away from the image."
               + FRAME_WEIGHT_NOTE, default=1.0, min=-1.0, max=5.0, step=0.05)
WEIGHT_TYPE = Input(
    "weight_type", "COMBO",
    "How the weight is spread over the UNet's layers: linear = everywhere; style transfer / composition = the "
    "InstantStyle layers only; ease/weak/strong curves shift it between input, middle and output blocks.",
    default=WeightType.LINEAR.value, options=[w.value for w in WeightType],
)
START = Input("start_at", "FLOAT", "Fraction of the sampling schedule at which the adapter starts acting.", default=0.0, min=0.0, max=1.0, step=0.001)
END = Input("end_at", "FLOAT", "Fraction of the sampling schedule after which the adapter stops acting.", default=1.0, min=0.0, max=1.0, step=0.001)
COMBINE = Input(
    "combine_embeds", "COMBO",
    "Several reference images: concat keeps all (their tokens side by side); add/subtract/average/norm average merge them into one.",
    default=CombineMethod.CONCAT.value, options=[m.value for m in CombineMethod if m not in (CombineMethod.MAX, CombineMethod.MIN)],
)
SCALING = Input(
    "embeds_scaling", "COMBO",
    "Where the weight acts: V only = the reference formula; K+V variants also sharpen/flatten the image attention (C penalty: less on narrow layers).",
    default=EmbedsScaling.V_ONLY.value, options=[m.value for m in EmbedsScaling],
)
MASK = Input("attn_mask", "MASK", "Where in the picture the image prompt acts (white = full strength). Any size; it is resized to each layer's grid.", optional=True)
LAYER_WEIGHTS = Input(
    "layer_weights", "STRING",
    "Optional per-layer multipliers 'index:weight, ...' (index = transformer 0-15 SD1.5, 0-10 SDXL; '3.2' = block 2 of transformer 3; '*' = all others, default 0). Applied on top of weight_type.",
    optional=True, default="", multiline=True,
)
CROP = Input("crop", "COMBO", "Non-square references: center = crop to a square; pad = fit inside a square; squash = stretch to a square.", optional=True, default=CropMode.CENTER.value, options=[m.value for m in CropMode])


def check_model(model, ipadapter) -> None:
    """Refuse an adapter made for another base model before any image is encoded (the base
    model is the first thing to fix; a wrong encoder would otherwise be reported first)."""
    if isinstance(ipadapter.spec, AdapterSpec):
        host.check_adapter_fits(ipadapter.spec, model, host.cross_attention_layers(model), ipadapter.adapter.name)


class Apply(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_Apply",
        display_name="IPAdapter Apply",
        category="ipadapter",
        description="Adds an image prompt to the model: each cross-attention layer attends to the reference "
        "image's tokens as well as the text (out = Attn(text) + weight * Attn(image)). Returns a patched "
        "copy of the model; the input model is not changed.",
        inputs=lambda: [
            Input("model", "MODEL", "The diffusion model to patch (SD1.5, SDXL or Kolors UNet)."),
            Input("ipadapter", "IPADAPTER", "An adapter from the IPAdapter Model Loader or Unified Loader."),
            Input("image", "IMAGE", "Reference image(s). A batch is combined according to combine_embeds."),
            WEIGHT, WEIGHT_TYPE, COMBINE, START, END, SCALING,
            Input("image_negative", "IMAGE", "Optional image whose features act as the negative (uncond) image prompt.", optional=True),
            MASK,
            Input("clip_vision", "CLIP_VISION", "CLIP vision encoder; optional when the Unified Loader supplied one.", optional=True),
            LAYER_WEIGHTS, CROP,
        ],
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )

    @classmethod
    def run(cls, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at, embeds_scaling,
            image_negative=None, attn_mask=None, clip_vision=None, layer_weights="", crop=CropMode.CENTER.value):
        settings = settings_for(weight, weight_type, start_at, end_at, embeds_scaling, combine_embeds, attn_mask, layer_weights)
        settings.validate()
        check_model(model, ipadapter)
        clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
        cond, uncond = embeds_from_images(
            ipadapter.spec, clip, validate_images(image), None if image_negative is None else validate_images(image_negative, "image_negative"),
            option(CropMode, crop, "crop"), ipadapter.adapter.name,
        )
        return (apply_embeds(model, ipadapter, cond, uncond, settings),)


class EncodeImage(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_EncodeImage",
        display_name="IPAdapter Encode Image",
        category="ipadapter/embeds",
        description="Encodes reference images into the features this adapter needs (CLIP image_embeds or "
        "penultimate hidden states), plus the negative features (the negative image's, or the reference "
        "implementations' default: zeros, or an all-zero normalised image for Plus models).",
        inputs=lambda: [
            Input("ipadapter", "IPADAPTER", "The adapter the features are for (it decides which encoder output is used)."),
            Input("image", "IMAGE", "Reference image(s)."),
            Input("image_negative", "IMAGE", "Optional negative image.", optional=True),
            Input("clip_vision", "CLIP_VISION", "CLIP vision encoder; optional when the Unified Loader supplied one.", optional=True),
            CROP,
            Input("encode_batch_size", "INT", "Encode this many images at a time (0 = all at once); lower it for long videos.", optional=True, default=0, min=0, max=4096, step=1),
            Input("weight", "FLOAT", "Scales the reference features (before the adapter's projection); use it to balance embeds you combine afterwards. The negative is not scaled.", optional=True, default=1.0, min=-1.0, max=3.0, step=0.01),
            Input("mask", "MASK", "Pixel mask on the reference image(s): the encoder only sees the masked part (the rest becomes CLIP's mean colour). Any size; one mask or one per image.", optional=True),
        ],
        outputs=[
            Output(EMBEDS, "pos_embeds", "Features of the reference images."),
            Output(EMBEDS, "neg_embeds", "Negative features."),
        ],
    )

    @classmethod
    def run(cls, ipadapter, image, image_negative=None, clip_vision=None, crop=CropMode.CENTER.value, encode_batch_size=0,
            weight=1.0, mask=None):
        clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
        image = validate_images(image)
        if mask is not None:
            image = mask_pixels(image, mask)
        cond, uncond = embeds_from_images(
            ipadapter.spec, clip, image, None if image_negative is None else validate_images(image_negative, "image_negative"),
            option(CropMode, crop, "crop"), ipadapter.adapter.name, batch_size=int(encode_batch_size),
        )
        weight = float(weight)
        if not math.isfinite(weight):
            raise InvalidInputError(f"weight must be a finite number, got {weight}.")
        if weight != 1.0:
            cond = ImageEmbeds(cond.output, cond.features * weight, cond.clip_features)
        return cond, uncond


class ApplyEmbeds(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ApplyEmbeds",
        display_name="IPAdapter Apply Embeds",
        category="ipadapter/embeds",
        description="Like IPAdapter Apply, from precomputed (encoded, combined or loaded) embeds.",
        inputs=lambda: [
            Input("model", "MODEL", "The diffusion model to patch."),
            Input("ipadapter", "IPADAPTER", "The adapter."),
            Input("pos_embeds", EMBEDS, "Reference features (IPAdapter Encode Image / Load / Combine Embeds)."),
            WEIGHT, WEIGHT_TYPE, START, END, SCALING,
            Input("neg_embeds", EMBEDS, "Negative features; without them the adapter's default negative is used (needs clip_vision for Plus models).", optional=True),
            MASK,
            Input("clip_vision", "CLIP_VISION", "Only needed to build the default negative of a Plus model when neg_embeds is not connected.", optional=True),
            LAYER_WEIGHTS,
        ],
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )

    @classmethod
    def run(cls, model, ipadapter, pos_embeds: ImageEmbeds, weight, weight_type, start_at, end_at, embeds_scaling,
            neg_embeds=None, attn_mask=None, clip_vision=None, layer_weights=""):
        settings = settings_for(weight, weight_type, start_at, end_at, embeds_scaling, attn_mask=attn_mask, layer_weights=layer_weights)
        uncond = neg_embeds if neg_embeds is not None else default_negative(ipadapter, pos_embeds, clip_vision)
        return (apply_embeds(model, ipadapter, pos_embeds, uncond, settings),)


def default_negative(ipadapter, pos: ImageEmbeds, clip_vision=None) -> ImageEmbeds:
    import torch

    from ..ip_adapter_core.spec import EncoderOutput
    from .encoding import zero_pixel_features

    if pos.output is not EncoderOutput.PENULTIMATE:
        clip = None if pos.clip_features is None else torch.zeros_like(pos.clip_features[:1])
        return ImageEmbeds(pos.output, torch.zeros_like(pos.features[:1]), clip)
    clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
    if clip is None:
        raise InvalidInputError(
            "The default negative of a Plus model is the encoding of an all-zero image, which needs a CLIP "
            "vision model: connect clip_vision or neg_embeds."
        )
    return ImageEmbeds(pos.output, zero_pixel_features(clip, pos.output))


NODES = [Apply, EncodeImage, ApplyEmbeds]
