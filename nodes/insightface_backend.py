"""insightface as an optional dependency: model folder, loading, caching, provider choice.

Nothing here imports insightface or onnxruntime at module import time: the pack and every
non-FaceID node work without them, and a FaceID node that needs them raises one
`OptionalDependencyError` with the install command.

The analyser object put on INSIGHTFACE sockets (`InsightFaceAnalyzer`) implements the
pack's `FaceAnalyzer` interface (`detect(rgb)`) and also passes every other attribute through
to insightface's `FaceAnalysis` (`get`, `prepare`, `models`, ...), so packs that expect a
raw `FaceAnalysis` on an INSIGHTFACE socket (InstantID, PuLID, the incumbent) can use it, and
a raw `FaceAnalysis` from them works here (`as_analyzer` wraps it).
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections import OrderedDict

import numpy as np

import folder_paths

from ..ip_adapter_core.errors import InvalidInputError, MissingModelFileError, OptionalDependencyError
from ..ip_adapter_core.face import DetectedFace, FaceAnalyzer, to_uint8_rgb

log = logging.getLogger("ipadapter_kit")

INSIGHTFACE_FOLDER = "insightface"
MODEL_NAMES = ("buffalo_l", "antelopev2")
AUTO = "auto"
PROVIDERS = (
    AUTO,
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
)
_GPU_ORDER = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider", "OpenVINOExecutionProvider")
# Detector input sizes tried in turn until a face is found (small faces need a large input,
# very large faces a small one).
DET_SIZES = (640, 480, 320)

INSTALL_COMMAND = "pip install insightface onnxruntime"
INSTALL_HINT = (
    "FaceID needs the optional packages 'insightface' and 'onnxruntime' in the Python that runs "
    f"ComfyUI. Install them with:\n    {INSTALL_COMMAND}\n"
    "(or, in this pack's folder: pip install \".[faceid]\"  or  pip install -r requirements-faceid.txt; "
    "on the Windows portable build run python_embeded\\python.exe -m pip install insightface onnxruntime; "
    "use onnxruntime-gpu instead of onnxruntime for CUDA), then restart ComfyUI. "
    "Every other IPAdapter node works without them."
)


def register_folder() -> None:
    """Add `models/insightface` (insightface model packs live in models/insightface/models/<name>/)."""
    default = os.path.join(folder_paths.models_dir, INSIGHTFACE_FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(INSIGHTFACE_FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[INSIGHTFACE_FOLDER] = (paths, set(exts) | {".onnx"})


def import_insightface():
    """(insightface.app module, onnxruntime) or OptionalDependencyError with the install command."""
    missing = []
    detail = ""
    try:
        import onnxruntime
    except Exception as exc:  # ImportError, or a broken native library (OSError on Windows)
        missing.append("onnxruntime")
        detail = f" ({type(exc).__name__}: {exc})"
        onnxruntime = None
    try:
        import insightface.app as insightface_app
    except Exception as exc:
        missing.append("insightface")
        if not detail:
            detail = f" ({type(exc).__name__}: {exc})"
        insightface_app = None
    if missing:
        raise OptionalDependencyError(f"{' and '.join(missing)} not installed or not importable{detail}. {INSTALL_HINT}")
    return insightface_app, onnxruntime


def available() -> bool:
    try:
        import_insightface()
    except OptionalDependencyError:
        return False
    return True


def model_roots() -> list[str]:
    return list(folder_paths.get_folder_paths(INSIGHTFACE_FOLDER))


def find_model_dir(name: str) -> str:
    """The folder of an insightface model pack (`<root>/models/<name>` as insightface itself
    lays it out, or `<root>/<name>`), holding its .onnx files. Never downloads."""
    if name not in MODEL_NAMES and (os.path.sep in name or name.startswith(".")):
        raise InvalidInputError(f"insightface model name '{name}' must be a plain folder name such as buffalo_l.")
    looked = []
    for root in model_roots():
        for candidate in (os.path.join(root, "models", name), os.path.join(root, name)):
            looked.append(candidate)
            if glob.glob(os.path.join(candidate, "*.onnx")):
                return candidate
    raise MissingModelFileError(
        f"The insightface model pack '{name}' was not found (looked in: {', '.join(looked) or 'no insightface folder'}). "
        f"Download {name}.zip from the insightface releases (github.com/deepinsight/insightface/releases) and unzip it "
        f"so that its .onnx files are in models/insightface/models/{name}/. This pack never downloads it for you."
    )


def resolve_provider(requested: str, available_providers: list[str]) -> list[str]:
    """onnxruntime providers to use: `requested` (or, for auto, the first GPU provider
    present) with CPU as the fallback; an unavailable request falls back to CPU with a warning."""
    cpu = "CPUExecutionProvider"
    if requested == AUTO:
        chosen = next((p for p in _GPU_ORDER if p in available_providers), cpu)
    elif requested in available_providers:
        chosen = requested
    else:
        if requested not in PROVIDERS:
            raise InvalidInputError(f"Unknown onnxruntime provider '{requested}'. Choose one of: {', '.join(PROVIDERS)}.")
        log.warning(
            "IPAdapter FaceID: onnxruntime has no %s here (available: %s); using the CPU. For CUDA install "
            "onnxruntime-gpu, for DirectML onnxruntime-directml, for OpenVINO onnxruntime-openvino.",
            requested, ", ".join(available_providers) or "none",
        )
        chosen = cpu
    return [chosen] if chosen == cpu else [chosen, cpu]


class InsightFaceAnalyzer:
    """insightface `FaceAnalysis` (detection + recognition only) behind `FaceAnalyzer`."""

    def __init__(self, app, name: str, providers: list[str]):
        self.app = app
        self.name = name
        self.providers = list(providers)
        self._lock = threading.Lock()
        self._det_size = None

    def __deepcopy__(self, memo):
        return self

    def __getattr__(self, item):  # FaceAnalysis API for packs that expect the raw object
        if item in ("app", "__setstate__", "__getstate__"):
            raise AttributeError(item)
        return getattr(self.app, item)

    def _prepare(self, size: int) -> None:
        if self._det_size != size:
            self.app.prepare(ctx_id=0, det_size=(size, size))
            self._det_size = size

    def detect(self, image) -> list[DetectedFace]:
        rgb = to_uint8_rgb(image)
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # insightface works on OpenCV's BGR order
        with self._lock:
            for size in DET_SIZES:
                self._prepare(size)
                faces = self.app.get(bgr)
                if faces:
                    return [DetectedFace.from_any(f) for f in faces]
        return []


class _WrappedFaceAnalysis:
    """A raw insightface `FaceAnalysis` from another pack, behind `FaceAnalyzer`."""

    def __init__(self, app):
        self.app = app
        self.name = type(app).__name__

    def __deepcopy__(self, memo):
        return self

    def detect(self, image) -> list[DetectedFace]:
        rgb = to_uint8_rgb(image)
        faces = self.app.get(np.ascontiguousarray(rgb[..., ::-1]))
        return [DetectedFace.from_any(f) for f in faces]


def as_analyzer(obj) -> FaceAnalyzer:
    """Anything on an INSIGHTFACE socket -> a FaceAnalyzer."""
    if obj is None:
        raise InvalidInputError("No face analyser: connect an IPAdapter InsightFace Loader to 'insightface'.")
    if callable(getattr(obj, "detect", None)) and not hasattr(obj, "det_model"):
        return obj
    if isinstance(obj, InsightFaceAnalyzer):
        return obj
    if callable(getattr(obj, "get", None)) and hasattr(obj, "prepare"):
        return _WrappedFaceAnalysis(obj)
    raise InvalidInputError(
        f"The 'insightface' input is a {type(obj).__name__}, which is not a face analyser. Connect an "
        "IPAdapter InsightFace Loader (or another pack's insightface loader)."
    )


_lock = threading.Lock()
_cache: "OrderedDict[tuple, InsightFaceAnalyzer]" = OrderedDict()
CACHE_SIZE = 2


def load_analyzer(name: str = "buffalo_l", provider: str = AUTO) -> InsightFaceAnalyzer:
    """The insightface analyser for a model pack and provider, loaded once and kept across
    prompts (the 2 most recently used stay loaded)."""
    insightface_app, onnxruntime = import_insightface()
    model_dir = find_model_dir(name)
    providers = resolve_provider(provider, list(onnxruntime.get_available_providers()))
    key = (os.path.realpath(model_dir), tuple(providers))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    log.info("IPAdapter FaceID: loading insightface '%s' from %s with %s", name, model_dir, providers[0])
    try:
        # An absolute path as the name makes insightface use that folder as it is (both the
        # 0.7 and the 2.x releases); restricting the modules skips the landmark/attribute nets.
        app = insightface_app.FaceAnalysis(
            name=model_dir, root=os.path.dirname(model_dir), providers=providers,
            allowed_modules=["detection", "recognition"],
        )
    except AssertionError as exc:
        raise MissingModelFileError(
            f"insightface found no face detection model in {model_dir} ({exc or 'no detection .onnx'}). "
            f"The folder should hold the unzipped {name} pack (det_*.onnx and a recognition .onnx)."
        ) from exc
    if "recognition" not in getattr(app, "models", {"recognition": None}):
        raise MissingModelFileError(
            f"insightface found no recognition (identity) model in {model_dir}; FaceID needs one "
            f"(w600k_r50.onnx in buffalo_l, glintr100.onnx in antelopev2)."
        )
    analyzer = InsightFaceAnalyzer(app, name, providers)
    with _lock:
        _cache[key] = analyzer
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return analyzer


def clear_cache() -> None:
    with _lock:
        _cache.clear()
