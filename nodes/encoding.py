"""Reference images -> the image features an adapter consumes (ComfyUI's CLIP_VISION)."""

from __future__ import annotations

import enum
import hashlib
import inspect
import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import comfy.model_management as mm

from ..ip_adapter_core.errors import EncoderMismatchError, ImageInputError, MaskInputError
from ..ip_adapter_core.masks import normalize_mask
from ..ip_adapter_core.spec import CLIP_ENCODERS, AdapterSpec, EncoderOutput

log = logging.getLogger("ipadapter_kit")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
MAX_SIDE = 8192


class CropMode(str, enum.Enum):
    CENTER = "center"  # cover the square, crop the overflow (CLIP's own preprocessing)
    PAD = "pad"  # fit inside the square, fill the rest with CLIP's mean colour
    SQUASH = "squash"  # resize to a square, ignoring the aspect ratio


@dataclass(eq=False)
class ImageEmbeds:
    """Encoder outputs of reference images, before the adapter's projection."""

    output: EncoderOutput
    features: torch.Tensor  # [n, width] (image_embeds / faces) or [n, tokens, width]
    clip_features: torch.Tensor | None = None  # FaceID-Plus: CLIP hidden states of the face crops

    @property
    def count(self) -> int:
        return int(self.features.shape[0])

    def __deepcopy__(self, memo):
        return self


def validate_images(image, what: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE -> float [B, H, W, 3] in [0, 1], or a clear error."""
    if not isinstance(image, torch.Tensor):
        raise ImageInputError(f"{what} must be an IMAGE tensor, got {type(image).__name__}.")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ImageInputError(
            f"{what} must be [batch, height, width, channels]; got shape {list(image.shape)}. Connect an IMAGE "
            "output (e.g. Load Image) here."
        )
    b, h, w, c = image.shape
    if b == 0:
        raise ImageInputError(f"{what} is an empty batch (0 images). Connect at least one image.")
    if h == 0 or w == 0:
        raise ImageInputError(f"{what} has no pixels (shape {list(image.shape)}); check the node that made it (a crop or resize to 0 px?).")
    if max(h, w) > MAX_SIDE:
        raise ImageInputError(
            f"{what} is {w}x{h} pixels; the encoder looks at {224}-{336} px, so anything over "
            f"{MAX_SIDE} px per side only wastes memory. Downscale it first (e.g. ImageScale)."
        )
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    elif c != 3:
        raise ImageInputError(f"{what} has {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA). Convert it to RGB first.")
    image = image.float()
    if not torch.isfinite(image).all():
        raise ImageInputError(f"{what} contains NaN or infinite pixel values; check the node that made it.")
    return image.clamp(0.0, 1.0)


def mask_pixels(image: torch.Tensor, mask, what: str = "mask") -> torch.Tensor:
    """Fade the unmasked part of [B, H, W, 3] images to CLIP's mean colour (which normalises to 0),
    so the encoder sees only the masked region. One mask for all images, or one per image."""
    m = normalize_mask(mask, what)
    b, h, w, _ = image.shape
    if m.shape[0] not in (1, b):
        raise MaskInputError(f"{what} has {m.shape[0]} masks for {b} images; give one mask, or one per image.")
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    mean = torch.tensor(CLIP_MEAN, dtype=image.dtype, device=image.device).expand_as(image)
    # lerp is exact at 0 and 1: the encoder rounds pixels to 8 bits, so an ulp can flip a level
    return torch.lerp(mean, image, m[..., None].to(image.device, image.dtype))


def to_square(image: torch.Tensor, mode: CropMode, size: int) -> torch.Tensor:
    """[B, H, W, 3] -> [B, size, size, 3] according to `mode` (CENTER leaves it to CLIP)."""
    b, h, w, _ = image.shape
    if mode is CropMode.CENTER or h == w:
        return image
    x = image.movedim(-1, 1)
    if mode is CropMode.SQUASH:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    else:
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        canvas = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1).repeat(b, 1, size, size)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[:, :, top : top + nh, left : left + nw] = x
        x = canvas
    return x.movedim(1, -1).clamp(0.0, 1.0)


def _encode_image(clip_vision, image: torch.Tensor):
    params = inspect.signature(clip_vision.encode_image).parameters
    if "crop" in params:
        return clip_vision.encode_image(image, crop=True)
    return clip_vision.encode_image(image)


def clip_image_size(clip_vision) -> int:
    return int(getattr(clip_vision, "image_size", 224))


def encode_clip(clip_vision, image: torch.Tensor, output: EncoderOutput, crop: CropMode, batch_size: int = 0) -> torch.Tensor:
    """CLIP features of every image; `batch_size` > 0 encodes in chunks (long videos)."""
    image = validate_images(image)
    image, index = _distinct_images(image)
    image = to_square(image, crop, clip_image_size(clip_vision))
    chunks = [image] if batch_size <= 0 else list(image.split(batch_size))
    feats = []
    bar = _progress(len(chunks))
    for chunk in chunks:
        out = _encode_image(clip_vision, chunk)
        feats.append(out["image_embeds"] if output is EncoderOutput.IMAGE_EMBEDS else out["penultimate_hidden_states"])
        if bar is not None:
            bar.update(1)
    features = torch.cat(feats).to(mm.intermediate_device())
    return features if index is None else features[index]


def _distinct_images(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode each distinct picture once: schedules repeat every reference over many frames."""
    if image.shape[0] <= 1:
        return image, None
    seen: dict[bytes, int] = {}
    index = []
    for frame in image:
        digest = hashlib.blake2b(frame.contiguous().cpu().numpy().tobytes(), digest_size=16).digest()
        index.append(seen.setdefault(digest, len(seen)))
    if len(seen) == image.shape[0]:
        return image, None
    firsts = sorted({row: i for i, row in reversed(list(enumerate(index)))}.items())
    return image[[i for _, i in firsts]], torch.tensor(index)


def _progress(total: int):
    """ComfyUI's progress bar on the running node, when encoding takes several chunks."""
    if total <= 1:
        return None
    import comfy.utils

    return comfy.utils.ProgressBar(total)


_zero_features: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def zero_pixel_features(clip_vision, output: EncoderOutput) -> torch.Tensor:
    """Features of an all-zero normalised image, the reference implementations' uncond input
    (computed once per encoder and output kind)."""
    try:
        per_encoder = _zero_features.setdefault(clip_vision, {})
    except TypeError:  # not weak-referenceable
        per_encoder = {}
    if output not in per_encoder:
        per_encoder[output] = _zero_pixel_features(clip_vision, output)
    return per_encoder[output]


def _zero_pixel_features(clip_vision, output: EncoderOutput) -> torch.Tensor:
    size = clip_image_size(clip_vision)
    if hasattr(clip_vision, "encode_pixels"):  # HF folder encoder
        out = clip_vision.encode_pixels(torch.zeros(1, 3, size, size))
        key = "image_embeds" if output is EncoderOutput.IMAGE_EMBEDS else "penultimate_hidden_states"
        return out[key].float()
    mm.load_model_gpu(clip_vision.patcher)
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    index = 2 if output is EncoderOutput.IMAGE_EMBEDS else 1
    return out[index].float().to(mm.intermediate_device())


def encoder_widths(clip_vision) -> tuple[int | None, int | None, int]:
    """(hidden width, image_embeds width, image size) of a CLIP_VISION, where it shows them."""
    size = clip_image_size(clip_vision)
    model = getattr(clip_vision, "model", None)
    proj = getattr(model, "visual_projection", None)
    return getattr(proj, "in_features", None), getattr(proj, "out_features", None), size


def check_clip_vision(spec: AdapterSpec, clip_vision, adapter_name: str) -> None:
    """Fail early, naming the right encoder, when the CLIP vision model cannot produce the
    features this adapter was trained on."""
    need = spec.clip_encoder
    if need is None or clip_vision is None:
        return
    hidden, embeds, size = encoder_widths(clip_vision)
    if hidden is None:
        return  # unknown encoder type: the feature check at projection time still applies
    output = spec.clip_output or spec.encoder_output
    width = spec.clip_dim if spec.clip_output else spec.feature_dim
    have_width = embeds if output is EncoderOutput.IMAGE_EMBEDS else hidden
    size_ok = output is EncoderOutput.IMAGE_EMBEDS or size == need.image_size
    if have_width == width and size_ok:
        return
    have = next(
        (
            f"{i.encoder.value} ({i.file_name})"
            for i in CLIP_ENCODERS.values()
            if (i.hidden_size, i.projection_dim, i.image_size) == (hidden, embeds, size)
        ),
        f"an encoder with {hidden}-d hidden states, {embeds}-d image embeds at {size}px",
    )
    raise EncoderMismatchError(
        f"'{adapter_name}' ({spec.title}) needs the {need.encoder.value} image encoder "
        f"('{need.file_name}' in models/clip_vision): {width}-d {output.value}"
        f"{f' at {need.image_size}px' if output is EncoderOutput.PENULTIMATE else ''}. The connected CLIP "
        f"vision model is {have}. Load the matching encoder with a CLIPVisionLoader."
    )


def require_clip_input(spec: AdapterSpec, clip_vision, adapter_name: str) -> None:
    """Refuse an adapter that does not take plain CLIP features, or a missing CLIP vision model."""
    if not spec.needs_clip or spec.needs_face:
        raise EncoderMismatchError(
            f"'{adapter_name}' ({spec.title}) takes {spec.encoder.value} features, not plain CLIP image "
            "features. Use the FaceID nodes for it."
        )
    if clip_vision is None:
        raise EncoderMismatchError(
            f"'{adapter_name}' needs a CLIP vision model to encode the image: connect a CLIPVisionLoader "
            f"with '{spec.clip_encoder.file_name}' to clip_vision, or use the Unified Loader."
        )


def embeds_from_images(
    spec: AdapterSpec,
    clip_vision,
    image: torch.Tensor,
    negative: torch.Tensor | None,
    crop: CropMode,
    adapter_name: str,
    batch_size: int = 0,
) -> tuple[ImageEmbeds, ImageEmbeds]:
    """(cond, uncond) embeds for a CLIP-based adapter."""
    require_clip_input(spec, clip_vision, adapter_name)
    check_clip_vision(spec, clip_vision, adapter_name)
    output = spec.encoder_output
    cond = encode_clip(clip_vision, image, output, crop, batch_size)
    if negative is not None:
        uncond = encode_clip(clip_vision, negative, output, crop, batch_size)
    elif output is EncoderOutput.IMAGE_EMBEDS:
        uncond = torch.zeros_like(cond[:1])
    else:
        uncond = zero_pixel_features(clip_vision, output)
    return ImageEmbeds(output, cond), ImageEmbeds(output, uncond)
