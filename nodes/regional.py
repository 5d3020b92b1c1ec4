"""Regional image prompts: several (image, mask, weight, weight type, start/end) entries
applied on one model, optionally masking the text conditioning the same way.

IPADAPTER_PARAMS values are plain dicts of parallel lists with the incumbent pack's keys
(image, attn_mask, weight, weight_type, start_at, end_at), so params made by nodes written
for it load here too. A weight may be a per-frame list (IPAdapter Weights) and, with
unfold_batch, an entry's image batch is spread over the latent frames: regions and
schedules combine (the incumbent's open PR #526).
"""

from __future__ import annotations

from ..ip_adapter_core.errors import InvalidInputError
from ..ip_adapter_core.weights import WeightType
from ._api import Input, NodeSpec, Output, PackNode
from .apply import COMBINE, CROP, END, SCALING, START, WEIGHT_TYPE
from .apply_core import apply_embeds
from .apply_helpers import ENCODE_BATCH, FRAME_WEIGHT_NOTE, UNFOLD, negative_features, option, require_clip, settings_for
from .encoding import CropMode, ImageEmbeds, check_clip_vision, encode_clip, validate_images

PARAMS = "IPADAPTER_PARAMS"
FIELDS = ("image", "attn_mask", "weight", "weight_type", "start_at", "end_at")


def _params(value, what: str) -> dict:
    if not isinstance(value, dict) or any(k not in value for k in FIELDS):
        raise InvalidInputError(f"{what} must come from an IPAdapter Regional Conditioning or Combine Params node.")
    lengths = {len(value[k]) for k in FIELDS}
    if len(lengths) != 1:
        raise InvalidInputError(f"{what} is inconsistent: its fields have different lengths {sorted(lengths)}.")
    return value


class RegionalConditioning(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_RegionalConditioning",
        display_name="IPAdapter Regional Conditioning",
        category="ipadapter/params",
        description="One region: an image prompt limited to a mask (and its schedule). If positive/negative "
        "conditioning is connected, the same mask is set on it, so a region's text and image agree. Combine "
        "regions with Combine Params and apply them with Apply From Params.",
        inputs=lambda: [
            Input("image", "IMAGE", "Reference image(s) for this region."),
            Input("image_weight", "FLOAT", "Strength of this region's image prompt." + FRAME_WEIGHT_NOTE, default=1.0, min=-1.0, max=5.0, step=0.05),
            Input("prompt_weight", "FLOAT", "Strength of the masked text conditioning (mask_strength).", default=1.0, min=0.0, max=10.0, step=0.05),
            WEIGHT_TYPE, START, END,
            Input("mask", "MASK", "The region (white = inside). Should have the generation's aspect ratio. Without it the "
                  "image acts everywhere.", optional=True),
            Input("positive", "CONDITIONING", "Optional text conditioning to limit to the mask.", optional=True),
            Input("negative", "CONDITIONING", "Optional negative text conditioning to limit to the mask.", optional=True),
        ],
        outputs=[
            Output(PARAMS, "ipadapter_params", "This region's image prompt."),
            Output("CONDITIONING", "positive", "positive with the mask set (unchanged without a mask)."),
            Output("CONDITIONING", "negative", "negative with the mask set (unchanged without a mask)."),
        ],
    )

    @classmethod
    def run(cls, image, image_weight, prompt_weight, weight_type, start_at, end_at, mask=None, positive=None, negative=None):
        WeightType(weight_type)
        validate_images(image)
        if mask is not None:
            import node_helpers

            values = {"mask": mask, "set_area_to_bounds": False, "mask_strength": float(prompt_weight)}
            if positive is not None:
                positive = node_helpers.conditioning_set_values(positive, values)
            if negative is not None:
                negative = node_helpers.conditioning_set_values(negative, values)
        params = {
            "image": [image],
            "attn_mask": [mask],
            "weight": [image_weight],
            "weight_type": [weight_type],
            "start_at": [float(start_at)],
            "end_at": [float(end_at)],
        }
        return params, positive, negative


class CombineParams(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_CombineParams",
        display_name="IPAdapter Combine Params",
        category="ipadapter/params",
        description="Joins regional image prompts into one list.",
        inputs=lambda: [
            Input("params_1", PARAMS, "Regions."),
            Input("params_2", PARAMS, "More regions."),
            *[Input(f"params_{i}", PARAMS, "More regions.", optional=True) for i in range(3, 6)],
        ],
        outputs=[Output(PARAMS, "ipadapter_params", "All the regions.")],
    )

    @classmethod
    def run(cls, params_1, params_2, params_3=None, params_4=None, params_5=None):
        parts = [p for p in (params_1, params_2, params_3, params_4, params_5) if p is not None]
        out = {k: [] for k in FIELDS}
        for i, p in enumerate(parts, start=1):
            p = _params(p, f"params_{i}")
            for k in FIELDS:
                out[k] += list(p[k])
        return (out,)


class ApplyFromParams(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ApplyFromParams",
        display_name="IPAdapter Apply From Params",
        category="ipadapter/params",
        description="Applies every region on one model: each is one more entry on the same cross-attention "
        "patches (the adapter is loaded once), with its own image, mask, weight, weight type and schedule.",
        inputs=lambda: [
            Input("model", "MODEL", "The diffusion model to patch."),
            Input("ipadapter", "IPADAPTER", "The adapter (CLIP-based)."),
            Input("ipadapter_params", PARAMS, "Regions from Regional Conditioning / Combine Params."),
            COMBINE, SCALING,
            Input("image_negative", "IMAGE", "Optional negative image, shared by every region.", optional=True),
            Input("clip_vision", "CLIP_VISION", "CLIP vision encoder; optional when the Unified Loader supplied one.", optional=True),
            UNFOLD, ENCODE_BATCH, CROP,
        ],
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )

    @classmethod
    def run(cls, model, ipadapter, ipadapter_params, combine_embeds, embeds_scaling, image_negative=None,
            clip_vision=None, unfold_batch=False, encode_batch_size=0, crop=CropMode.CENTER.value):
        params = _params(ipadapter_params, "ipadapter_params")
        count = len(params["image"])
        if count == 0:
            return (model.clone(),)
        clip = require_clip(ipadapter, clip_vision)
        check_clip_vision(ipadapter.spec, clip, ipadapter.adapter.name)
        batch = int(encode_batch_size or 0)
        regions = []
        for i in range(count):
            settings = settings_for(
                params["weight"][i], params["weight_type"][i], params["start_at"][i], params["end_at"][i], embeds_scaling,
                combine_embeds, params["attn_mask"][i], unfold=unfold_batch,
            )
            settings.validate()
            regions.append(settings)
        crop_mode = option(CropMode, crop, "crop")
        uncond = negative_features(ipadapter, clip, image_negative, batch, crop_mode)
        output = ipadapter.spec.encoder_output
        patched = model
        for i, settings in enumerate(regions):
            image = validate_images(params["image"][i], f"region {i + 1} image")
            cond = ImageEmbeds(output, encode_clip(clip, image, output, crop_mode, batch))
            patched = apply_embeds(patched, ipadapter, cond, uncond, settings)
        return (patched,)


NODES = [RegionalConditioning, CombineParams, ApplyFromParams]
