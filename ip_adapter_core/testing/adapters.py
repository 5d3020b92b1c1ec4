"""Seeded synthetic IP-Adapter checkpoints with exactly the published layouts.

Every tensor comes from `catalog.state_layout(spec)`, so a synthetic file holds the same
keys, shapes and dtype as the published file of that variant, and a synthetic
`.safetensors` file has the published byte size (the header lists every key, shape and
offset, so one wrong entry would change it).

    write_adapter(dir, "ip-adapter-plus_sd15.safetensors")     # the published container
    write_adapter(dir, "ip-adapter-plus_sd15.bin")             # the other container of it
    adapter_state("ip-adapter_sdxl.safetensors", device="meta") # shapes only, no memory
    safetensors_size("ip-adapter_sdxl.safetensors")            # bytes, without writing

Values are seeded per key (the same key and seed give the same tensor in any container
and any variant) and have sane scales: LayerNorm gains ~1, biases ~0, Resampler latents
N(0, 1/dim), every other weight N(0, 0.02), so projections and attention give finite,
non-trivial outputs. Never commit generated files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zlib
from collections import OrderedDict
from collections.abc import Collection, Mapping

import torch

from .. import catalog
from ..catalog import PublishedAdapter
from ..checkpoint import AdapterWeights, split_adapter_state
from ..spec import AdapterSpec

Shape = tuple[int, ...]
SpecLike = AdapterSpec | PublishedAdapter | str

PARTS = ("image_proj", "ip_adapter")
SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
TORCH_EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt")
DEFAULT_WEIGHT_STD = 0.02

_AUTO = object()


# --- which variant ------------------------------------------------------------------


def _stem(name: str) -> str:
    for ext in (".safetensors",) + TORCH_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def resolve_variant(spec_or_name: SpecLike) -> tuple[AdapterSpec, PublishedAdapter | None]:
    """(spec, published entry or None) for a spec, a catalog entry or a file name.

    A file name is either a published name or the other container of a published variant
    (`ip-adapter_sd15.bin`, `ip-adapter-faceid_sd15.safetensors`)."""
    if isinstance(spec_or_name, AdapterSpec):
        return spec_or_name, None
    if isinstance(spec_or_name, PublishedAdapter):
        return spec_or_name.spec, spec_or_name
    name = os.path.basename(os.fspath(spec_or_name))
    for entry in catalog.PUBLISHED:
        if entry.file_name == name:
            return entry.spec, entry
    matches = [entry for entry in catalog.PUBLISHED if _stem(entry.file_name) == _stem(name)]
    if len(matches) == 1:
        return matches[0].spec, matches[0]
    raise KeyError(
        f"'{name}' is neither a published IP-Adapter file nor another container of one; "
        "pass an AdapterSpec instead."
    )


# --- tensors ------------------------------------------------------------------------


def _generator(seed: int, key: str) -> torch.Generator:
    mixed = (int(seed) * 0x9E3779B1 + zlib.crc32(key.encode("utf-8"))) & ((1 << 63) - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


@contextlib.contextmanager
def _one_thread():
    """Generation is elementwise and memory bound; waking a second intra-op thread for each
    of hundreds of small tensors costs more than it gains (much more on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_tensor(key: str, shape: Shape, seed: int, weight_std: float) -> torch.Tensor:
    """fp32 values with scales a trained adapter would plausibly have."""
    if len(shape) == 1 and key.endswith(".weight"):  # every 1-d weight here is a LayerNorm gain
        mean, std = 1.0, 0.1
    elif len(shape) == 1:  # biases
        mean, std = 0.0, 0.02
    elif key.endswith("latents"):
        mean, std = 0.0, 1.0 / math.sqrt(shape[-1])
    else:
        mean, std = 0.0, weight_std
    return torch.normal(mean, std, size=shape, generator=_generator(seed, key), dtype=torch.float32)


def adapter_state(
    spec_or_name: SpecLike,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device | None = None,
    materialize: Collection[str] = PARTS,
    weight_std: float = DEFAULT_WEIGHT_STD,
    keys: Collection[str] | None = None,
) -> OrderedDict[str, torch.Tensor]:
    """Flat `image_proj.*` / `ip_adapter.*` tensors of a variant, in the published key order.

    `device="meta"` gives shapes and dtypes only. Halves not named in `materialize` are
    created on the meta device (e.g. real `image_proj`, meta `ip_adapter` for an SDXL
    projection test that should not allocate 340 M K/V parameters). `keys` limits the
    result to those keys; each tensor depends only on (seed, key, shape), so a subset costs
    only its own size and equals the same entries of the full state."""
    spec, _ = resolve_variant(spec_or_name)
    unknown = set(materialize) - set(PARTS)
    if unknown:
        raise ValueError(f"materialize takes {PARTS}, not {sorted(unknown)}")
    layout = catalog.state_layout(spec)
    if keys is not None:
        missing = set(keys) - set(layout)
        if missing:
            raise KeyError(f"not in the {spec.title} layout: {sorted(missing)[:4]}")
        layout = {k: v for k, v in layout.items() if k in set(keys)}
    meta_all = device is not None and torch.device(device).type == "meta"
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    with _one_thread():
        for key, shape in layout.items():
            part = key.split(".", 1)[0]
            if meta_all or part not in materialize:
                out[key] = torch.empty(shape, dtype=dtype, device="meta")
                continue
            tensor = _init_tensor(key, shape, seed, weight_std).to(dtype)
            out[key] = tensor.to(device) if device is not None else tensor
    return out


def nested_state(flat: Mapping[str, torch.Tensor]) -> dict[str, OrderedDict[str, torch.Tensor]]:
    """The `.bin` structure: {"image_proj": OrderedDict, "ip_adapter": OrderedDict}, prefixes removed."""
    nested: dict[str, OrderedDict[str, torch.Tensor]] = {part: OrderedDict() for part in PARTS}
    for key, tensor in flat.items():
        part, _, rest = key.partition(".")
        if part not in nested or not rest:
            raise KeyError(f"'{key}' has neither an 'image_proj.' nor an 'ip_adapter.' prefix")
        nested[part][rest] = tensor
    return nested


def adapter_weights(
    spec_or_name: SpecLike,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device | None = None,
    materialize: Collection[str] = PARTS,
    weight_std: float = DEFAULT_WEIGHT_STD,
) -> AdapterWeights:
    """`adapter_state` split the way `checkpoint.load_adapter_weights` splits a file."""
    _, entry = resolve_variant(spec_or_name)
    source = spec_or_name if isinstance(spec_or_name, str) else entry.file_name if entry else "<synthetic>"
    state = adapter_state(spec_or_name, seed, dtype, device, materialize, weight_std)
    return split_adapter_state(state, os.path.basename(source))


# --- safetensors header and size ----------------------------------------------------


def _shapes(layout_or_state: Mapping) -> dict[str, Shape]:
    return {
        k: tuple(int(d) for d in (v.shape if isinstance(v, torch.Tensor) else v))
        for k, v in layout_or_state.items()
    }


def _header_json(
    shapes: Mapping[str, Shape], dtype: torch.dtype, metadata: Mapping[str, str] | None
) -> tuple[bytes, int]:
    """(unpadded header JSON, data bytes), built the way the safetensors writer builds it:
    `__metadata__` first, tensors sorted by name (all share one dtype), compact JSON."""
    try:
        code = SAFETENSORS_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"no safetensors dtype code for {dtype}") from None
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, object] = {}
    if metadata is not None:  # the writer keeps an empty dict: "__metadata__":{}
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key in sorted(shapes):
        nbytes = math.prod(shapes[key]) * itemsize
        header[key] = {"dtype": code, "shape": list(shapes[key]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text, offset


def safetensors_header(
    layout_or_state: Mapping, dtype: torch.dtype = torch.float16, metadata: Mapping[str, str] | None = None
) -> bytes:
    """The bytes a safetensors file of these tensors starts with: 8-byte length + padded JSON."""
    text, _ = _header_json(_shapes(layout_or_state), dtype, metadata)
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def synthetic_metadata(
    spec_or_name: SpecLike, dtype: torch.dtype = torch.float16, file_name: str | None = None
) -> dict[str, str] | None:
    """`__metadata__` for a synthetic copy of a published `.safetensors` file that carries
    some (the ostris composition adapters): it makes the file exactly `metadata_bytes` larger
    than the same tensors without metadata. None when the file has no metadata."""
    spec, entry = resolve_variant(spec_or_name)
    name = file_name or (spec_or_name if isinstance(spec_or_name, str) else entry.file_name if entry else "")
    if entry is None or not entry.metadata_bytes or not entry.file_name.endswith(".safetensors"):
        return None
    if not os.path.basename(name).endswith(".safetensors"):
        return None
    extra = entry.metadata_bytes
    if extra % 8:
        raise ValueError(f"{entry.file_name}: {extra} B of metadata cannot be matched exactly (not a multiple of 8)")
    shapes = catalog.state_layout(spec)
    bare, _ = _header_json(shapes, dtype, None)
    padded = len(bare) + (-len(bare) % 8)
    metadata = {
        "format": "pt",
        "ip_adapter_kit": f"synthetic copy of {entry.repo}/{entry.file_name}",
        "padding": "",
    }
    with_meta, _ = _header_json(shapes, dtype, metadata)
    fill = padded + extra - len(with_meta)
    if fill < 0:
        raise ValueError(f"{entry.file_name}: {extra} B is too little room for the metadata")
    metadata["padding"] = "0" * fill
    return metadata


def safetensors_size(
    spec_or_name: SpecLike, dtype: torch.dtype = torch.float16, metadata: Mapping[str, str] | None | object = _AUTO
) -> int:
    """Exact size in bytes of the `.safetensors` file `write_adapter` would write, computed
    from the layout alone. By default the metadata is what `write_adapter` adds for that name."""
    spec, _ = resolve_variant(spec_or_name)
    if metadata is _AUTO:
        metadata = synthetic_metadata(spec_or_name, dtype)
    shapes = catalog.state_layout(spec)
    _, data = _header_json(shapes, dtype, metadata)  # type: ignore[arg-type]
    return len(safetensors_header(shapes, dtype, metadata)) + data  # type: ignore[arg-type]


# --- files --------------------------------------------------------------------------


def write_adapter(
    path: str | os.PathLike,
    file_name: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    spec: AdapterSpec | None = None,
    weight_std: float = DEFAULT_WEIGHT_STD,
) -> str:
    """Write a synthetic adapter as `path/file_name` and return its path.

    `.safetensors`: flat `image_proj.` / `ip_adapter.` keys (plus the published metadata size
    for the ostris files). `.bin`/`.pt`/`.pth`/`.ckpt`: `torch.save` of
    {"image_proj": OrderedDict, "ip_adapter": OrderedDict}. Without `spec`, the name must be
    a published file or the other container of one."""
    from safetensors.torch import save_file

    if os.path.basename(file_name) != file_name:
        raise ValueError(f"file_name must be a bare file name, not '{file_name}'")
    if not file_name.endswith((".safetensors",) + TORCH_EXTENSIONS):
        raise ValueError(f"'{file_name}': write .safetensors or one of {TORCH_EXTENSIONS}")
    variant: SpecLike = spec if spec is not None else file_name
    state = adapter_state(variant, seed, dtype, weight_std=weight_std)
    os.makedirs(path, exist_ok=True)
    out = os.path.join(os.fspath(path), file_name)
    if file_name.endswith(".safetensors"):
        metadata = synthetic_metadata(file_name, dtype) if spec is None else None
        save_file(dict(state), out, metadata=metadata)
    else:
        torch.save(nested_state(state), out)
    return out
