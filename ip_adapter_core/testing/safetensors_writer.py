"""Stream synthetic weights into a `.safetensors` file without holding the model in memory.

Test fixtures need files with the exact key names, shapes and dtypes of published checkpoints,
but their values only have to be finite and reproducible. A file is described by a list of
`TensorSpec`s (name, shape, dtype, how to fill it); `write_safetensors` writes the header, then
generates each tensor in bounded chunks from a generator seeded by (seed, tensor name), so a file
is the same whatever the order of its specs and RAM stays small even for multi-GB files.
`safetensors_file_size` gives the exact size of such a file without writing it, which is how the
layout tests compare a key table with a published byte size.

Host-free: imports only torch and the standard library.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# safetensors dtype names (the on-disk header strings).
_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

# Rank of each dtype in the reference (Rust) writer's `Dtype` enum. It stores tensors sorted by
# dtype rank descending, then name; the data offsets (and so the header length) depend on it.
_DTYPE_RANK = {
    torch.bool: 0,
    torch.uint8: 4,
    torch.int8: 5,
    torch.int16: 9,
    torch.float16: 11,
    torch.bfloat16: 12,
    torch.int32: 13,
    torch.float32: 15,
    torch.float64: 16,
    torch.int64: 17,
}

INITS = ("normal", "ones", "zeros", "arange")

# Elements generated per step; bounds the writer's RAM to a few hundred MB whatever the file size.
CHUNK_ELEMENTS = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a synthetic file.

    init: "normal" (N(0, std)), "ones", "zeros" or "arange" (0..n-1 in the last dimension,
    repeated; for index buffers such as `position_ids`).
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float16
    init: str = "normal"
    std: float = 0.02

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"{self.name}: unknown init {self.init!r}, expected one of {INITS}")
        if self.dtype not in _DTYPE_NAMES:
            raise ValueError(f"{self.name}: dtype {self.dtype} has no safetensors name")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _element_size(self.dtype)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _check_unique(specs: Sequence[TensorSpec]) -> None:
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ValueError(f"duplicate tensor name {s.name!r}")
        if s.name == "__metadata__":
            raise ValueError("'__metadata__' is reserved in safetensors headers")
        seen.add(s.name)


def canonical_order(specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The order the reference `safetensors` writer stores tensors in (dtype rank desc, name)."""
    return sorted(specs, key=lambda s: (-_DTYPE_RANK[s.dtype], s.name))


def safetensors_header(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> bytes:
    """The header bytes (8-byte length prefix + JSON padded with spaces to 8 bytes), laid out as
    the reference `safetensors` writer does; tensors are stored in `canonical_order`."""
    _check_unique(specs)
    specs = canonical_order(specs)
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for s in specs:
        end = offset + s.nbytes
        header[s.name] = {"dtype": _DTYPE_NAMES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def safetensors_file_size(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> int:
    """Exact byte size of the file `write_safetensors(specs, metadata)` would write."""
    return len(safetensors_header(specs, metadata)) + sum(s.nbytes for s in specs)


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63))


def _chunks(spec: TensorSpec, seed: int, chunk_elements: int) -> Iterable[torch.Tensor]:
    """The tensor's values, flattened, in pieces of at most `chunk_elements`."""
    n = spec.numel
    if spec.init == "arange":
        row = spec.shape[-1] if spec.shape else 1
        yield torch.arange(row, dtype=torch.int64).repeat(max(n // max(row, 1), 1))[:n].to(spec.dtype)
        return
    if spec.init in ("ones", "zeros"):
        fill = 1 if spec.init == "ones" else 0
        for start in range(0, n, chunk_elements):
            yield torch.full((min(chunk_elements, n - start),), fill, dtype=spec.dtype)
        return
    if not spec.dtype.is_floating_point:
        raise ValueError(f"{spec.name}: 'normal' init needs a floating dtype, not {spec.dtype}")
    gen = _generator(seed, spec.name)
    # fp16/bf16 are drawn in fp32 and rounded once, so every dtype gets the same distribution.
    for start in range(0, n, chunk_elements):
        k = min(chunk_elements, n - start)
        values = torch.randn(k, generator=gen, dtype=torch.float32)
        values.mul_(spec.std)
        yield values.to(spec.dtype)


def tensor_values(spec: TensorSpec, seed: int = 0) -> torch.Tensor:
    """The full tensor `write_safetensors` stores for `spec` (use for small tensors only)."""
    parts = list(_chunks(spec, seed, CHUNK_ELEMENTS))
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=spec.dtype)
    return flat.reshape(spec.shape)


def state_dict(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    """In-memory state dict with the same values the writer would store (small models only)."""
    _check_unique(specs)
    return {s.name: tensor_values(s, seed) for s in specs}


def write_safetensors(
    path: str | os.PathLike,
    specs: Sequence[TensorSpec],
    metadata: Mapping[str, str] | None = None,
    seed: int = 0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Path:
    """Write `specs` to `path` atomically (a temporary file renamed into place).

    Returns the path. The result is byte-identical for the same specs, metadata and seed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = safetensors_header(specs, metadata)
    expected = len(header) + sum(s.nbytes for s in specs)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            for spec in canonical_order(specs):
                for chunk in _chunks(spec, seed, chunk_elements):
                    f.write(chunk.contiguous().view(torch.uint8).numpy().data)
        written = tmp.stat().st_size
        if written != expected:
            raise RuntimeError(f"wrote {written} B to {tmp}, expected {expected} B")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.debug("wrote %s (%d tensors, %d B)", path, len(specs), expected)
    return path


def specs_from_module(
    module: torch.nn.Module,
    dtype: torch.dtype = torch.float16,
    prefix: str = "",
    std: float = 0.02,
    int_buffers_arange: bool = True,
) -> list[TensorSpec]:
    """Specs for every state-dict entry of `module` (build it on the meta device: no memory).

    Sane values for a usable random model: norm layers (any `*Norm*` module with an affine
    weight) get weight 1 and bias 0, every other bias 0, other floating weights N(0, std);
    integer buffers (e.g. `position_ids`) count 0..n-1.
    """
    norm_modules = {
        name
        for name, m in module.named_modules()
        if "norm" in type(m).__name__.lower()
        or isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d))
    }
    specs = []
    for key, tensor in module.state_dict(keep_vars=True).items():
        owner, _, leaf = key.rpartition(".")
        name = prefix + key
        if not tensor.dtype.is_floating_point:
            specs.append(
                TensorSpec(name, tuple(tensor.shape), tensor.dtype, "arange" if int_buffers_arange else "zeros")
            )
        elif owner in norm_modules and leaf == "weight":
            specs.append(TensorSpec(name, tuple(tensor.shape), dtype, "ones"))
        elif leaf == "bias":
            specs.append(TensorSpec(name, tuple(tensor.shape), dtype, "zeros"))
        else:
            specs.append(TensorSpec(name, tuple(tensor.shape), dtype, "normal", std))
    return specs
