"""Flux and SD3.5 (DiT) IP-Adapters, host-free: formats, recognition, modules, math.

    XLabs flux-ip-adapter v1/v2   CLIP-L image_embeds -> 4/16 tokens, K/V on the 19 double blocks
    InstantX FLUX.1-dev           SigLIP pooled output -> 128 tokens, K/V on all 57 blocks
    InstantX SD3.5-Large          SigLIP hidden states -> timestep resampler, AdaLN K/V per joint block

Nothing here imports ComfyUI; nodes/dit*.py wire it into the host.
"""

from .catalog import PUBLISHED_DIT, PublishedDitAdapter, published_for
from .detect import describe_dit, encoder_of, is_dit_state, siglip_head_prefix
from .layouts import canonical_layout, published_layout, to_canonical
from .projection import DitAdapterModel, SiglipPoolingHead, TimeResampler
from .spec import (
    DIT_ENCODERS,
    DitAdapterSpec,
    DitBase,
    DitEncoder,
    DitEncoderOutput,
    DitKind,
    TimeResamplerSpec,
)

__all__ = [
    "DIT_ENCODERS",
    "PUBLISHED_DIT",
    "DitAdapterModel",
    "DitAdapterSpec",
    "DitBase",
    "DitEncoder",
    "DitEncoderOutput",
    "DitKind",
    "PublishedDitAdapter",
    "SiglipPoolingHead",
    "TimeResampler",
    "TimeResamplerSpec",
    "canonical_layout",
    "describe_dit",
    "encoder_of",
    "is_dit_state",
    "published_for",
    "published_layout",
    "siglip_head_prefix",
    "to_canonical",
]
