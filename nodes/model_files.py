"""Finding installed adapter and CLIP vision files by what they contain."""

from __future__ import annotations

import logging
import os

import folder_paths

from ..ip_adapter_core.checkpoint import load_adapter_layout, read_layout
from ..ip_adapter_core.detect import describe
from ..ip_adapter_core.errors import IPAdapterError, MissingModelFileError
from ..ip_adapter_core.presets import Preset, clip_encoder_of, rank, suggested_file, supported
from ..ip_adapter_core.spec import CLIP_ENCODERS, AdapterSpec, BaseModel, ImageEncoder
from . import paths
from .file_cache import FileFacts, LoadedFiles

log = logging.getLogger("ipadapter_kit")


def _read_adapter_spec(path: str) -> AdapterSpec | None:
    try:
        return describe(load_adapter_layout(path))
    except IPAdapterError as exc:
        log.debug("not an adapter: %s (%s)", path, exc)
        return None


def _read_clip_encoder(path: str) -> ImageEncoder | None:
    try:
        return clip_encoder_of(read_layout(path))
    except IPAdapterError:
        return None


#: Description of an adapter file (None if it is not a readable adapter), from headers only.
adapter_spec_of = FileFacts(_read_adapter_spec)
#: Which CLIP image encoder a clip_vision file holds (None if none we know), from headers only.
clip_encoder_of_file = FileFacts(_read_clip_encoder)


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
    return pick_installed(preset, base, supported, rank, suggested_file)


def pick_installed(preset, base: BaseModel, supported_fn, rank_fn, suggested_fn) -> str:
    """Best installed adapter file for a loader preset (plain or FaceID), ranked by content."""
    if not supported_fn(preset, base):
        raise MissingModelFileError(f"The '{preset.value}' preset has no published adapter for {base.label} models.")
    installed = installed_adapters()
    names = rank_fn(preset, base, installed)
    if names:
        return names[0]
    folders = ", ".join(folder_paths.get_folder_paths(paths.IPADAPTER_FOLDER)) or "models/ipadapter"
    seen = "; ".join(f"{n} ({s.title})" for n, s in installed[:8]) or "no adapter files"
    raise MissingModelFileError(
        f"The '{preset.value}' preset needs '{suggested_fn(preset, base)}' (any file name works: files are "
        f"recognised by content) for {base.label} in the ipadapter folder ({folders}). Installed: {seen}."
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
    full = folder_paths.get_full_path("clip_vision", name)
    if full is None:
        raise MissingModelFileError(f"CLIP vision file '{name}' was not found in the clip_vision folders.")
    return _clip_vision_models(full)


def _load_clip_vision(full: str):
    import comfy.clip_vision

    model = comfy.clip_vision.load(full)
    if model is None:
        raise MissingModelFileError(f"ComfyUI could not recognise '{os.path.basename(full)}' as a CLIP vision model.")
    return model


_clip_vision_models = LoadedFiles(_load_clip_vision)
