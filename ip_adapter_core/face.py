"""Faces for the FaceID adapters: detection behind a small interface, selection, alignment.

Host-free and free of insightface: a `FaceAnalyzer` is anything with
`detect(rgb) -> list[DetectedFace]`. The pack wraps insightface's `FaceAnalysis` in one
(nodes/insightface_backend.py); the tests use a deterministic stub
(ip_adapter_core/testing/faces.py).

Alignment is the standard 5-point similarity transform (least squares, Umeyama) onto the
ArcFace template, scaled the way insightface's `norm_crop` scales it for the crop size, and
sampled with bilinear interpolation and a black border, implemented with numpy/torch only.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError
from .spec import FACE_EMBEDDING_DIM, BaseModel

log = logging.getLogger("ipadapter_kit")

# ArcFace's 112x112 reference positions of: left eye, right eye, nose tip, left and right
# mouth corner (x, y), the template every insightface recogniser is trained on.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

# Crop sizes the FaceID adapters were used with (insightface's norm_crop size).
CROP_SIZES = {BaseModel.SD15: 224, BaseModel.SDXL: 256, BaseModel.KOLORS: 336}


def crop_size(base: BaseModel) -> int:
    return CROP_SIZES[base]


@dataclass
class DetectedFace:
    """One detected face, in the pixel coordinates of the image it was found in."""

    bbox: np.ndarray  # [4] x1, y1, x2, y2
    kps: np.ndarray  # [5, 2] eyes, nose, mouth corners (x, y)
    det_score: float
    embedding: np.ndarray | None = None  # [512] raw recogniser output

    @property
    def normed_embedding(self) -> np.ndarray | None:
        if self.embedding is None:
            return None
        norm = float(np.linalg.norm(self.embedding))
        return self.embedding / max(norm, 1e-12)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.bbox[:4])
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @classmethod
    def from_any(cls, face: Any) -> "DetectedFace":
        """Accept our own faces and insightface's `Face` objects (dicts with attributes)."""
        if isinstance(face, DetectedFace):
            return face

        def get(name):
            value = getattr(face, name, None)
            if value is None and isinstance(face, dict):
                value = face.get(name)
            return value

        bbox, kps = get("bbox"), get("kps")
        if bbox is None or kps is None:
            raise InvalidInputError(
                "The face analyser returned a face without a bounding box or the 5 landmarks (kps); "
                "FaceID needs a detector that outputs 5-point landmarks (insightface buffalo_l / antelopev2)."
            )
        emb = get("embedding")
        score = get("det_score")
        return cls(
            bbox=np.asarray(bbox, dtype=np.float64).reshape(-1)[:4],
            kps=np.asarray(kps, dtype=np.float64).reshape(-1, 2)[:5],
            det_score=float(score) if score is not None else 1.0,
            embedding=None if emb is None else np.asarray(emb, dtype=np.float32).reshape(-1),
        )


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Finds faces and computes their identity embeddings."""

    name: str

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """`image`: [H, W, 3] RGB, uint8 (0..255) or float (0..1)."""
        ...


def to_uint8_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """[H, W, 3] float 0..1 or uint8 -> contiguous uint8 RGB."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype.is_floating_point:
            image = (image.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        image = image.numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise InvalidInputError(f"A face image must be [height, width, 3]; got shape {list(arr.shape)}.")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


# --- selection -----------------------------------------------------------------------


class FaceOrder(str, enum.Enum):
    SIZE = "largest first"
    LEFT_TO_RIGHT = "left to right"
    SCORE = "most confident first"


def order_faces(faces: Sequence[DetectedFace], order: FaceOrder) -> list[DetectedFace]:
    if order is FaceOrder.SIZE:
        return sorted(faces, key=lambda f: -f.area)
    if order is FaceOrder.LEFT_TO_RIGHT:
        return sorted(faces, key=lambda f: float(f.bbox[0] + f.bbox[2]))
    return sorted(faces, key=lambda f: -f.det_score)


def pick_face(faces: Sequence[DetectedFace], order: FaceOrder = FaceOrder.SIZE, index: int = 0) -> DetectedFace | None:
    ranked = order_faces(faces, order)
    if 0 <= index < len(ranked):
        return ranked[index]
    return None


# --- alignment -----------------------------------------------------------------------


def template_for(size: int) -> np.ndarray:
    """The 5-point template for a `size` x `size` crop, as insightface's norm_crop places it:
    sizes divisible by 112 scale the 112 template; others scale a 128 frame with the 112
    template centred horizontally in it."""
    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        shift = 8.0 * ratio
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += shift
    return dst


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    `src` points onto `dst` (Umeyama 1991). Returns the 2x3 matrix M with dst ~ M @ [x, y, 1]."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise InvalidInputError(f"alignment needs matching point sets of at least 2 points; got {src.shape} and {dst.shape}.")
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / n
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1.0
    u, sv, vt = np.linalg.svd(cov)
    rank = int((sv > 1e-12 * max(float(sv.max()), 1e-300)).sum())
    if rank == 0:
        raise InvalidInputError("the face landmarks are degenerate (all at one point); cannot align the face.")
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        rot = u @ vt
    elif rank == 1:
        rot = u @ np.diag([1.0, -1.0]) @ vt
    else:
        rot = u @ np.diag(sign) @ vt
    var_s = (s**2).sum() / n
    scale = float((sv * sign).sum() / var_s) if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def alignment_matrix(kps: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix mapping image pixels to crop pixels for these 5 landmarks."""
    return similarity_transform(np.asarray(kps, dtype=np.float64)[:5], template_for(size))


def warp_affine(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """`image` [H, W, C] float -> [size, size, C]: out(x, y) = image(M^-1 (x, y)), bilinear,
    black outside (cv2.warpAffine's convention: integer coordinates are pixel centres)."""
    h, w = image.shape[0], image.shape[1]
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    inv_t = torch.from_numpy(inv)
    u = inv_t[0, 0] * xs + inv_t[0, 1] * ys + inv_t[0, 2]
    v = inv_t[1, 0] * xs + inv_t[1, 1] * ys + inv_t[1, 2]
    # align_corners=True: -1 and +1 are the centres of the first and last pixel.
    gx = 2.0 * u / max(w - 1, 1) - 1.0
    gy = 2.0 * v / max(h - 1, 1) - 1.0
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    grid = torch.stack([gx, gy], dim=-1)[None].to(work)
    src = image.detach().to(work).permute(2, 0, 1)[None]
    out = F.grid_sample(src, grid.to(src.device), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].permute(1, 2, 0).to(image.dtype)


def align_face(image: torch.Tensor, kps: np.ndarray, size: int) -> torch.Tensor:
    """Aligned square crop [size, size, C] of the face with landmarks `kps` in `image` [H, W, C]."""
    return warp_affine(image, alignment_matrix(kps, size), size).clamp(0.0, 1.0)


# --- a batch of frames ----------------------------------------------------------------


@dataclass
class FaceBatch:
    """Faces found in a batch of frames: one entry per frame, zeros where none was found."""

    embeds: torch.Tensor  # [B, 512] float32 (normalised or raw, see `raw`)
    crops: torch.Tensor  # [B, S, S, 3] aligned crops (black where no face)
    found: list[bool]
    raw: bool = False
    reasons: dict[int, str] = field(default_factory=dict)  # frame -> why it has no usable face

    @property
    def frames(self) -> int:
        return len(self.found)

    @property
    def missing(self) -> list[int]:
        return [i for i, ok in enumerate(self.found) if not ok]

    @property
    def present(self) -> list[int]:
        return [i for i, ok in enumerate(self.found) if ok]

    def describe_missing(self) -> str:
        parts = [f"{i}{f' ({self.reasons[i]})' if i in self.reasons else ''}" for i in self.missing]
        return ", ".join(parts)


def analyse_frames(
    analyzer: FaceAnalyzer,
    images: torch.Tensor,
    size: int,
    raw: bool = False,
    order: FaceOrder = FaceOrder.SIZE,
    index: int = 0,
) -> FaceBatch:
    """Detect, select and align one face per frame of `images` [B, H, W, 3] (float 0..1).

    `raw` picks the recogniser's raw embedding (portrait-unnorm) instead of the unit-length one."""
    if images.ndim != 4:
        raise InvalidInputError(f"images must be [batch, height, width, 3]; got {list(images.shape)}.")
    b = images.shape[0]
    embeds = torch.zeros(b, FACE_EMBEDDING_DIM, dtype=torch.float32)
    crops = torch.zeros(b, size, size, 3, dtype=torch.float32)
    found = [False] * b
    reasons: dict[int, str] = {}
    for i in range(b):
        frame = images[i, ..., :3].float().clamp(0, 1)
        faces = [DetectedFace.from_any(f) for f in analyzer.detect(to_uint8_rgb(frame))]
        face = pick_face(faces, order, index)
        if face is None:
            reasons[i] = "no face" if not faces else f"{len(faces)} face(s), index {index} asked"
            continue
        emb = face.embedding if raw else face.normed_embedding
        if emb is None:
            reasons[i] = "the analyser gave no identity embedding (is a recognition model installed?)"
            continue
        emb = np.asarray(emb, dtype=np.float32).reshape(-1)
        if emb.shape[0] != FACE_EMBEDDING_DIM or not np.isfinite(emb).all():
            raise InvalidInputError(
                f"The face analyser gave a {emb.shape[0]}-d embedding for frame {i}; FaceID adapters take "
                f"{FACE_EMBEDDING_DIM}-d insightface (ArcFace) embeddings. Use buffalo_l or antelopev2."
            )
        embeds[i] = torch.from_numpy(emb)
        crops[i] = align_face(frame, face.kps, size)
        found[i] = True
    return FaceBatch(embeds=embeds, crops=crops, found=found, raw=raw, reasons=reasons)
