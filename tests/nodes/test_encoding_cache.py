"""Encoding work done once: repeated frames are encoded once, the default negative once
per encoder."""

from __future__ import annotations

import torch

import tiny
from ipadapter_kit.ip_adapter_core.spec import EncoderOutput
from ipadapter_kit.nodes import encoding
from ipadapter_kit.nodes.encoding import CropMode, encode_clip, zero_pixel_features


def test_repeated_frames_are_encoded_once_with_identical_results(monkeypatch):
    clip = tiny.tiny_clip_vision(seed=3)
    pictures = torch.rand(3, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    frames = pictures[torch.tensor([0, 0, 1, 2, 1, 0, 2])]
    encoded = []
    real = encoding._encode_image
    monkeypatch.setattr(encoding, "_encode_image", lambda cv, img: encoded.append(img.shape[0]) or real(cv, img))
    batch = encode_clip(clip, frames, EncoderOutput.PENULTIMATE, CropMode.PAD)
    assert sum(encoded) == 3
    one_by_one = torch.cat([encode_clip(clip, f[None], EncoderOutput.PENULTIMATE, CropMode.PAD) for f in frames])
    assert torch.equal(batch, one_by_one)


def test_default_negative_is_computed_once_per_encoder(monkeypatch):
    clip = tiny.tiny_clip_vision(seed=4)
    calls = []
    real = encoding._zero_pixel_features
    monkeypatch.setattr(encoding, "_zero_pixel_features", lambda cv, out: calls.append(out) or real(cv, out))
    first = zero_pixel_features(clip, EncoderOutput.PENULTIMATE)
    again = zero_pixel_features(clip, EncoderOutput.PENULTIMATE)
    assert first is again and calls == [EncoderOutput.PENULTIMATE]
    other = tiny.tiny_clip_vision(seed=5)
    assert not torch.equal(zero_pixel_features(other, EncoderOutput.PENULTIMATE), first)
