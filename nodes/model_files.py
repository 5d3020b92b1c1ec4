"""Finding installed adapter and CLIP vision files by what they contain."""

from __future__ import annotations

import logging
import os
import threading
import weakref

import folder_paths

from ..ip_adapter_core.checkpoint import load_adapter_layout, read_layout
from ..ip_adapter_core.detect import describe
from ..ip_adapter_core.errors import IPAdapterError, MissingModelFileError
from ..ip_adapter_core.presets import Preset, clip_encoder_of, rank, suggested_file, supported
from ..ip_adapter_core.spec import CLIP_ENCODERS, AdapterSpec, BaseModel, ImageEncoder
from . import paths

log = logging.getLogger("ipadapter_kit")

_lock = threading.Lock()
_spec_cache: dict[tuple, AdapterSpec | None] = {}
_clip_cache: dict[tuple, ImageEncoder | None] = {}
_clip_models: "weakref.WeakValueDictionary[tuple, object]" = weakref.WeakValueDictionary()


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def adapter_spec_of(path: str) -> AdapterSpec | None:
    """Description of an adapter file (None if it is not a readable adapter); cached by
    path, size and mtime, and read from headers only."""
    key = _stat_key(path)
    with _lock:
        if key in _spec_cache:
            return _spec_cache[key]
    try:
        spec = describe(load_adapter_layout(path))
    except IPAdapterError as exc:
        log.debug("not an adapter: %s (%s)", path, exc)
        spec = None
    with _lock:
        _spec_cache[key] = spec
    return spec


def clip_encoder_of_file(path: str) -> ImageEncoder | None:
    key = _stat_key(path)
    with _lock:
        if key in _clip_cache:
            return _clip_cache[key]
    try:
        encoder = clip_encoder_of(read_layout(path))
    except IPAdapterError:
        encoder = None
    with _lock:
        _clip_cache[key] = encoder
    return encoder


def installed_adapters() -> list[tuple[str, AdapterSpec]]:
    out = []
    for name in paths.adapter_files():
        full = folder_paths.get_full_path(paths.IPADAPTER_FOLDER, name)
        if full is None:
            continue
        spec = adapter_spec_of(full)
        if spec is not None:
            out.append((name, spec))
    return out


def find_adapter(preset: Preset, base: BaseModel) -> str:
    """The installed file for `preset` on a `base` model, or an error naming what to install."""
    folders = ", ".join(folder_paths.get_folder_paths(paths.IPADAPTER_FOLDER)) or "models/ipadapter"
    if not supported(preset, base):
        raise MissingModelFileError(f"The '{preset.value}' preset has no published adapter for {base.label} models.")
    installed = installed_adapters()
    names = rank(preset, base, installed)
    if names:
        return names[0]
    want = suggested_file(preset, base)
    seen = "; ".join(f"{n} ({s.title})" for n, s in installed[:8]) or "no adapter files"
    raise MissingModelFileError(
        f"The '{preset.value}' preset needs '{want}' for {base.label} in the ipadapter folder "
        f"({folders}). Installed: {seen}."
    )


def find_clip_vision(encoder: ImageEncoder) -> str:
    info = CLIP_ENCODERS[encoder]
    for name in folder_paths.get_filename_list("clip_vision"):
        full = folder_paths.get_full_path("clip_vision", name)
        if full and clip_encoder_of_file(full) is encoder:
            return name
    folders = ", ".join(folder_paths.get_folder_paths("clip_vision"))
    raise MissingModelFileError(
        f"No {encoder.value} image encoder found in the clip_vision folder ({folders}). Download "
        f"'{info.file_name}' (any file name works: it is recognised by content) and put it there."
    )


def load_clip_vision(name: str):
    """`comfy.clip_vision.load` once per file while something still uses it."""
    import comfy.clip_vision

    full = folder_paths.get_full_path("clip_vision", name)
    if full is None:
        raise MissingModelFileError(f"CLIP vision file '{name}' was not found in the clip_vision folders.")
    key = _stat_key(full)
    model = _clip_models.get(key)
    if model is None:
        model = comfy.clip_vision.load(full)
        if model is None:
            raise MissingModelFileError(f"ComfyUI could not recognise '{name}' as a CLIP vision model.")
        _clip_models[key] = model
    return model
