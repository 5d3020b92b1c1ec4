"""Non-square references and fine detail: tiled references, the ClipVision enhancer, and
image preparation at the encoder's own resolution.

Tiled: the reference is split into encoder-sized tiles and each tile becomes one more
entry on the same attn2 patches (one `apply_embeds` on the successive clone), masked to
the part of the picture it covers. The adapter weights are loaded once and shared; each
tile only adds its projected image K/V.
"""

from __future__ import annotations

import enum

import numpy as np
import torch
import torch.nn.functional as F

from ..ip_adapter_core import tiles as tiling
from ..ip_adapter_core.errors import InvalidInputError
from ..ip_adapter_core.imageops import CropPosition, sharpen_cas, square
from ..ip_adapter_core.masks import normalize_mask
from ..ip_adapter_core.spec import EncoderOutput
from ._api import Input, NodeSpec, Output, PackNode
from .apply import COMBINE, END, MASK, SCALING, START, WEIGHT_TYPE
from .apply_core import apply_embeds
from .apply_helpers import ENCODE_BATCH, FRAME_WEIGHT_NOTE, UNFOLD, encoder_size, negative_features, require_clip, settings_for
from .encoding import CropMode, ImageEmbeds, check_clip_vision, encode_clip, validate_images

_MODEL = Input("model", "MODEL", "The diffusion model to patch (SD1.5, SDXL or Kolors UNet).")
_ADAPTER = Input("ipadapter", "IPADAPTER", "An adapter from the IPAdapter Model Loader or Unified Loader (CLIP-based).")
_WEIGHT = Input("weight", "FLOAT", "Strength of the image prompt." + FRAME_WEIGHT_NOTE, default=1.0, min=-1.0, max=5.0, step=0.05)
_NEGATIVE = Input("image_negative", "IMAGE", "Optional image whose features act as the negative (uncond) image prompt.", optional=True)
_CLIP = Input("clip_vision", "CLIP_VISION", "CLIP vision encoder; optional when the Unified Loader supplied one.", optional=True)
_SHARPEN = Input("sharpening", "FLOAT", "Contrast-adaptive sharpening of the reference before encoding (0 = none).", default=0.0, min=0.0, max=1.0, step=0.05)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H, W, C] -> [B, h, w, C], bicubic with antialiasing (CLIP's own resampling)."""
    if tuple(image.shape[1:3]) == tuple(size):
        return image
    x = F.interpolate(image.movedim(-1, 1), size=size, mode="bicubic", antialias=True, align_corners=False)
    return x.movedim(1, -1).clamp(0.0, 1.0)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0.0, 1.0)


class ApplyTiled(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ApplyTiled",
        display_name="IPAdapter Tiled",
        category="ipadapter/tiled",
        description="For non-square references: the image is cut into encoder-sized tiles (2x2 when nearly square, "
        "else along the long side, up to 4:1), each tile acts only on the part of the picture it covers. The "
        "generation should have the reference's aspect ratio. Outputs the tiles and their masks for inspection.",
        inputs=lambda: [
            _MODEL, _ADAPTER,
            Input("image", "IMAGE", "Reference image(s); a batch is tiled image by image (same size)."),
            _WEIGHT, WEIGHT_TYPE, COMBINE, START, END, _SHARPEN, SCALING,
            _NEGATIVE,
            Input("attn_mask", "MASK", "Optional mask in the reference's frame; each tile's region is multiplied by it.", optional=True),
            _CLIP, UNFOLD, ENCODE_BATCH,
        ],
        outputs=[
            Output("MODEL", "model", "A patched clone of the model (one adapter entry per tile)."),
            Output("IMAGE", "tiles", "The tiles as encoded (tile-major: all images of tile 1, then tile 2, ...)."),
            Output("MASK", "masks", "The region of each tile, in the prepared reference's frame."),
        ],
    )

    @classmethod
    def run(cls, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at, sharpening, embeds_scaling,
            image_negative=None, attn_mask=None, clip_vision=None, unfold_batch=False, encode_batch_size=0):
        base = settings_for(weight, weight_type, start_at, end_at, embeds_scaling, combine_embeds, unfold=unfold_batch)
        base.validate()
        clip = require_clip(ipadapter, clip_vision)
        check_clip_vision(ipadapter.spec, clip, ipadapter.adapter.name)
        images = validate_images(image)
        plan = tiling.plan_tiles(int(images.shape[1]), int(images.shape[2]), encoder_size(ipadapter, clip_vision))
        top, left, h, w = plan.crop
        prepared = sharpen_cas(_resize(images[:, top : top + h, left : left + w], plan.size), float(sharpening))
        user_mask = None
        if attn_mask is not None:
            m = _resize_mask(normalize_mask(attn_mask), tuple(images.shape[1:3]))
            user_mask = _resize_mask(m[:, top : top + h, left : left + w], plan.size)  # [M, H, W]
        regions = tiling.region_masks(plan)  # [T, H, W]
        cut = tiling.cut_tiles(prepared, plan)  # [T, B, t, t, C]
        batch = int(encode_batch_size or 0)
        uncond = negative_features(ipadapter, clip, image_negative, batch)
        output = ipadapter.spec.encoder_output
        patched = model
        for t in range(plan.count):
            mask = regions[t : t + 1] if user_mask is None else regions[t : t + 1] * user_mask
            settings = settings_for(weight, weight_type, start_at, end_at, embeds_scaling, combine_embeds, mask, unfold=unfold_batch)
            cond = ImageEmbeds(output, encode_clip(clip, cut[t], output, CropMode.CENTER, batch))
            patched = apply_embeds(patched, ipadapter, cond, uncond, settings)
        out_masks = regions if user_mask is None else regions * user_mask[:1]
        return patched, cut.reshape(-1, *cut.shape[2:]), out_masks


class ClipVisionEnhancer(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ClipVisionEnhancer",
        display_name="IPAdapter ClipVision Enhancer",
        category="ipadapter/tiled",
        description="Adds fine detail to the reference's features: the image is also encoded as enhance_tiles x "
        "enhance_tiles tiles at the encoder's full resolution, the tiles' patch tokens are stitched into one grid "
        "and pooled back, and blended with the plain encoding. Best with Plus adapters (token features).",
        inputs=lambda: [
            _MODEL, _ADAPTER,
            Input("image", "IMAGE", "Reference image(s); ideally at least enhance_tiles x the encoder's resolution."),
            _WEIGHT, WEIGHT_TYPE, COMBINE, START, END, SCALING,
            Input("enhance_tiles", "INT", "Tiles per side (1 = no enhancement).", default=2, min=1, max=16, step=1),
            Input("enhance_ratio", "FLOAT", "Share of the tile features in the result: 0 = the plain encoding, 1 = tiles "
                  "only. The same meaning for one image and for a batch.", default=0.5, min=0.0, max=1.0, step=0.05),
            _NEGATIVE, MASK, _CLIP, UNFOLD, ENCODE_BATCH,
            Input("crop_position", "COMBO", "How a non-square reference becomes square before tiling.",
                  optional=True, default=CropPosition.CENTER.value, options=[p.value for p in CropPosition]),
        ],
        outputs=[Output("MODEL", "model", "A patched clone of the model.")],
    )

    @classmethod
    def run(cls, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at, embeds_scaling,
            enhance_tiles, enhance_ratio, image_negative=None, attn_mask=None, clip_vision=None, unfold_batch=False,
            encode_batch_size=0, crop_position=CropPosition.CENTER.value):
        settings = settings_for(weight, weight_type, start_at, end_at, embeds_scaling, combine_embeds, attn_mask, unfold=unfold_batch)
        settings.validate()
        clip = require_clip(ipadapter, clip_vision)
        check_clip_vision(ipadapter.spec, clip, ipadapter.adapter.name)
        cond = enhanced_features(clip, ipadapter.spec.encoder_output, validate_images(image), int(enhance_tiles),
                                 float(enhance_ratio), CropPosition(crop_position), int(encode_batch_size or 0))
        uncond = negative_features(ipadapter, clip, image_negative, int(encode_batch_size or 0))
        return (apply_embeds(model, ipadapter, cond, uncond, settings),)


def enhanced_features(clip, output: EncoderOutput, images: torch.Tensor, tiles: int, ratio: float,
                      position: CropPosition = CropPosition.CENTER, batch_size: int = 0) -> ImageEmbeds:
    """(1 - ratio) * plain features + ratio * merged tile features, per image."""
    if not 1 <= tiles <= 16:
        raise InvalidInputError(f"enhance_tiles must be 1..16, got {tiles}.")
    size = int(getattr(clip, "image_size", 224))
    squares = square(images, position)
    full = encode_clip(clip, _resize(squares, (size, size)), output, CropMode.CENTER, batch_size)
    if tiles == 1 or ratio == 0.0:
        return ImageEmbeds(output, full)
    b = squares.shape[0]
    grid = tiling.grid_tiles(_resize(squares, (tiles * size, tiles * size)), tiles)  # [B, t*t, s, s, C]
    per_tile = encode_clip(clip, grid.reshape(-1, *grid.shape[2:]), output, CropMode.CENTER, batch_size)
    per_tile = per_tile.reshape(b, tiles * tiles, *per_tile.shape[1:])
    if output is EncoderOutput.PENULTIMATE:
        merged = tiling.merge_tile_tokens(per_tile, tiles)
    else:
        merged = tiling.merge_tile_embeds(per_tile)
    return ImageEmbeds(output, tiling.blend(full, merged, ratio))


class Interpolation(str, enum.Enum):
    LANCZOS = "LANCZOS"
    BICUBIC = "BICUBIC"
    HAMMING = "HAMMING"
    BILINEAR = "BILINEAR"
    BOX = "BOX"
    NEAREST = "NEAREST"


def resize_pil(image: torch.Tensor, size: int, method: Interpolation) -> torch.Tensor:
    """[B, H, W, C] -> [B, size, size, C] with PIL's filters on float data (no 8-bit rounding)."""
    from PIL import Image

    resample = getattr(Image, "Resampling", Image)
    filt = getattr(resample, method.value)
    arr = image.detach().float().cpu().numpy()
    out = np.empty((arr.shape[0], size, size, arr.shape[3]), dtype=np.float32)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[3]):
            plane = Image.fromarray(np.ascontiguousarray(arr[b, :, :, c]))
            out[b, :, :, c] = np.asarray(plane.resize((size, size), filt), dtype=np.float32)
    return torch.from_numpy(out).clamp(0.0, 1.0)


class PrepImage(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_PrepImage",
        display_name="IPAdapter Prep Image For ClipVision",
        category="ipadapter/utils",
        description="Crops (or pads) references to a square, resizes them to the encoder's own resolution (224; "
        "336 for ViT-L-336 / Kolors) and optionally sharpens them, so you choose what the encoder sees instead "
        "of its centre crop.",
        inputs=lambda: [
            Input("image", "IMAGE", "Reference image(s)."),
            Input("interpolation", "COMBO", "Resampling filter.", default=Interpolation.LANCZOS.value, options=[m.value for m in Interpolation]),
            Input("crop_position", "COMBO", "Which part of a non-square image to keep (top/bottom for tall images, "
                  "left/right for wide ones); pad fits the whole image inside the square (CLIP's mean colour around it).",
                  default=CropPosition.CENTER.value, options=[p.value for p in CropPosition]),
            _SHARPEN,
            Input("size", "COMBO", "Output size: auto = the connected encoder's (or adapter's) resolution, else 224.",
                  optional=True, default="auto", options=["auto", "224", "336"]),
            Input("clip_vision", "CLIP_VISION", "Optional: the encoder whose resolution auto uses.", optional=True),
            Input("ipadapter", "IPADAPTER", "Optional: the adapter whose encoder resolution auto uses.", optional=True),
        ],
        outputs=[Output("IMAGE", "image", "Square images at the encoder's resolution.")],
    )

    @classmethod
    def run(cls, image, interpolation, crop_position, sharpening, size="auto", clip_vision=None, ipadapter=None):
        if size == "auto":
            side = encoder_size(ipadapter, clip_vision) if (ipadapter is not None or clip_vision is not None) else 224
        else:
            side = int(size)
        images = square(validate_images(image), CropPosition(crop_position))
        out = resize_pil(images, side, Interpolation(interpolation))
        return (sharpen_cas(out, float(sharpening)),)


NODES = [ApplyTiled, ClipVisionEnhancer, PrepImage]
