"""Flux / SD3.5 adapter files: recognising, loading (one managed copy per file) and finding
them and their image encoders by content; the SigLIP pooling head ComfyUI's loader drops."""

from __future__ import annotations

import logging
import os
import threading
import weakref

import torch

import comfy.model_patcher
import folder_paths

from ..ip_adapter_core.checkpoint import read_layout, read_tensors
from ..ip_adapter_core.dit import catalog as dit_catalog
from ..ip_adapter_core.dit.detect import describe_dit, encoder_of, is_dit_state, siglip_head_prefix
from ..ip_adapter_core.dit.layouts import to_canonical
from ..ip_adapter_core.dit.projection import DitAdapterModel, SiglipPoolingHead
from ..ip_adapter_core.dit.spec import DIT_ENCODERS, DitAdapterSpec, DitEncoder
from ..ip_adapter_core.errors import EncoderMismatchError, IPAdapterError, MissingModelFileError
from . import host, paths
from .adapter_store import LoadedAdapter
from .file_cache import FileFacts, LoadedFiles

log = logging.getLogger("ipadapter_kit")

_heads_lock = threading.Lock()
_heads: "weakref.WeakKeyDictionary[object, SiglipPoolingHead]" = weakref.WeakKeyDictionary()


def _read_is_dit(path: str) -> bool:
    try:
        return is_dit_state(read_layout(path))
    except IPAdapterError:
        return False


def _read_dit_spec(path: str) -> DitAdapterSpec | None:
    try:
        layout = read_layout(path)
        if is_dit_state(layout):
            return describe_dit(layout, os.path.basename(path))
    except IPAdapterError as exc:
        log.debug("not a DiT adapter: %s (%s)", path, exc)
    return None


#: Whether a file's tensor names are a Flux/SD3.5 adapter's (headers only).
is_dit_file = FileFacts(_read_is_dit)
#: Description of a DiT adapter file, None if it is not one (headers only).
dit_spec_of = FileFacts(_read_dit_spec)


def _load_dit(path: str) -> LoadedAdapter:
    name = os.path.basename(path)
    state, _ = read_tensors(path)
    spec = describe_dit(state, name)
    proj, kv, _ = to_canonical(state)
    del state
    load_device = host.compute_device()
    model = DitAdapterModel.from_state(proj, kv, spec, dtype=host.adapter_dtype(load_device, allow_bf16=True))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=host.offload_device())
    log.info("IPAdapter: loaded %s (%s)", name, spec.title)
    return LoadedAdapter(path=path, spec=spec, patcher=patcher)


#: Load (once) and return the managed adapter for a Flux/SD3.5 adapter file.
load_dit_adapter = LoadedFiles(_load_dit)


# --- installed files by content --------------------------------------------------------------


def installed_dit_adapters() -> list[tuple[str, DitAdapterSpec]]:
    out = []
    for name in paths.adapter_files():
        full = folder_paths.get_full_path(paths.IPADAPTER_FOLDER, name)
        if full is None or not is_dit_file(full):
            continue
        spec = dit_spec_of(full)
        if spec is not None:
            out.append((name, spec))
    return out


def _read_encoder(path: str) -> tuple[DitEncoder | None, str | None, int]:
    try:
        layout = read_layout(path)
        ln = layout.get("vision_model.post_layernorm.weight")
        return encoder_of(layout), siglip_head_prefix(layout), int(ln.shape[0]) if ln is not None else 0
    except (IPAdapterError, OSError):
        return None, None, 0


#: (DiT encoder, SigLIP head prefix, hidden width) of a clip_vision file, from headers.
_encoder_of_file = FileFacts(_read_encoder)


def find_encoder_file(encoder: DitEncoder) -> str:
    """Name of an installed clip_vision file holding `encoder` (SigLIP: preferably with its head)."""
    best = None
    for name in folder_paths.get_filename_list("clip_vision"):
        full = folder_paths.get_full_path("clip_vision", name)
        if full is None:
            continue
        enc, head, _ = _encoder_of_file(full)
        if enc is encoder:
            if encoder is not DitEncoder.SIGLIP or head is not None:
                return name
            best = best or name
    if best is not None:
        return best
    info = DIT_ENCODERS[encoder]
    folders = ", ".join(folder_paths.get_folder_paths("clip_vision"))
    raise MissingModelFileError(
        f"No {encoder.value} image encoder found in the clip_vision folder ({folders}). Download "
        f"'{info.file_name}' ({info.repo}; any file name works, it is recognised by content) and put it there."
    )


# --- SigLIP pooling head ----------------------------------------------------------------------


def _vision(clip_vision):
    return getattr(getattr(clip_vision, "model", None), "vision_model", None)


def _fingerprint(clip_vision) -> torch.Tensor | None:
    vision = _vision(clip_vision)
    ln = getattr(vision, "post_layernorm", None)
    weight = getattr(ln, "weight", None)
    return None if weight is None else weight.detach().float().cpu()


def _heads_of(clip_vision) -> int:
    vision = _vision(clip_vision)
    try:
        return int(vision.encoder.layers[0].self_attn.heads)
    except (AttributeError, IndexError):
        return 16


def siglip_head_for(clip_vision, adapter_name: str = "") -> SiglipPoolingHead:
    """The attention-pooling head of the SigLIP model `clip_vision` was loaded from.

    ComfyUI's loader keeps no head (it only returns hidden states), so the file is found again
    in the clip_vision folders: a SigLIP file with `vision_model.head.*` whose post-layernorm
    weights equal the loaded model's."""
    with _heads_lock:
        head = _heads.get(clip_vision)
    if head is not None:
        return head
    have = _fingerprint(clip_vision)
    if have is None:
        raise EncoderMismatchError(
            f"'{adapter_name}' needs SigLIP's pooled output, but the connected CLIP vision model does not show "
            "its weights (not a ComfyUI SigLIP model?). Load sigclip_vision_patch14_384.safetensors with a "
            "CLIPVisionLoader."
        )
    from safetensors import safe_open

    for name in folder_paths.get_filename_list("clip_vision"):
        full = folder_paths.get_full_path("clip_vision", name)
        if full is None or not full.endswith(".safetensors"):
            continue
        _, prefix, hidden = _encoder_of_file(full)
        if prefix is None or hidden != have.shape[0]:
            continue
        with safe_open(full, framework="pt", device="cpu") as f:
            theirs = f.get_tensor("vision_model.post_layernorm.weight").float()
            if not torch.allclose(theirs, have, rtol=1e-2, atol=1e-3):
                continue
            state = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        head = SiglipPoolingHead.from_state(state, prefix, heads=_heads_of(clip_vision))
        log.info("IPAdapter: SigLIP pooling head from %s", name)
        with _heads_lock:
            _heads[clip_vision] = head
        return head
    raise MissingModelFileError(
        f"'{adapter_name}' uses SigLIP's pooled output (its attention-pooling head), which ComfyUI's SigLIP "
        "loader does not keep; the head is read from the encoder's file, but no file in the clip_vision folders "
        "has 'vision_model.head.*' tensors matching the connected SigLIP model. Use a SigLIP-so400m-384 file "
        "that includes the head (Comfy-Org's sigclip_vision_patch14_384.safetensors, or google/"
        "siglip-so400m-patch14-384's model.safetensors) in models/clip_vision."
    )


def suggested_adapter(kind, tokens=None) -> str:
    return dit_catalog.suggested_download(kind, tokens)
