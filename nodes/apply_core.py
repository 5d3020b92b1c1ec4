"""Applying an adapter to a model clone: validation, projection, weights, patch install.

Every apply node funnels into `apply_embeds`; nodes only translate their inputs."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ip_adapter_core.embeds import CombineMethod, EmbedsScaling, combine
from ..ip_adapter_core.errors import EncoderMismatchError, InvalidInputError, WeightSpecError
from ..ip_adapter_core.masks import normalize_mask
from ..ip_adapter_core.weights import WeightType, resolve_layer_weights
from . import host, patch
from .adapter_store import IPAdapterHandle
from .encoding import ImageEmbeds

log = logging.getLogger("ipadapter_kit")


@dataclass
class ApplySettings:
    weight: float = 1.0
    weight_type: WeightType = WeightType.LINEAR
    weight_composition: float | None = None
    start_at: float = 0.0
    end_at: float = 1.0
    combine: CombineMethod = CombineMethod.CONCAT
    scaling: EmbedsScaling = EmbedsScaling.V_ONLY
    attn_mask: torch.Tensor | None = None
    layer_weights: str = ""
    unfold: bool = False
    frame_weights: Sequence[float] | None = None
    faceid_v2: bool = False
    faceid_v2_scale: float = 1.0

    def validate(self) -> None:
        for name in ("weight", "start_at", "end_at", "faceid_v2_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise WeightSpecError(f"{name} must be a finite number, got {value!r}; set a number in the node.")
        if self.weight_composition is not None and not math.isfinite(self.weight_composition):
            raise WeightSpecError(f"the composition/boost weight must be finite, got {self.weight_composition!r}.")
        if not (0.0 <= self.start_at <= 1.0 and 0.0 <= self.end_at <= 1.0):
            raise WeightSpecError(f"start_at and end_at are fractions of the schedule (0..1); got {self.start_at} and {self.end_at}.")
        if self.start_at > self.end_at:
            raise WeightSpecError(
                f"start_at ({self.start_at}) is after end_at ({self.end_at}): the adapter would never be "
                "active. Set start_at <= end_at."
            )
        if self.frame_weights is not None:
            bad = [w for w in self.frame_weights if not math.isfinite(float(w))]
            if bad or len(self.frame_weights) == 0:
                raise WeightSpecError("the per-frame weight list is empty or holds non-finite values.")


def _combined(features: torch.Tensor, settings: ApplySettings) -> torch.Tensor:
    return features if settings.unfold else combine(features, settings.combine)


def _project(handle: IPAdapterHandle, embeds: ImageEmbeds, settings: ApplySettings, count: int | None = None) -> torch.Tensor:
    """Embeds -> image tokens; without unfold, several images become one token sequence."""
    model = handle.adapter.model
    features = _combined(embeds.features, settings)
    clip = embeds.clip_features
    if clip is not None:
        clip = _combined(clip, settings)
    if count is not None and features.shape[0] == 1 and count > 1:
        features = features.expand(count, *features.shape[1:])
        clip = clip.expand(count, *clip.shape[1:]) if clip is not None else None
    tokens = model.project(features, clip, settings.faceid_v2, settings.faceid_v2_scale)
    if not settings.unfold:
        tokens = tokens.reshape(1, -1, tokens.shape[-1])
    return tokens


def _distinct_frames(embeds: ImageEmbeds | None) -> tuple[ImageEmbeds | None, tuple[int, ...] | None]:
    """Unfold: keep one row per distinct reference (schedules repeat each image over many
    frames) and a frame -> row index, so K/V memory grows with images, not frames."""
    if embeds is None or embeds.count <= 1:
        return embeds, None
    flat = embeds.features.reshape(embeds.count, -1)
    if embeds.clip_features is not None:
        flat = torch.cat([flat, embeds.clip_features.reshape(embeds.count, -1)], dim=1)
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    first: dict[int, int] = {}
    for frame, row in enumerate(inverse.tolist()):
        first.setdefault(row, frame)
    keep = sorted(first.values())
    if len(keep) == embeds.count:
        return embeds, None
    row_of = {frame: n for n, frame in enumerate(keep)}
    index = tuple(row_of[first[row]] for row in inverse.tolist())
    clip = embeds.clip_features[keep] if embeds.clip_features is not None else None
    return ImageEmbeds(embeds.output, embeds.features[keep], clip), index


def _check_negative_count(uncond: ImageEmbeds, count: int, what: str) -> None:
    """With concat, each image's tokens sit side by side: the negative must be one image (used
    for every slot) or one per image, or the two token sequences cannot line up."""
    if uncond.count not in (1, count):
        raise InvalidInputError(
            f"The negative (image_negative / neg_embeds) holds {uncond.count} images but there are {count} "
            f"{what} images, and combine_embeds is 'concat' (the images' tokens side by side). Use 1 negative "
            f"image, {count} of them, or another combine_embeds method."
        )


def _layer_kv(handle: IPAdapterHandle, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    store = host.storage_device()
    return [(kv.k.float().to(store), kv.v.float().to(store)) for kv in handle.adapter.model.layer_kv(tokens)]


def apply_embeds(
    model,
    handle: IPAdapterHandle,
    cond: ImageEmbeds,
    uncond: ImageEmbeds,
    settings: ApplySettings,
    alt: ImageEmbeds | None = None,
):
    """A clone of `model` with this adapter added to its cross-attention."""
    settings.validate()
    spec, name = handle.spec, handle.adapter.name
    layers = host.cross_attention_layers(model)
    host.check_adapter_fits(spec, model, layers, name)
    for which, embeds in (("pos_embeds", cond), ("neg_embeds", uncond), ("composition embeds", alt)):
        if embeds is not None and embeds.output is not spec.encoder_output:
            clip = spec.clip_encoder
            source = f"the {spec.encoder.value} image encoder"
            if clip is not None and not spec.needs_face:
                source += f" ('{clip.file_name}')"
            raise EncoderMismatchError(
                f"'{name}' ({spec.title}) needs {spec.encoder_output.value} from {source}, but the {which} hold "
                f"{embeds.output.value}: they were encoded for another kind of adapter. Encode the image with "
                "IPAdapter Encode Image using this adapter."
            )
    weights = resolve_layer_weights(
        settings.weight_type, layers, settings.weight, settings.weight_composition, settings.layer_weights
    )
    clone = model.clone()
    if settings.start_at == settings.end_at or all(w.weight == 0 for w in weights):
        log.info("IPAdapter '%s' has no effect with these settings (weight 0 or empty start/end range)", name)
        return clone
    mask = normalize_mask(settings.attn_mask) if settings.attn_mask is not None else None

    cond_index = uncond_index = alt_index = None
    if settings.unfold:
        cond, cond_index = _distinct_frames(cond)
        uncond, uncond_index = _distinct_frames(uncond)
        alt, alt_index = _distinct_frames(alt)

    count = cond.count if (settings.combine is CombineMethod.CONCAT and not settings.unfold) else None
    alt_count = alt.count if (alt is not None and count is not None and alt.count != count) else None
    if count is not None:
        _check_negative_count(uncond, count, "reference")
    if alt_count is not None:
        _check_negative_count(uncond, alt_count, "composition")

    host.load_to_device(handle.adapter.patcher)
    with torch.no_grad():
        tok_cond = _project(handle, cond, settings)
        tok_uncond = _project(handle, uncond, settings, count)
        tok_alt = _project(handle, alt, settings) if alt is not None else None
        kv_cond = _layer_kv(handle, tok_cond)
        kv_uncond = _layer_kv(handle, tok_uncond)
        kv_alt = _layer_kv(handle, tok_alt) if tok_alt is not None else None
        # concat: the negative is a token sequence as long as the one it stands against
        kv_alt_uncond = _layer_kv(handle, _project(handle, uncond, settings, alt_count)) if alt_count else None

    sigma_start = sigma_end = None
    if (settings.start_at, settings.end_at) != (0.0, 1.0):
        sigma_start, sigma_end = host.sigma_range(model, settings.start_at, settings.end_at)
    frame_weights = None
    if settings.frame_weights is not None:
        frame_weights = torch.tensor([float(w) for w in settings.frame_weights])
    prompt = patch.PreparedPrompt(
        cond=kv_cond,
        uncond=kv_uncond,
        alt=kv_alt,
        alt_uncond=kv_alt_uncond,
        unfold=settings.unfold,
        sigma_start=sigma_start,
        sigma_end=sigma_end,
        mask=mask.to(host.storage_device()) if mask is not None else None,
        frame_weights=frame_weights,
        cond_index=cond_index,
        uncond_index=uncond_index,
        alt_index=alt_index,
    )
    entries = {
        layer.index: patch.LayerEntry(prompt, layer.index, lw.weight, lw.route, settings.scaling)
        for layer, lw in zip(layers, weights)
        if lw.weight != 0
    }
    patch.install(clone, layers, entries)
    host.track_cond_roles(clone)  # positive/negative chunks by role (DualCFG & co.)
    return clone
