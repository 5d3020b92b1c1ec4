"""Face selection and 5-point alignment (host-free, no insightface, no cv2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ip_adapter_core.errors import InvalidInputError
from ip_adapter_core.face import (
    ARCFACE_TEMPLATE,
    DetectedFace,
    FaceOrder,
    align_face,
    alignment_matrix,
    analyse_frames,
    crop_size,
    pick_face,
    similarity_transform,
    template_for,
    to_uint8_rgb,
    warp_affine,
)
from ip_adapter_core.spec import BaseModel
from ip_adapter_core.testing.faces import StubFaceAnalyzer, face_image


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


@pytest.mark.parametrize("angle, scale, tx, ty", [(0.0, 1.0, 0.0, 0.0), (0.3, 2.5, 40.0, -7.0), (-1.2, 0.4, 3.0, 90.0), (3.0, 1.7, -20.0, 5.0)])
def test_similarity_transform_recovers_a_known_transform(angle, scale, tx, ty):
    m = _similarity(angle, scale, tx, ty)
    src = ARCFACE_TEMPLATE + np.random.default_rng(0).normal(0, 3, ARCFACE_TEMPLATE.shape)
    est = similarity_transform(src, _apply(m, src))
    np.testing.assert_allclose(est, m, atol=1e-9)


def test_similarity_transform_is_the_least_squares_fit():
    rng = np.random.default_rng(1)
    src = rng.normal(0, 30, (5, 2))
    dst = _apply(_similarity(0.7, 1.3, 5, 9), src) + rng.normal(0, 2, (5, 2))
    best = similarity_transform(src, dst)
    err = ((_apply(best, src) - dst) ** 2).sum()
    for _ in range(50):  # no nearby similarity fits better
        a, s = math.atan2(best[1, 0], best[0, 0]), math.hypot(best[0, 0], best[1, 0])
        other = _similarity(a + rng.normal(0, 0.01), s * (1 + rng.normal(0, 0.01)), best[0, 2] + rng.normal(0, 0.3), best[1, 2] + rng.normal(0, 0.3))
        assert ((_apply(other, src) - dst) ** 2).sum() >= err - 1e-9


def test_degenerate_landmarks_are_refused():
    with pytest.raises(InvalidInputError):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_templates_follow_norm_crop_scaling():
    np.testing.assert_allclose(template_for(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for(224), ARCFACE_TEMPLATE * 2)
    np.testing.assert_allclose(template_for(336), ARCFACE_TEMPLATE * 3)
    t256 = ARCFACE_TEMPLATE * 2.0
    t256[:, 0] += 16.0
    np.testing.assert_allclose(template_for(256), t256)
    assert (crop_size(BaseModel.SD15), crop_size(BaseModel.SDXL), crop_size(BaseModel.KOLORS)) == (224, 256, 336)


def test_identity_warp_is_a_crop():
    img = torch.rand(40, 50, 3, generator=torch.Generator().manual_seed(0))
    out = warp_affine(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 32)
    torch.testing.assert_close(out, img[:32, :32], atol=1e-5, rtol=0)
    img64 = img.double()
    torch.testing.assert_close(warp_affine(img64, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 32), img64[:32, :32], atol=1e-12, rtol=0)


def _bilinear(img: np.ndarray, u: float, v: float) -> np.ndarray:
    h, w = img.shape[:2]
    x0, y0 = math.floor(u), math.floor(v)
    out = np.zeros(img.shape[2])
    for dy in (0, 1):
        for dx in (0, 1):
            x, y = x0 + dx, y0 + dy
            wt = (1 - abs(u - x)) * (1 - abs(v - y))
            if 0 <= x < w and 0 <= y < h and wt > 0:
                out += wt * img[y, x]
    return out


def test_warp_matches_a_direct_bilinear_reference():
    """out(x, y) = img(M^-1 (x, y)) with pixel centres at integers and black outside."""
    img = torch.rand(60, 70, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m = _similarity(0.4, 1.8, -10.0, 20.0)
    out = warp_affine(img, m, 48).numpy()
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    rng = np.random.default_rng(3)
    for y, x in rng.integers(0, 48, (200, 2)):
        u, v = inv @ np.array([x, y, 1.0])
        np.testing.assert_allclose(out[y, x], _bilinear(img.numpy(), u, v), atol=1e-5)


@pytest.mark.parametrize("size", [224, 256, 336])
def test_aligned_crop_puts_the_landmarks_on_the_template(size):
    """Draw marks at the landmarks of a rotated, scaled face; the crop has them at the template."""
    m = _similarity(0.35, 1.6, 120.0, 40.0)  # template (112 px) -> picture
    kps = _apply(m, ARCFACE_TEMPLATE)
    img = torch.zeros(400, 420, 3)
    colours = torch.eye(3).tolist() + [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    for (x, y), colour in zip(kps, colours):
        xi, yi = int(round(x)), int(round(y))
        img[yi - 3 : yi + 4, xi - 3 : xi + 4] = torch.tensor(colour)
    crop = align_face(img, kps, size)
    assert crop.shape == (size, size, 3)
    for (x, y), colour in zip(template_for(size), colours):
        got = crop[int(round(y)), int(round(x))]
        torch.testing.assert_close(got, torch.tensor(colour), atol=0.2, rtol=0)
    np.testing.assert_allclose(_apply(alignment_matrix(kps, size), kps), template_for(size), atol=1e-6)


def _face(x1, y1, x2, y2, score=0.9):
    return DetectedFace(bbox=np.array([x1, y1, x2, y2], float), kps=np.zeros((5, 2)), det_score=score)


def test_pick_face_orders():
    small_left, big_right, mid = _face(0, 0, 10, 10, 0.99), _face(50, 0, 90, 40, 0.6), _face(20, 0, 45, 25, 0.8)
    faces = [small_left, big_right, mid]
    assert pick_face(faces) is big_right
    assert pick_face(faces, FaceOrder.SIZE, 1) is mid
    assert pick_face(faces, FaceOrder.LEFT_TO_RIGHT, 0) is small_left
    assert pick_face(faces, FaceOrder.SCORE, 0) is small_left
    assert pick_face(faces, FaceOrder.SIZE, 3) is None
    assert pick_face([], FaceOrder.SIZE, 0) is None


def test_detected_face_accepts_insightface_style_objects():
    class InsightFaceLike(dict):
        def __getattr__(self, k):
            return self.get(k)

    emb = np.arange(512, dtype=np.float32)
    f = DetectedFace.from_any(InsightFaceLike(bbox=[1, 2, 3, 4], kps=np.ones((5, 2)), det_score=np.float32(0.7), embedding=emb))
    assert f.det_score == pytest.approx(0.7)
    np.testing.assert_allclose(np.linalg.norm(f.normed_embedding), 1.0, rtol=1e-6)
    with pytest.raises(InvalidInputError, match="landmarks"):
        DetectedFace.from_any(InsightFaceLike(bbox=[1, 2, 3, 4]))


def test_to_uint8_rgb_accepts_float_and_uint8():
    f = torch.tensor([[[0.0, 0.5, 1.0]]])
    assert to_uint8_rgb(f).tolist() == [[[0, 128, 255]]]
    assert to_uint8_rgb(np.array([[[1, 2, 3, 255]]], np.uint8)).tolist() == [[[1, 2, 3]]]


def test_stub_finds_bright_regions_as_faces():
    stub = StubFaceAnalyzer()
    img = face_image(96, 128, [(10, 20, 40, 60), (60, 10, 120, 80)], seed=3)[0]
    faces = stub.detect(img)
    assert len(faces) == 2
    assert sorted(tuple(f.bbox.astype(int)) for f in faces) == [(10, 20, 40, 60), (60, 10, 120, 80)]
    assert stub.detect(face_image(64, 64, [])[0]) == []
    again = StubFaceAnalyzer().detect(img)
    np.testing.assert_array_equal(faces[0].embedding, again[0].embedding)


def test_analyse_frames_one_face_per_frame_and_missing_frames():
    stub = StubFaceAnalyzer()
    frames = torch.cat([
        face_image(80, 80, [(10, 10, 60, 70)], seed=1),
        face_image(80, 80, []),
        face_image(80, 80, [(5, 5, 30, 30), (35, 20, 78, 78)], seed=2),
    ])
    batch = analyse_frames(stub, frames, 224)
    assert batch.found == [True, False, True]
    assert batch.missing == [1] and batch.present == [0, 2]
    assert "1 (no face)" in batch.describe_missing()
    assert batch.crops.shape == (3, 224, 224, 3)
    assert torch.count_nonzero(batch.crops[1]) == 0 and torch.count_nonzero(batch.embeds[1]) == 0
    torch.testing.assert_close(batch.embeds[[0, 2]].norm(dim=-1), torch.ones(2))
    # frame 2: the largest face by default, the other by index
    big = max(stub.detect(frames[2]), key=lambda f: f.area)
    torch.testing.assert_close(batch.embeds[2], torch.from_numpy(big.normed_embedding))
    second = analyse_frames(stub, frames[2:], 224, index=1)
    assert not torch.equal(second.embeds[0], batch.embeds[2])
    too_far = analyse_frames(stub, frames[2:], 224, index=2)
    assert too_far.found == [False] and "index 2 asked" in too_far.describe_missing()


def test_analyse_frames_raw_embedding_for_unnorm():
    stub = StubFaceAnalyzer(embedding_norm=22.0)
    frames = face_image(64, 64, [(8, 8, 56, 56)], seed=4)
    raw = analyse_frames(stub, frames, 256, raw=True)
    assert raw.raw and raw.embeds[0].norm().item() == pytest.approx(22.0, rel=1e-5)
    assert raw.crops.shape == (1, 256, 256, 3)
