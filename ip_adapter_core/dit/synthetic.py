"""Seeded synthetic DiT adapter files in the published key layouts (tests and demos only).

    state = synthetic_state(spec)                     # flat, published names
    write_dit_adapter(dir / "ip_adapter.safetensors", spec)   # XLabs: flat safetensors
    write_dit_adapter(dir / "ip-adapter.bin", spec)           # InstantX: pickled nested dict

Values have sane scales (LayerNorm/RMSNorm gains ~1, biases ~0, weights ~N(0, 1/fan_in)),
so projections and attention give finite, non-trivial outputs. Never commit generated files.
"""

from __future__ import annotations

import os
import zlib

import torch

from . import layouts
from .spec import DitAdapterSpec, DitKind


def _value(key: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype, device) -> torch.Tensor:
    if device == "meta" or str(device) == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) & 0x7FFFFFFF)
    if key.endswith("bias"):
        t = torch.randn(shape, generator=g) * 0.02
    elif len(shape) == 1:  # LayerNorm / RMSNorm gains
        t = 1.0 + torch.randn(shape, generator=g) * 0.1
    elif key.endswith("latents"):
        t = torch.randn(shape, generator=g) / shape[-1] ** 0.5
    else:
        t = torch.randn(shape, generator=g) / shape[-1] ** 0.5
    return t.to(dtype)


def synthetic_state(spec: DitAdapterSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                    device: str = "cpu") -> dict[str, torch.Tensor]:
    """Flat state dict with the published names of `spec`'s family."""
    return {k: _value(k, shape, seed, dtype, device) for k, shape in layouts.published_layout(spec).items()}


def nested(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        part, rest = key.split(".", 1)
        out[part][rest] = value
    return out


def write_dit_adapter(path: str | os.PathLike, spec: DitAdapterSpec, seed: int = 0,
                      dtype: torch.dtype = torch.float16) -> str:
    """Write a synthetic file; the container follows the extension (.safetensors: flat published
    names; .bin/.pt: the nested dict the InstantX releases pickle)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    flat = synthetic_state(spec, seed, dtype)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in flat.items()}, path)
    else:
        if spec.kind is DitKind.XLABS:
            torch.save(flat, path)
        else:
            torch.save(nested(flat), path)
    return path
