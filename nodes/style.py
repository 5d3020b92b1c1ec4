"""Block-targeted image prompts (InstantStyle): style and composition from two images, and
the "precise" variants that push the other block group away from the reference.

Which layers carry what (transformer_index, as ComfyUI counts SpatialTransformers):
  SDXL / Kolors: style = t6 (output block 1), composition = t3 (input block 8).
  SD1.5: style = t0-3 and t9-15, composition = t4 (x0.25) and t5.
Style & composition works on SD1.5 too (the incumbent refused it): the composition image
goes to SD1.5's composition layers (t4, t5), the style image to its style layers.
"""

from __future__ import annotations

from ..ip_adapter_core.embeds import CombineMethod
from ..ip_adapter_core.weights import WeightType
from ._api import Input, NodeSpec, Output, PackNode
from .apply import COMBINE, CROP, END, MASK, SCALING, START
from .apply_core import apply_embeds
from .apply_helpers import ENCODE_BATCH, FRAME_WEIGHT_NOTE, UNFOLD, clip_for, encode_pair, option, settings_for
from .encoding import CropMode, ImageEmbeds, encode_clip, validate_images

_MODEL = Input("model", "MODEL", "The diffusion model to patch (SD1.5, SDXL or Kolors UNet).")
_ADAPTER = Input("ipadapter", "IPADAPTER", "An adapter from the IPAdapter Model Loader or Unified Loader (CLIP-based).")
_NEGATIVE = Input("image_negative", "IMAGE", "Optional image whose features act as the negative (uncond) image prompt.", optional=True)
_CLIP = Input("clip_vision", "CLIP_VISION", "CLIP vision encoder; optional when the Unified Loader supplied one.", optional=True)


def _combine(default: str) -> Input:
    return Input(COMBINE.name, "COMBO", COMBINE.tooltip + " Ignored with unfold_batch.", default=default, options=COMBINE.choices())


class StyleComposition(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_StyleComposition",
        display_name="IPAdapter Style & Composition",
        category="ipadapter/style",
        description="Takes the style (colours, textures, medium) from one image and the composition (layout, "
        "shapes) from another: the style image drives the style layers, the composition image the composition "
        "layers. SD1.5, SDXL and Kolors.",
        inputs=lambda: [
            _MODEL, _ADAPTER,
            Input("image_style", "IMAGE", "Reference for style: colours, textures, medium."),
            Input("image_composition", "IMAGE", "Reference for composition: layout, pose, shapes."),
            Input("weight_style", "FLOAT", "Strength on the style layers." + FRAME_WEIGHT_NOTE, default=1.0, min=-1.0, max=5.0, step=0.05),
            Input("weight_composition", "FLOAT", "Strength on the composition layers.", default=1.0, min=-1.0, max=5.0, step=0.05),
            Input("expand_style", "BOOLEAN", "Also send the style image to every other layer (strong style and composition).", default=False),
            _combine(CombineMethod.AVERAGE.value), START, END, SCALING,
            _NEGATIVE, MASK, _CLIP, UNFOLD, ENCODE_BATCH, CROP,
        ],
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )

    @classmethod
    def run(cls, model, ipadapter, image_style, image_composition, weight_style, weight_composition, expand_style,
            combine_embeds, start_at, end_at, embeds_scaling, image_negative=None, attn_mask=None, clip_vision=None,
            unfold_batch=False, encode_batch_size=0, crop=CropMode.CENTER.value):
        weight_type = WeightType.STRONG_STYLE_AND_COMPOSITION if expand_style else WeightType.STYLE_AND_COMPOSITION
        settings = settings_for(weight_style, weight_type.value, start_at, end_at, embeds_scaling, combine_embeds,
                                attn_mask, unfold=unfold_batch, weight_composition=weight_composition)
        settings.validate()
        cond, uncond = encode_pair(ipadapter, clip_vision, image_style, image_negative, crop, encode_batch_size)
        output = ipadapter.spec.encoder_output
        composition = validate_images(image_composition, "image_composition")
        alt = ImageEmbeds(output, encode_clip(clip_for(ipadapter, clip_vision), composition, output, option(CropMode, crop, "crop"),
                                              int(encode_batch_size or 0)))
        return (apply_embeds(model, ipadapter, cond, uncond, settings, alt=alt),)


class _Precise(PackNode):
    weight_type: WeightType
    boost: str

    @classmethod
    def run(cls, model, ipadapter, image, weight, combine_embeds, start_at, end_at, embeds_scaling, image_negative=None,
            attn_mask=None, clip_vision=None, unfold_batch=False, encode_batch_size=0, crop=CropMode.CENTER.value, **boost):
        settings = settings_for(weight, cls.weight_type.value, start_at, end_at, embeds_scaling, combine_embeds, attn_mask,
                                unfold=unfold_batch, weight_composition=boost[cls.boost])
        settings.validate()
        cond, uncond = encode_pair(ipadapter, clip_vision, image, image_negative, crop, encode_batch_size)
        return (apply_embeds(model, ipadapter, cond, uncond, settings),)


def _precise_inputs(boost: Input):
    return lambda: [
        _MODEL, _ADAPTER,
        Input("image", "IMAGE", "Reference image(s)."),
        Input("weight", "FLOAT", "Strength on the layers that take the reference." + FRAME_WEIGHT_NOTE, default=1.0, min=-1.0, max=5.0, step=0.05),
        boost, _combine(CombineMethod.CONCAT.value), START, END, SCALING,
        _NEGATIVE, MASK, _CLIP, UNFOLD, ENCODE_BATCH, CROP,
    ]


class PreciseStyleTransfer(_Precise):
    weight_type = WeightType.STYLE_TRANSFER_PRECISE
    boost = "style_boost"
    SPEC = NodeSpec(
        node_id="IPAK_PreciseStyleTransfer",
        display_name="IPAdapter Precise Style Transfer",
        category="ipadapter/style",
        description="Style transfer that also keeps the reference's layout out: the style layers take the image "
        "as usual, while the composition layers get it as negative guidance only (it goes to the uncond batch, "
        "so CFG pushes away from the reference's composition).",
        inputs=_precise_inputs(Input(
            "style_boost", "FLOAT", "Weight of the negative guidance on the composition layers (higher = less of the "
            "reference's layout leaks in).", default=1.0, min=-5.0, max=5.0, step=0.05,
        )),
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )


class PreciseComposition(_Precise):
    weight_type = WeightType.COMPOSITION_PRECISE
    boost = "composition_boost"
    SPEC = NodeSpec(
        node_id="IPAK_PreciseComposition",
        display_name="IPAdapter Precise Composition",
        category="ipadapter/style",
        description="Composition transfer that keeps the reference's style out: the composition layers take the "
        "image; the other layers get it as negative guidance (uncond batch only), scaled by composition_boost "
        "(0 = those layers are left alone).",
        inputs=_precise_inputs(Input(
            "composition_boost", "FLOAT", "Weight of the negative guidance on the non-composition layers (style "
            "layers at full, the rest at 0.1x). 0 = only the composition layers are patched.",
            default=0.0, min=-5.0, max=5.0, step=0.05,
        )),
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )


NODES = [StyleComposition, PreciseStyleTransfer, PreciseComposition]
