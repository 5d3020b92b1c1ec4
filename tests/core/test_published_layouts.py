"""The synthetic writers reproduce every published file's layout, and its byte size where known.

Sources of truth: the published key tables in tests/data/keys/*.tsv and the published byte
sizes of the h94 / ostris safetensors files (reference checkpoint-formats.md, 1.4).
"""

from __future__ import annotations

import json
import math
import os
import pickletools
import zipfile
from collections import OrderedDict

from pathlib import Path

import pytest
import torch

from ip_adapter_core import catalog, describe
from ip_adapter_core.checkpoint import load_adapter_weights
from ip_adapter_core.spec import BaseModel
from ip_adapter_core.testing import (
    adapter_state,
    adapter_weights,
    resolve_variant,
    safetensors_header,
    safetensors_size,
    synthetic_metadata,
    write_adapter,
)

ENTRIES = catalog.PUBLISHED
NAMES = [e.file_name for e in ENTRIES]
SD15 = [e for e in ENTRIES if e.spec.base is BaseModel.SD15]
LARGE = [e for e in ENTRIES if e.spec.base is not BaseModel.SD15]

# Published byte sizes (Hugging Face LFS objects), copied from the reference, 1.4.
PUBLISHED_SAFETENSORS_BYTES = {
    "ip-adapter_sd15.safetensors": 44_642_768,
    "ip-adapter_sd15_light.safetensors": 44_642_768,
    "ip-adapter_sd15_vit-G.safetensors": 46_215_640,
    "ip-adapter-plus_sd15.safetensors": 98_183_288,
    "ip-adapter-plus-face_sd15.safetensors": 98_183_288,
    "ip-adapter-full-face_sd15.safetensors": 43_592_352,
    "ip-adapter_sdxl.safetensors": 702_585_376,
    "ip-adapter_sdxl_vit-h.safetensors": 698_391_064,
    "ip-adapter-plus_sdxl_vit-h.safetensors": 847_517_512,
    "ip-adapter-plus-face_sdxl_vit-h.safetensors": 847_517_512,
    # ostris/ip-composition-adapter: the same tensors as the Plus files + __metadata__
    "ip_plus_composition_sd15.safetensors": 98_183_728,
    "ip_plus_composition_sdxl.safetensors": 847_517_960,
}
OSTRIS_METADATA_BYTES = {"ip_plus_composition_sd15.safetensors": 440, "ip_plus_composition_sdxl.safetensors": 448}

# Parameter counts (reference 1.4, "params") of every published variant.
PUBLISHED_PARAMS = {
    "ip-adapter_sd15.safetensors": 22_319_616,
    "ip-adapter_sd15_light.safetensors": 22_319_616,
    "ip-adapter_sd15_light_v11.bin": 22_319_616,
    "ip-adapter_sd15_vit-G.safetensors": 23_106_048,
    "ip-adapter-plus_sd15.safetensors": 49_087_488,
    "ip-adapter-plus-face_sd15.safetensors": 49_087_488,
    "ip-adapter-full-face_sd15.safetensors": 21_794_304,
    "ip_plus_composition_sd15.safetensors": 49_087_488,
    "ip-adapter_sdxl.safetensors": 351_285_248,
    "ip-adapter_sdxl_vit-h.safetensors": 349_188_096,
    "ip-adapter-plus_sdxl_vit-h.safetensors": 423_748_864,
    "ip-adapter-plus-face_sdxl_vit-h.safetensors": 423_748_864,
    "ip_plus_composition_sdxl.safetensors": 423_748_864,
    "ip-adapter-faceid_sd15.bin": 48_354_816,
    "ip-adapter-faceid-plus_sd15.bin": 78_260_736,
    "ip-adapter-faceid-plusv2_sd15.bin": 78_260_736,
    "ip-adapter-faceid_sdxl.bin": 535_507_968,
    "ip-adapter-faceid-plusv2_sdxl.bin": 743_707_648,
    "ip-adapter-faceid-portrait_sd15.bin": 32_291_328,
    "ip-adapter-faceid-portrait-v11_sd15.bin": 32_291_328,
    "ip-adapter-faceid-portrait_sdxl.bin": 374_903_808,
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin": 422_765_824,
    "ip_adapter_plus_general.bin": 506_552_320,
}

# Published `.bin` sizes known to the byte (reference 1.4). A torch zip holds the fp16 bytes
# plus a record per tensor: ~100-108 B for the h94 files, ~307 B for Kolors (newer torch).
PUBLISHED_BIN_BYTES = {
    "ip-adapter_sd15_light_v11.bin": (44_642_977, (95, 110)),
    "ip-adapter-plus-face_sd15.bin": (98_183_381, (95, 110)),
    "ip-adapter-faceid_sd15.bin": (96_740_574, (95, 110)),
    "ip-adapter-faceid-plus_sd15.bin": (156_558_503, (95, 110)),
    "ip-adapter-faceid-plusv2_sd15.bin": (156_558_509, (95, 110)),
    "ip-adapter-faceid_sdxl.bin": (1_071_149_741, (95, 110)),
    "ip-adapter-faceid-plusv2_sdxl.bin": (1_487_555_181, (95, 110)),
    "ip-adapter-faceid-portrait-v11_sd15.bin": (64_586_623, (95, 110)),
    "ip_adapter_plus_general.bin": (1_013_163_359, (300, 315)),
}

_ST_DTYPE_NAMES = {"F16": "float16", "F32": "float32", "BF16": "bfloat16"}

KEYS_DIR = Path(__file__).resolve().parents[1] / "data" / "keys"
# Key tables are named after the published file, except where two repos publish the same name.
TSV_ALIASES = {"ip_adapter_plus_general.bin": "kolors_ip_adapter_plus_general.tsv"}


def tsv_name(file_name: str) -> str:
    return TSV_ALIASES.get(file_name, file_name.rsplit(".", 1)[0] + ".tsv")


def key_table(file_name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) rows of the published key table of `file_name`, in file order."""
    lines = (KEYS_DIR / tsv_name(file_name)).read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"], lines[0]
    rows = []
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(json.loads(shape)), dtype))
    return rows


def _table(state) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state.items()]


def _safetensors_table(path: str) -> tuple[dict, dict]:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    metadata = header.pop("__metadata__", {})
    table = {k: (tuple(v["shape"]), _ST_DTYPE_NAMES[v["dtype"]]) for k, v in header.items()}
    return table, metadata


def _fp16_bytes(spec) -> int:
    return 2 * sum(math.prod(s) for s in catalog.state_layout(spec).values())


# --- the key tables themselves ------------------------------------------------------


def test_every_published_file_has_a_key_table_and_vice_versa():
    adapter_tables = {p.name for p in KEYS_DIR.glob("*.tsv") if not p.name.startswith("clip_vision_")}
    assert {tsv_name(n) for n in NAMES} == adapter_tables
    assert len(set(NAMES)) == len(NAMES) == 23


def test_catalog_sizes_are_the_published_sizes():
    have = {e.file_name: e.published_bytes for e in ENTRIES if e.published_bytes}
    assert have == PUBLISHED_SAFETENSORS_BYTES
    assert {e.file_name: e.metadata_bytes for e in ENTRIES if e.metadata_bytes} == OSTRIS_METADATA_BYTES


@pytest.mark.parametrize("entry", ENTRIES, ids=NAMES)
def test_writer_layout_equals_published_key_table(entry):
    """Every key, shape and dtype, in the published order (the order `.bin` files keep)."""
    published = key_table(entry.file_name)
    state = adapter_state(entry.file_name, device="meta")
    assert all(t.is_meta for t in state.values())
    assert _table(state) == published
    assert list(catalog.state_layout(entry.spec).items()) == [(k, s) for k, s, _ in published]


@pytest.mark.parametrize("entry", ENTRIES, ids=NAMES)
def test_parameter_count_is_the_published_count(entry):
    assert adapter_weights(entry.file_name, device="meta").num_parameters() == PUBLISHED_PARAMS[entry.file_name]


@pytest.mark.parametrize("name", list(PUBLISHED_BIN_BYTES))
def test_layout_explains_the_published_bin_size(name):
    """No safetensors twin for these: the fp16 bytes of the layout plus a zip record per tensor
    must add up to the published size (one tensor more or less would not)."""
    size, (low, high) = PUBLISHED_BIN_BYTES[name]
    layout = catalog.state_layout(resolve_variant(name)[0])
    per_tensor = (size - _fp16_bytes(resolve_variant(name)[0])) / len(layout)
    assert low <= per_tensor <= high, per_tensor


# --- safetensors sizes --------------------------------------------------------------


@pytest.mark.parametrize("name", list(PUBLISHED_SAFETENSORS_BYTES), ids=list(PUBLISHED_SAFETENSORS_BYTES))
def test_computed_safetensors_size_is_the_published_size(name):
    assert safetensors_size(name) == PUBLISHED_SAFETENSORS_BYTES[name]


@pytest.mark.parametrize("name", list(OSTRIS_METADATA_BYTES))
def test_ostris_files_are_the_plus_layout_plus_metadata(name):
    bare = safetensors_size(name, metadata=None)
    plus = "ip-adapter-plus_sd15.safetensors" if "sd15" in name else "ip-adapter-plus_sdxl_vit-h.safetensors"
    assert bare == PUBLISHED_SAFETENSORS_BYTES[plus]
    assert safetensors_size(name) - bare == OSTRIS_METADATA_BYTES[name]
    meta = synthetic_metadata(name)
    assert meta is not None and all(isinstance(v, str) for v in meta.values())
    # the other container carries no metadata
    assert synthetic_metadata(name.replace(".safetensors", ".bin")) is None


def test_size_function_follows_the_writer_for_any_layout(tmp_path):
    """Not tuned to the published numbers: other dtypes, other metadata, a non-published spec."""
    import dataclasses

    spec = catalog.published("ip-adapter_sd15.safetensors").spec
    small = dataclasses.replace(spec, layer_widths=(40, 80, 160), cross_attention_dim=24, feature_dim=20)
    path = write_adapter(tmp_path, "small.safetensors", spec=small, dtype=torch.float32)
    assert os.path.getsize(path) == safetensors_size(small, dtype=torch.float32, metadata=None)
    with open(path, "rb") as fh:
        written = fh.read()
    header = safetensors_header(adapter_state(small, dtype=torch.float32, device="meta"), dtype=torch.float32)
    assert written.startswith(header)  # byte for byte, not just the length
    from safetensors.torch import save_file

    for meta in ({}, {"a": "b"}, {"format": "pt", "note": "x" * 37}):
        other = str(tmp_path / "meta.safetensors")
        save_file(dict(adapter_state(small, dtype=torch.bfloat16)), other, metadata=meta)
        assert os.path.getsize(other) == safetensors_size(small, dtype=torch.bfloat16, metadata=meta)


# --- real files (SD1.5 sizes only) ---------------------------------------------------

# One real file per distinct SD1.5 layout and container, and the ostris file for its
# metadata; the meta-device test above covers every published key table, and files with the
# same layout (sd15/light, plus/plus-face, faceid-plus/plusv2, portrait/v11) differ only in name.
WRITTEN = [
    catalog.published(n)
    for n in (
        "ip-adapter_sd15.safetensors",
        "ip-adapter_sd15_vit-G.safetensors",
        "ip-adapter-plus_sd15.safetensors",
        "ip-adapter-full-face_sd15.safetensors",
        "ip_plus_composition_sd15.safetensors",
        "ip-adapter_sd15_light_v11.bin",
        "ip-adapter-faceid_sd15.bin",
        "ip-adapter-faceid-plusv2_sd15.bin",
        "ip-adapter-faceid-portrait_sd15.bin",
    )
]


def test_written_files_cover_every_sd15_layout():
    layouts = {frozenset(catalog.state_layout(e.spec).items()) for e in SD15}
    assert {frozenset(catalog.state_layout(e.spec).items()) for e in WRITTEN} == layouts


@pytest.mark.parametrize("entry", WRITTEN, ids=[e.file_name for e in WRITTEN])
def test_written_sd15_file_matches_published_table_and_size(entry, adapter_file):
    path = adapter_file(entry.file_name)
    published = key_table(entry.file_name)
    if entry.file_name.endswith(".safetensors"):
        table, metadata = _safetensors_table(path)
        assert table == {k: (s, d) for k, s, d in published}
        assert os.path.getsize(path) == entry.published_bytes == safetensors_size(entry.file_name)
        assert bool(metadata) == bool(entry.metadata_bytes)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        assert list(obj) == ["image_proj", "ip_adapter"]
        assert all(type(half) is OrderedDict for half in obj.values())
        flat = {f"{part}.{k}": t for part in obj for k, t in obj[part].items()}
        assert _table(flat) == published  # keys, shapes, dtypes and the published order
        # fp16 tensor bytes plus the zip records (published files: ~105-307 B per tensor)
        overhead = os.path.getsize(path) - _fp16_bytes(entry.spec)
        assert 0 < overhead <= 512 * len(published) + 4096
        assert _pickle_globals(path) == {
            "collections.OrderedDict",
            "torch._utils._rebuild_tensor_v2",
            "torch.HalfStorage",
        }
    weights = load_adapter_weights(path)
    assert describe(weights) == entry.spec


def _pickle_globals(path: str) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        (pkl,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        data = zf.read(pkl)
    found = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        assert op.name not in ("STACK_GLOBAL", "INST", "OBJ"), op.name
    return found


ROUND_TRIP = [e.file_name for e in WRITTEN if e.file_name.endswith(".bin")] + [
    # the other container of a safetensors-only variant, and the reverse
    "ip-adapter_sd15.bin",
    "ip-adapter-faceid-portrait_sd15.safetensors",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_container_round_trip_through_the_loader(name, adapter_file):
    path = adapter_file(name)
    layout = catalog.state_layout(resolve_variant(name)[0])
    weights = load_adapter_weights(path)
    for part in ("image_proj", "ip_adapter"):
        keys = [k.removeprefix(part + ".") for k in layout if k.startswith(part + ".")]
        got = list(getattr(weights, part))
        # .bin keeps the published order; safetensors stores keys sorted
        assert got == keys if name.endswith(".bin") else sorted(got) == sorted(keys)
        for k, t in getattr(weights, part).items():
            assert t.dtype == torch.float16 and tuple(t.shape) == layout[f"{part}.{k}"], k
    # values: every image_proj tensor and a spread of the K/V (and LoRA) tensors
    kv_keys = [k for k in layout if k.startswith("ip_adapter.")]
    sample = [k for k in layout if k.startswith("image_proj.")] + kv_keys[::7]
    for key, tensor in adapter_state(name, keys=sample).items():
        part, _, rest = key.partition(".")
        assert torch.equal(getattr(weights, part)[rest], tensor), key
    assert describe(weights) == resolve_variant(name)[0]


def test_seed_reaches_the_file(adapter_file):
    name = "ip-adapter_sd15.bin"
    seven = load_adapter_weights(adapter_file(name, seed=7))
    zero = load_adapter_weights(adapter_file(name, seed=0))
    expected = adapter_state(name, seed=7)
    for key, tensor in seven.image_proj.items():
        assert torch.equal(tensor, expected["image_proj." + key])
        assert not torch.equal(tensor, zero.image_proj[key])


# --- SDXL / Kolors: no files, sizes and recognition from the layout -------------------


@pytest.mark.parametrize("entry", LARGE, ids=[e.file_name for e in LARGE])
def test_large_variants_are_recognised_on_the_meta_device(entry):
    weights = adapter_weights(entry.file_name, device="meta")
    assert all(t.is_meta for t in list(weights.image_proj.values()) + list(weights.ip_adapter.values()))
    assert describe(weights) == entry.spec
    if entry.file_name.endswith(".safetensors"):
        assert safetensors_size(entry.file_name) == PUBLISHED_SAFETENSORS_BYTES[entry.file_name]


# --- the values ------------------------------------------------------------------------


def test_values_are_seeded_and_sane():
    name = "ip-adapter-plus_sd15.safetensors"
    # every kind of tensor once: norms, biases, latents, linear weights, K/V, all but 3 layers
    later_layers = tuple(f"image_proj.layers.{i}." for i in (1, 2, 3))
    keys = [k for k in catalog.state_layout(catalog.published(name).spec) if not k.startswith(later_layers)]
    a = adapter_state(name, seed=0, dtype=torch.float32, materialize=("image_proj",), keys=keys)
    for key, t in a.items():
        if key.startswith("ip_adapter."):
            assert t.is_meta
            continue
        assert torch.isfinite(t).all(), key
        if t.ndim == 1 and key.endswith(".weight"):  # LayerNorm gains
            assert abs(t.mean().item() - 1.0) < 0.05 and 0.02 < t.std().item() < 0.5, key
        elif t.ndim == 1:  # biases
            assert abs(t.mean().item()) < 0.01 and t.abs().max().item() < 0.2, key
        elif key.endswith("latents"):
            assert abs(t.std().item() - t.shape[-1] ** -0.5) < 0.01, key
        else:
            assert abs(t.std().item() - 0.02) < 0.002, key
    small = "ip-adapter-faceid-portrait_sd15.bin"
    layout = catalog.state_layout(catalog.published(small).spec)
    keys = [k for k in layout if k.startswith("image_proj.") and "proj.2.weight" not in k]
    cheap = dict(keys=keys + ["ip_adapter.31.to_v_ip.weight"])
    b, again = adapter_state(small, seed=0, **cheap), adapter_state(small, seed=0, **cheap)
    assert all(torch.equal(b[k], again[k]) for k in b)
    c = adapter_state(small, seed=1, **cheap)
    assert all(not torch.equal(b[k], c[k]) for k in b)
    assert all(t.dtype == torch.float16 for t in b.values())
    # fp16 values are the fp32 values rounded
    b32 = adapter_state(small, seed=0, dtype=torch.float32, keys=list(b)[:6])
    assert all(torch.equal(b32[k].half(), b[k]) for k in b32)
    # a tensor depends on (seed, key, shape) only: same in every variant/container holding it
    keys = [k for k in a if k.startswith("image_proj.layers.0.")]
    other = adapter_state("ip_plus_composition_sd15.safetensors", seed=0, dtype=torch.float32, keys=keys)
    assert list(other) == keys and all(torch.equal(a[k], other[k]) for k in keys)
    # a subset is the same entries of the larger state (and of files: see the round trips)
    subset = adapter_state(small, seed=1, keys=["ip_adapter.31.to_v_ip.weight"])
    assert list(subset) == ["ip_adapter.31.to_v_ip.weight"]
    assert torch.equal(subset["ip_adapter.31.to_v_ip.weight"], c["ip_adapter.31.to_v_ip.weight"])


def test_resolves_other_containers_and_refuses_unknown_names(tmp_path):
    assert resolve_variant("ip-adapter-faceid_sd15.safetensors")[1].file_name == "ip-adapter-faceid_sd15.bin"
    assert resolve_variant("ip_adapter_plus_general.safetensors")[0].base is BaseModel.KOLORS
    with pytest.raises(KeyError, match="not-an-adapter"):
        write_adapter(tmp_path, "not-an-adapter.safetensors")
    with pytest.raises(ValueError):
        write_adapter(tmp_path, "ip-adapter_sd15.gguf")
    assert not list(tmp_path.iterdir())
