"""A deterministic stand-in for insightface, behind the same `FaceAnalyzer` interface.

Tests (and the e2e server's test-only node) use it where insightface and its model files are
not installed. A "face" is a bright region of the picture: every 4-connected group of pixels
brighter than `threshold` (and at least `min_pixels` big) is one face; its box is the group's
extent, its 5 landmarks are the ArcFace template placed in that box, its score grows with
its brightness, and its identity embedding is a fixed random projection of the region's
8x8 thumbnail, so different pictures give different (and the same picture the same)
embeddings. `face_image` draws such pictures.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F

from ..face import ARCFACE_TEMPLATE, DetectedFace, to_uint8_rgb
from ..spec import FACE_EMBEDDING_DIM

_THUMB = 8


class StubFaceAnalyzer:
    """Bright regions are faces. `calls` counts `detect` calls."""

    def __init__(self, threshold: float = 0.5, min_pixels: int = 16, seed: int = 0, embedding_norm: float = 22.0):
        self.name = "stub"
        self.threshold = threshold
        self.min_pixels = min_pixels
        self.embedding_norm = embedding_norm
        g = torch.Generator().manual_seed(seed)
        self._proj = torch.randn(3 * _THUMB * _THUMB, FACE_EMBEDDING_DIM, generator=g, dtype=torch.float64)
        self._bias = torch.randn(FACE_EMBEDDING_DIM, generator=g, dtype=torch.float64) * 0.1
        self.calls = 0

    def __deepcopy__(self, memo):
        return self

    def detect(self, image) -> list[DetectedFace]:
        self.calls += 1
        rgb = to_uint8_rgb(image).astype(np.float64) / 255.0
        lum = rgb.mean(-1)
        faces = []
        for y1, x1, y2, x2, count in _components(lum > self.threshold):
            if count < self.min_pixels:
                continue
            bbox = np.array([x1, y1, x2 + 1, y2 + 1], dtype=np.float64)
            w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
            kps = np.stack([bbox[0] + ARCFACE_TEMPLATE[:, 0] / 112.0 * w, bbox[1] + ARCFACE_TEMPLATE[:, 1] / 112.0 * h], -1)
            region = rgb[y1 : y2 + 1, x1 : x2 + 1]
            score = float(0.5 + 0.5 * region.mean())
            faces.append(DetectedFace(bbox=bbox, kps=kps, det_score=score, embedding=self._embed(region)))
        return faces

    def _embed(self, region: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)[None]
        thumb = F.adaptive_avg_pool2d(x, _THUMB).reshape(-1) - 0.5
        e = thumb @ self._proj + self._bias
        e = e / e.norm().clamp_min(1e-12) * self.embedding_norm
        return e.to(torch.float32).numpy()


def _components(mask: np.ndarray):
    """(y1, x1, y2, x2, pixel count) of every 4-connected True region, in scan order."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    for y0, x0 in zip(ys.tolist(), xs.tolist()):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue = deque([(y0, x0)])
        y1 = y2 = y0
        x1 = x2 = x0
        count = 0
        while queue:
            y, x = queue.popleft()
            count += 1
            y1, y2, x1, x2 = min(y1, y), max(y2, y), min(x1, x), max(x2, x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        yield y1, x1, y2, x2, count


def face_image(height: int, width: int, boxes=(), seed: int = 0, background: float = 0.05) -> torch.Tensor:
    """A ComfyUI IMAGE [1, H, W, 3] with a textured bright "face" in each (x1, y1, x2, y2) box."""
    img = torch.full((height, width, 3), background)
    for n, (x1, y1, x2, y2) in enumerate(boxes):
        gb = torch.Generator().manual_seed(seed * 1000 + n)
        bh, bw = y2 - y1, x2 - x1
        texture = 0.6 + 0.4 * torch.rand(max(1, bh // 4 + 1), max(1, bw // 4 + 1), 3, generator=gb)
        texture = F.interpolate(texture.permute(2, 0, 1)[None], size=(bh, bw), mode="nearest")[0].permute(1, 2, 0)
        img[y1:y2, x1:x2] = texture
    return img[None]
