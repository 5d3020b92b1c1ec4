"""Every image projection equals diffusers' class fed the same weights through diffusers' own
conversion (`UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers`).

Real published shapes, fp32. Only `image_proj` is materialised; the K/V half stays on the meta
device, so even the SDXL files cost only their projection.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import (
    ImageProjection,
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
)

from ip_adapter_core import IPAdapterModel
from ip_adapter_core.spec import EncoderOutput, ProjectionKind
from ip_adapter_core.testing import adapter_weights

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
BATCH = 2
# `self` of the unbound conversion: only read for device/dtype
_HOST = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)


@contextlib.contextmanager
def _skip_random_init():
    """diffusers builds the module with random init, then loads the state dict strictly (every
    parameter is overwritten, or the load fails): skip the init, which costs more than the test
    for the 200 M-parameter projections."""
    keep = lambda tensor, *args, **kwargs: tensor  # noqa: E731
    with contextlib.ExitStack() as stack:
        for name in ("kaiming_uniform_", "uniform_", "normal_", "xavier_uniform_", "trunc_normal_"):
            stack.enter_context(mock.patch.object(torch.nn.init, name, keep))
        yield


def both_sides(name: str, seed: int = 0):
    weights = adapter_weights(name, seed=seed, dtype=torch.float32, materialize=("image_proj",))
    ours = IPAdapterModel.from_weights(weights)
    with _skip_random_init():
        theirs = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(
            _HOST, dict(weights.image_proj), low_cpu_mem_usage=False
        )
    return ours.eval(), theirs.eval()


def features(spec, seed: int = 1, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if spec.encoder_output is EncoderOutput.IMAGE_EMBEDS:
        return torch.randn(batch, spec.feature_dim, generator=g)
    if spec.encoder_output is EncoderOutput.PENULTIMATE:
        return torch.randn(batch, spec.clip_encoder.tokens, spec.feature_dim, generator=g)
    face = torch.randn(batch, spec.feature_dim, generator=g)
    # insightface: `normed_embedding` (unit norm); the unnorm portrait takes the raw `embedding`
    return face if spec.kind is ProjectionKind.PORTRAIT_UNNORM else F.normalize(face, dim=-1)


def check(ours_out: torch.Tensor, theirs_out: torch.Tensor, spec) -> None:
    assert ours_out.shape == theirs_out.shape == (len(ours_out), spec.tokens, spec.cross_attention_dim)
    assert torch.isfinite(ours_out).all()
    assert ours_out.std() > 0.1  # non-trivial tokens (LayerNorm output)
    diff = (ours_out - theirs_out).abs().max().item()
    assert diff <= TOL, diff


CASES = [
    # (published file, diffusers class the conversion must pick)
    ("ip-adapter_sd15.safetensors", ImageProjection),
    ("ip-adapter_sd15_vit-G.safetensors", ImageProjection),
    ("ip-adapter_sdxl.safetensors", ImageProjection),
    ("ip-adapter-full-face_sd15.safetensors", IPAdapterFullImageProjection),
    ("ip-adapter-plus_sd15.safetensors", IPAdapterPlusImageProjection),  # Resampler 768 / 12 heads
    ("ip-adapter-plus_sdxl_vit-h.safetensors", IPAdapterPlusImageProjection),  # 1280 / 20
    pytest.param("ip_adapter_plus_general.bin", IPAdapterPlusImageProjection, marks=pytest.mark.slow),  # 2048 / 12
    ("ip-adapter-faceid_sd15.bin", IPAdapterFaceIDImageProjection),
    ("ip-adapter-faceid_sdxl.bin", IPAdapterFaceIDImageProjection),
    ("ip-adapter-faceid-portrait_sd15.bin", IPAdapterFaceIDImageProjection),  # 16 tokens
    ("ip-adapter-faceid-portrait_sdxl.bin", IPAdapterFaceIDImageProjection),
    ("ip-adapter-faceid-portrait_sdxl_unnorm.bin", IPAdapterPlusImageProjection),  # Resampler over 1 id token
]


@pytest.mark.parametrize("name, cls", CASES)
def test_projection_matches_diffusers(name, cls):
    ours, theirs = both_sides(name)
    assert type(theirs) is cls
    spec = ours.spec
    # the 100 M+ parameter projections run one image; the others a batch of two
    x = features(spec, batch=1 if spec.base.value != "sd15" and spec.resampler else BATCH)
    with torch.no_grad():
        mine = ours.project(x)
        if spec.kind is ProjectionKind.PORTRAIT_UNNORM:
            reference = theirs(x[:, None, :])  # diffusers: a one-token sequence
        else:
            reference = theirs(x)
    check(mine, reference, spec)


FACEID_PLUS = [
    ("ip-adapter-faceid-plus_sd15.bin", False, 1.0),  # v1: no shortcut
    ("ip-adapter-faceid-plusv2_sd15.bin", True, 1.0),
    ("ip-adapter-faceid-plusv2_sd15.bin", True, 2.5),
    pytest.param("ip-adapter-faceid-plusv2_sdxl.bin", True, 1.5, marks=pytest.mark.slow),  # 2048 / 32 heads
]


@pytest.mark.parametrize("name, shortcut, scale", FACEID_PLUS)
def test_faceid_plus_matches_diffusers(name, shortcut, scale):
    ours, theirs = both_sides(name)
    assert type(theirs) is IPAdapterFaceIDPlusImageProjection
    spec = ours.spec
    batch = BATCH if spec.base.value == "sd15" else 1
    face = features(spec, seed=1, batch=batch)
    clip = torch.randn(batch, 257, spec.clip_dim, generator=torch.Generator().manual_seed(2))
    theirs.clip_embeds = clip[:, None]  # diffusers: [batch, images, tokens, width]
    theirs.shortcut, theirs.shortcut_scale = shortcut, scale
    with torch.no_grad():
        mine = ours.project(face, clip, faceid_v2=shortcut, faceid_v2_scale=scale)
        reference = theirs(face)
    check(mine, reference, spec)


def test_faceid_plus_shortcut_changes_the_tokens():
    """v1 and v2 files hold the same tensors; the shortcut alone makes them differ."""
    ours, _ = both_sides("ip-adapter-faceid-plusv2_sd15.bin")
    face = features(ours.spec)
    clip = torch.randn(BATCH, 257, 1280, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v1 = ours.project(face, clip)
        v2 = ours.project(face, clip, faceid_v2=True, faceid_v2_scale=2.0)
        v2_zero = ours.project(face, clip, faceid_v2=True, faceid_v2_scale=0.0)
        ids = ours.image_proj.norm(ours.image_proj.proj(face).reshape(BATCH, 4, -1))
    assert (v2 - v1).abs().max() > 0.1
    assert torch.allclose(v2, ids + 2.0 * v1, atol=TOL)
    assert torch.equal(v2_zero, ids + 0.0 * v1)
