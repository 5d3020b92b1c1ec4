"""The FaceID LoRA on the UNet, through ComfyUI's own weight-patch mechanism.

Two sources: the LoRA tensors inside a FaceID `.bin` (`{j}.to_q_lora.down.weight`, ...),
mapped onto the UNet's attention weights by layer position and read by ComfyUI's LoRA
loader (`comfy.lora.load_lora`, which knows the `<x>_lora.down/up.weight` form), or a
separate LoRA file (the published `*_lora.safetensors`), read exactly as ComfyUI's
LoraLoader reads it. Either way the patch is added to a model clone with
`ModelPatcher.add_patches(patches, strength)`, so ComfyUI applies, offloads and removes it
like any LoRA.

A marker in the clone's model_options records which LoRA was applied, so a second FaceID
node downstream (unified loader, then apply) does not apply the same LoRA twice.
"""

from __future__ import annotations

import logging
import os

import folder_paths

from ..ip_adapter_core.errors import InvalidInputError, MissingModelFileError
from ..ip_adapter_core.faceid import check_lora, companion_lora_names, comfy_lora_targets, expects_lora
from . import host
from .adapter_store import IPAdapterHandle

log = logging.getLogger("ipadapter_kit")

MARKER = "ipadapter_kit_faceid_lora"
FROM_ADAPTER = "from the adapter file"
NO_LORA = "none"


def lora_choices() -> list[str]:
    try:
        files = folder_paths.get_filename_list("loras")
    except Exception:  # a host without a loras folder
        files = []
    return [FROM_ADAPTER, NO_LORA, *files]


def applied_loras(model) -> dict:
    return dict(model.model_options.get(MARKER, {}))


def _mark(model, ident: str, strength: float) -> None:
    marks = dict(model.model_options.get(MARKER, {}))
    marks[ident] = float(strength)
    model.model_options[MARKER] = marks


def in_file_patches(model, handle: IPAdapterHandle) -> dict:
    """ComfyUI weight patches from the LoRA stored in the adapter file ({} if it holds none)."""
    import comfy.lora

    lora = handle.adapter.model.lora
    if not lora:
        return {}
    spec, name = handle.spec, handle.adapter.name
    layers = host.cross_attention_layers(model)
    host.check_adapter_fits(spec, model, layers, name)
    expected = check_lora(lora, spec, name)
    targets = comfy_lora_targets([layer.module_path for layer in layers])
    patches = comfy.lora.load_lora(lora, targets, log_missing=False)
    if len(patches) != expected:
        raise InvalidInputError(
            f"'{name}': ComfyUI's LoRA loader read {len(patches)} of the {expected} LoRA weights in the file; "
            "this ComfyUI version may not know the diffusers LoRA form. Use the published *_lora.safetensors instead."
        )
    return patches


def file_patches(model, lora_name: str) -> dict:
    """ComfyUI weight patches of a LoRA file from the loras folder, read as LoraLoader reads it."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.utils

    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise MissingModelFileError(f"LoRA '{lora_name}' was not found in the loras folders.")
    state = comfy.utils.load_torch_file(path, safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    state = comfy.lora_convert.convert_lora(state)
    patches = comfy.lora.load_lora(state, key_map, log_missing=False)
    if not patches:
        sample = ", ".join(list(state)[:3])
        raise InvalidInputError(
            f"LoRA '{lora_name}' has no weights for this model's UNet (keys such as {sample}). Is it the FaceID "
            "LoRA for this base model (SD1.5 vs SDXL)?"
        )
    return patches


def _find_companion(adapter_name: str) -> str | None:
    try:
        files = folder_paths.get_filename_list("loras")
    except Exception:
        return None
    wanted = {n.lower() for n in companion_lora_names(adapter_name)}
    return next((f for f in files if os.path.basename(f).lower() in wanted), None)


def apply_faceid_lora(model, handle: IPAdapterHandle, strength: float, source: str = FROM_ADAPTER):
    """A clone of `model` with the FaceID LoRA at `strength` (the model itself when there is
    nothing to do: strength 0, 'none', a portrait adapter, or the LoRA already applied)."""
    strength = float(strength)
    if source == NO_LORA or strength == 0.0:
        return model
    spec, name = handle.spec, handle.adapter.name
    if source == FROM_ADAPTER:
        if handle.adapter.model.lora:
            ident = f"adapter:{os.path.realpath(handle.adapter.path)}"
            make = lambda: in_file_patches(model, handle)  # noqa: E731
            what = f"the LoRA inside '{name}'"
        else:
            if not expects_lora(spec):
                return model  # portrait adapters were trained without one
            companion = _find_companion(name)
            if companion is None:
                log.warning(
                    "IPAdapter FaceID: '%s' carries no LoRA and no %s is in the loras folder; the FaceID LoRA "
                    "is not applied (likeness will be weaker). Pick the LoRA file in the 'lora' input.",
                    name, " / ".join(companion_lora_names(name)),
                )
                return model
            ident, what = f"file:{companion}", f"LoRA file '{companion}'"
            make = lambda: file_patches(model, companion)  # noqa: E731
    else:
        ident, what = f"file:{source}", f"LoRA file '{source}'"
        make = lambda: file_patches(model, source)  # noqa: E731
    if ident in applied_loras(model):
        log.info("IPAdapter FaceID: %s is already on this model (strength %.2f); not applied again.", what, applied_loras(model)[ident])
        return model
    patches = make()
    clone = model.clone()
    added = clone.add_patches(patches, strength)
    if len(added) != len(patches):
        missing = sorted(set(patches) - set(added))[:3]
        raise InvalidInputError(f"{what}: {len(patches) - len(added)} LoRA weights did not match the UNet (e.g. {missing}).")
    _mark(clone, ident, strength)
    log.info("IPAdapter FaceID: applied %s to %d UNet weights at strength %.2f", what, len(added), strength)
    return clone
