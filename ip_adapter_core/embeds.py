"""Combining the features of several reference images, and K/V scaling modes."""

from __future__ import annotations

import enum

import torch

from .errors import InvalidInputError


class CombineMethod(str, enum.Enum):
    CONCAT = "concat"  # keep every image; their tokens are concatenated (one softmax)
    ADD = "add"
    SUBTRACT = "subtract"  # first image minus the mean of the others
    AVERAGE = "average"
    NORM_AVERAGE = "norm average"  # average of unit-length embeddings, rescaled to the mean length
    MAX = "max"
    MIN = "min"


def combine(features: torch.Tensor, method: CombineMethod) -> torch.Tensor:
    """Reduce [n, ...] features over the image axis (CONCAT returns them unchanged)."""
    if features.shape[0] == 0:
        raise InvalidInputError("No image features to combine: the image batch is empty.")
    if method is CombineMethod.CONCAT or features.shape[0] == 1:
        return features
    if method is CombineMethod.ADD:
        return features.sum(0, keepdim=True)
    if method is CombineMethod.SUBTRACT:
        return features[:1] - features[1:].mean(0, keepdim=True)
    if method is CombineMethod.AVERAGE:
        return features.mean(0, keepdim=True)
    if method is CombineMethod.NORM_AVERAGE:
        norms = features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (features / norms).mean(0, keepdim=True) * norms.mean(0, keepdim=True)
    if method is CombineMethod.MAX:
        return features.max(0, keepdim=True).values
    if method is CombineMethod.MIN:
        return features.min(0, keepdim=True).values
    raise ValueError(method)


class EmbedsScaling(str, enum.Enum):
    V_ONLY = "V only"  # w * Attn(q, K, V): the reference formula
    K_V = "K+V"  # Attn(q, wK, wV)
    K_V_C_PENALTY = "K+V w/ C penalty"  # as K+V with w * C / 1280
    K_MEAN_V_C_PENALTY = "K+mean(V) w/ C penalty"  # wK, and only V's token mean scaled


def scale_kv(k: torch.Tensor, v: torch.Tensor, weight: float, mode: EmbedsScaling) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Apply a scaling mode to one layer's K/V; returns (k, v, output scale)."""
    if mode is EmbedsScaling.V_ONLY:
        return k, v, weight
    w = weight
    if mode in (EmbedsScaling.K_V_C_PENALTY, EmbedsScaling.K_MEAN_V_C_PENALTY):
        w = weight * k.shape[-1] / 1280
    if mode is EmbedsScaling.K_MEAN_V_C_PENALTY:
        mean = v.mean(dim=-2, keepdim=True)
        return k * w, (v - mean) + mean * w, 1.0
    return k * w, v * w, 1.0
