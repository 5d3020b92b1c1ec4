"""Reading IP-Adapter checkpoints safely.

`.safetensors` files are flat (`image_proj.*`, `ip_adapter.*`, or the `adapter_modules.*`
alias); `.bin`/`.pt` files are torch zip pickles of `{"image_proj": ..., "ip_adapter": ...}`.
Pickles are only ever read with `torch.load(weights_only=True)`: a file that asks the
unpickler for anything beyond plain tensors is refused and nothing in it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .errors import NotAnAdapterError, UnreadableCheckpointError, UnsafeCheckpointError

PROJ_PREFIXES = ("image_proj.", "image_proj_model.")
KV_PREFIXES = ("ip_adapter.", "adapter_modules.")

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80


@dataclass
class AdapterWeights:
    """The two halves of an adapter file, tensors in their stored dtype."""

    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]
    source: str = "<memory>"
    metadata: dict[str, str] = field(default_factory=dict)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.image_proj.values()) + sum(
            t.numel() for t in self.ip_adapter.values()
        )


def read_tensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Return (state dict, metadata) of a safetensors or torch file, refusing unsafe pickles."""
    path = os.fspath(path)
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise UnreadableCheckpointError(f"Cannot open '{path}': {exc.strerror or exc}.") from exc
    if size == 0:
        raise UnreadableCheckpointError(
            f"'{name}' is empty (0 bytes). The download probably failed; download the file again."
        )
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTOCOL]):
        return _read_torch(path, name), {}
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path, name, size)
    raise UnreadableCheckpointError(
        f"'{name}' is neither a safetensors file nor a PyTorch checkpoint (first bytes: "
        f"{head[:8]!r}). If it is an HTML page or a Git LFS pointer, the download went wrong; "
        "download the real file again."
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_len < (1 << 30)


def _read_safetensors(path: str, name: str, size: int) -> tuple[dict, dict[str, str]]:
    from safetensors import safe_open

    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if 8 + header_len > size:
            raise UnreadableCheckpointError(
                f"'{name}' is truncated: its header needs {8 + header_len} bytes but the file "
                f"has {size}. Download the file again."
            )
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as exc:
            raise UnreadableCheckpointError(f"'{name}' has a corrupt safetensors header ({exc}).") from exc
    if not isinstance(header, dict):
        raise UnreadableCheckpointError(f"'{name}' has a corrupt safetensors header (not a JSON object).")
    data_end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            data_end = max(data_end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise UnreadableCheckpointError(
                f"'{name}' has a corrupt safetensors header (entry '{key}')."
            ) from exc
    if 8 + header_len + data_end > size:
        raise UnreadableCheckpointError(
            f"'{name}' is truncated: {size} bytes on disk, {8 + header_len + data_end} expected. "
            "Download the file again."
        )
    try:
        tensors = {}
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise UnreadableCheckpointError(f"'{name}' is not a valid safetensors file: {exc}") from exc
    return tensors, metadata


def _read_torch(path: str, name: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _refused_call(exc)
        raise UnsafeCheckpointError(
            f"Refused to load '{name}': its pickle asks for more than plain tensors "
            f"({detail}). It may contain code; nothing from it was executed. Use the "
            ".safetensors release of this model, or a file from a source you trust converted "
            "to safetensors."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise UnreadableCheckpointError(
            f"'{name}' is a corrupt or truncated PyTorch file ({str(exc).splitlines()[0]}). "
            "Download it again."
        ) from exc
    if not isinstance(obj, Mapping):
        raise NotAnAdapterError(
            f"'{name}' holds a {type(obj).__name__}, not a dictionary of tensors; it is not an "
            "IP-Adapter checkpoint."
        )
    return dict(obj)


def _refused_call(exc: Exception) -> str:
    """The call a refused pickle asked for (torch's message, without terminal colours)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"(?:Unsupported global: |unsupported )GLOBAL [\w.]+", text)
    return m.group(0) if m else text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def split_adapter_state(state: Mapping, source: str = "<memory>") -> AdapterWeights:
    """Split a flat or nested state dict into `image_proj` / `ip_adapter` halves."""
    if "image_proj" in state and "ip_adapter" in state:
        proj, kv = state["image_proj"], state["ip_adapter"]
        if not isinstance(proj, Mapping) or not isinstance(kv, Mapping):
            raise NotAnAdapterError(f"'{source}': 'image_proj'/'ip_adapter' are not tensor dictionaries.")
        return AdapterWeights(_tensors(proj, source), _tensors(kv, source), source)
    proj: dict[str, torch.Tensor] = {}
    kv: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in PROJ_PREFIXES:
            if key.startswith(prefix):
                proj[key[len(prefix):]] = value
                break
        else:
            for prefix in KV_PREFIXES:
                if key.startswith(prefix):
                    kv[key[len(prefix):]] = value
                    break
    if not proj or not kv:
        raise NotAnAdapterError(
            f"'{source}' is not an IP-Adapter checkpoint: {describe_foreign_state(state)}. "
            "IP-Adapter files hold 'image_proj.*' and 'ip_adapter.*' tensors; put this file in "
            "the folder for its own model type."
        )
    return AdapterWeights(_tensors(proj, source), _tensors(kv, source), source)


def _tensors(d: Mapping, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in d.items():
        if not isinstance(value, torch.Tensor):
            raise NotAnAdapterError(f"'{source}': entry '{key}' is a {type(value).__name__}, not a tensor.")
        out[str(key)] = value
    return out


_FOREIGN_HINTS = (
    ("model.diffusion_model.", "a Stable Diffusion checkpoint (put it in models/checkpoints)"),
    ("vision_model.", "a CLIP vision encoder (put it in models/clip_vision)"),
    ("visual.", "an OpenCLIP vision encoder (put it in models/clip_vision)"),
    ("lora_unet_", "a LoRA (put it in models/loras)"),
    ("control_model.", "a ControlNet (put it in models/controlnet)"),
    ("input_hint_block.", "a ControlNet (put it in models/controlnet)"),
    ("processor.ip_adapter_double_stream_k_proj.", "an XLabs Flux IP-Adapter (apply it with 'IPAdapter Apply (Flux / SD3.5)')"),
    ("double_blocks.", "a Flux model"),
    ("encoder.down.", "a VAE (put it in models/vae)"),
    ("first_stage_model.", "a VAE or full checkpoint"),
)


def describe_foreign_state(state: Mapping) -> str:
    keys = [str(k) for k in list(state.keys())[:2000]]
    if not keys:
        return "the file holds no tensors"
    for prefix, what in _FOREIGN_HINTS:
        if any(k.startswith(prefix) or f".{prefix}" in k for k in keys):
            return f"it looks like {what}"
    sample = ", ".join(keys[:3])
    return f"it holds {len(state)} entries such as {sample}"


def load_adapter_weights(path: str | os.PathLike) -> AdapterWeights:
    state, metadata = read_tensors(path)
    weights = split_adapter_state(state, os.path.basename(os.fspath(path)))
    weights.metadata = metadata
    return weights


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_layout(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Keys and shapes of a checkpoint as meta tensors, without reading tensor data.

    Safetensors: from the header. Torch files: unpickled (weights only) onto the meta device."""
    path = os.fspath(path)
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size == 0:
        raise UnreadableCheckpointError(f"'{name}' is empty (0 bytes). Download it again.")
    with open(path, "rb") as fh:
        head = fh.read(16)
        if _looks_like_safetensors(head, size):
            fh.seek(0)
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if 8 + header_len > size:
                raise UnreadableCheckpointError(f"'{name}' is truncated. Download it again.")
            try:
                header = json.loads(fh.read(header_len))
            except ValueError as exc:
                raise UnreadableCheckpointError(f"'{name}' has a corrupt safetensors header ({exc}).") from exc
            out = {}
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                dtype = _ST_DTYPES.get(info.get("dtype"), torch.float16)
                out[key] = torch.empty(info.get("shape", []), dtype=dtype, device="meta")
            return out
    if not (head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTOCOL])):
        raise UnreadableCheckpointError(f"'{name}' is neither a safetensors file nor a PyTorch checkpoint.")
    try:
        obj = torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"Refused to read '{name}': its pickle asks for more than plain tensors.") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise UnreadableCheckpointError(f"'{name}' is a corrupt or truncated PyTorch file.") from exc
    if not isinstance(obj, Mapping):
        raise NotAnAdapterError(f"'{name}' holds a {type(obj).__name__}, not a dictionary of tensors.")
    return dict(obj)


def load_adapter_layout(path: str | os.PathLike) -> AdapterWeights:
    """Like `load_adapter_weights` but with meta tensors: enough to recognise the file."""
    return split_adapter_state(read_layout(path), os.path.basename(os.fspath(path)))
