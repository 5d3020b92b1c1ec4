"""Reading IP-Adapter checkpoints safely.

`.safetensors` files are flat (`image_proj.*`, `ip_adapter.*`, or the `adapter_modules.*`
alias); `.bin`/`.pt` files are torch zip pickles of `{"image_proj": ..., "ip_adapter": ...}`.
Pickles are only ever read with `torch.load(weights_only=True)`: a file that asks the
unpickler for anything beyond plain tensors is refused and nothing in it runs.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import pickletools
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


def _sniff(path: str) -> tuple[str, int, bool]:
    """(file name, size, is safetensors) of a readable, non-empty checkpoint file."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UnreadableCheckpointError(f"Cannot open '{path}': {exc.strerror or exc}.") from exc
    if size == 0:
        raise UnreadableCheckpointError(
            f"'{name}' is empty (0 bytes). The download probably failed; download the file again."
        )
    # safetensors first: a header length whose low byte is 0x80 starts like a pickle
    if _looks_like_safetensors(head, size):
        return name, size, True
    if head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTOCOL]):
        return name, size, False
    raise UnreadableCheckpointError(
        f"'{name}' is neither a safetensors file nor a PyTorch checkpoint (first bytes: "
        f"{head[:8]!r}). If it is an HTML page or a Git LFS pointer, the download went wrong; "
        "download the real file again."
    )


def read_tensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Return (state dict, metadata) of a safetensors or torch file, refusing unsafe pickles."""
    path = os.fspath(path)
    name, size, is_safetensors = _sniff(path)
    if is_safetensors:
        return _read_safetensors(path, name, size)
    return _read_torch(path, name), {}


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
        entries = _header_entries(fh.read(header_len), name)
    data_end = max((end for _, _, (_, end) in entries.values()), default=0)
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
        raise UnreadableCheckpointError(
            f"'{name}' is not a valid safetensors file ({exc}). Download the file again."
        ) from exc
    return tensors, metadata


_PICKLE_OPCODES = frozenset(ord(op.code) for op in pickletools.opcodes)


def _damaged_pickle(exc: Exception) -> str | None:
    """What is broken when torch's safe unpickler stopped at bytes no pickle writer makes
    (rather than at a pickle feature it refuses, e.g. protocol 4 framing or a global)."""
    text = str(exc)
    m = re.search(r"Unsupported operand (\d+)", text)
    if m and int(m.group(1)) not in _PICKLE_OPCODES:
        return f"byte {int(m.group(1))} is not a pickle instruction"
    m = re.search(r"pickle data was truncated|ran out of input|unpickling stack underflow", text, re.I)
    return m.group(0) if m else None


def _header_entries(raw: bytes, name: str) -> dict[str, tuple[str, list[int], tuple[int, int]]]:
    """{key: (dtype code, shape, (begin, end))} of a safetensors header, or a clear error for
    anything a writer would not produce (the library's own errors are less helpful)."""

    def corrupt(detail: str) -> UnreadableCheckpointError:
        return UnreadableCheckpointError(
            f"'{name}' has a corrupt safetensors header ({detail}). Download the file again."
        )

    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise corrupt(str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply") from None
    if not isinstance(header, dict):
        raise corrupt("not a JSON object")
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict):
                raise corrupt("'__metadata__' is not a JSON object")
            continue
        if not isinstance(info, dict):
            raise corrupt(f"entry '{key[:80]}' is not a JSON object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise corrupt(f"entry '{key[:80]}' has no dtype")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise corrupt(f"entry '{key[:80]}' has the shape {str(shape)[:40]}")
        if (
            not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise corrupt(f"entry '{key[:80]}' has the data offsets {str(offsets)[:40]}")
        size = _ST_DTYPES[dtype].itemsize if dtype in _ST_DTYPES else None
        if size is not None and math.prod(shape) * size != offsets[1] - offsets[0]:
            nbytes = offsets[1] - offsets[0]
            raise corrupt(f"entry '{key[:80]}': shape {str(shape)[:40]} does not match its {nbytes} bytes")
        out[key] = (dtype, shape, (offsets[0], offsets[1]))
    return out


def _read_torch(path: str, name: str, map_location: str = "cpu") -> dict:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _refused_call(exc)
        damage = None if "GLOBAL" in detail else _damaged_pickle(exc)
        if damage:  # a damaged pickle, not a request for code
            raise UnreadableCheckpointError(
                f"'{name}' is a corrupt PyTorch file ({damage}); nothing from it was executed. Download it again."
            ) from exc
        raise UnsafeCheckpointError(
            f"Refused to load '{name}': its pickle asks for more than plain tensors "
            f"({detail}). It may contain code; nothing from it was executed. Use the "
            ".safetensors release of this model, or a file from a source you trust converted "
            "to safetensors."
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure of torch.load means a damaged file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UnreadableCheckpointError(
            f"'{name}' is a corrupt or truncated PyTorch file ({first}). "
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
    name, size, is_safetensors = _sniff(path)
    if not is_safetensors:
        return _read_torch(path, name, map_location="meta")
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if 8 + header_len > size:
            raise UnreadableCheckpointError(f"'{name}' is truncated. Download it again.")
        entries = _header_entries(fh.read(header_len), name)
    try:
        return {
            key: torch.empty(shape, dtype=_ST_DTYPES.get(dtype, torch.float16), device="meta")
            for key, (dtype, shape, _) in entries.items()
        }
    except RuntimeError as exc:  # dimensions too large to index
        raise UnreadableCheckpointError(
            f"'{name}' has a corrupt safetensors header ({exc}). Download the file again."
        ) from exc


def load_adapter_layout(path: str | os.PathLike) -> AdapterWeights:
    """Like `load_adapter_weights` but with meta tensors: enough to recognise the file."""
    return split_adapter_state(read_layout(path), os.path.basename(os.fspath(path)))
