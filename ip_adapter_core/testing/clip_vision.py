"""Synthetic CLIP vision encoders in the layout ComfyUI's `models/clip_vision` files use.

Those files are the HF `transformers.CLIPVisionModelWithProjection` state dict (keys
`vision_model.*` + `visual_projection.weight`). This module knows the key -> shape table of the
three encoders IP-Adapters use, at their real sizes, computed from the config alone (no module is
instantiated, so a 1.8 G-parameter table costs nothing), and writes seeded random files in that
layout. ComfyUI's `comfy.clip_vision.load` picks its config from the layer count, so only real
layer counts are detected; fast tests use the tiny configs with `comfy_json_config` and build
`comfy.clip_vision.ClipVisionModel(json)` directly (or `hf_config` for transformers).

Host-free: torch + the standard library (transformers only inside `hf_config`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .safetensors_writer import TensorSpec, safetensors_file_size, state_dict, write_safetensors

log = logging.getLogger(__name__)

# Bump when the files this module writes change (names, values, layout): cached copies are keyed by it.
WRITER_VERSION = 1


@dataclass(frozen=True)
class ClipVisionConfig:
    """Architecture of a CLIP ViT image encoder plus facts about its published file."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    projection_dim: int
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    # The ComfyUI `models/clip_vision` file name it is published/used under.
    file_name: str = ""
    # Published file: dtype, whether it holds the int64 `position_ids` buffer, its metadata, byte size.
    published_dtype: torch.dtype = torch.float16
    published_position_ids: bool = False
    published_metadata: tuple[tuple[str, str], ...] = ()
    published_bytes: int | None = None

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def tokens(self) -> int:
        return self.num_positions


VIT_H = ClipVisionConfig(
    name="vit-h",
    hidden_size=1280,
    num_hidden_layers=32,
    num_attention_heads=16,
    intermediate_size=5120,
    projection_dim=1024,
    file_name="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    published_dtype=torch.float32,
    published_position_ids=True,
    published_metadata=(("format", "pt"),),
    published_bytes=2_528_373_448,  # h94/IP-Adapter models/image_encoder/model.safetensors
)

VIT_BIGG = ClipVisionConfig(
    name="vit-bigg",
    hidden_size=1664,
    num_hidden_layers=48,
    num_attention_heads=16,
    intermediate_size=8192,
    projection_dim=1280,
    file_name="CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
    published_dtype=torch.float16,
    published_position_ids=True,
    published_metadata=(("format", "pt"),),
    published_bytes=3_689_912_664,  # h94/IP-Adapter sdxl_models/image_encoder/model.safetensors
)

VIT_L_336 = ClipVisionConfig(
    name="vit-l-336",
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    projection_dim=768,
    image_size=336,
    hidden_act="quick_gelu",
    # Published as Kolors' image_encoder/pytorch_model.bin (a pickle); ComfyUI users keep a safetensors copy.
    file_name="clip-vit-large-patch14-336.safetensors",
    published_dtype=torch.float16,
)

# Tiny encoders for fast tests: >= 2 layers so `penultimate_hidden_states` exists.
TINY = ClipVisionConfig(
    name="tiny",
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    projection_dim=32,
    file_name="tiny-clip-vision.safetensors",
)
TINY_336 = replace(
    TINY, name="tiny-336", image_size=336, hidden_act="quick_gelu", file_name="tiny-clip-vision-336.safetensors"
)

CONFIGS = {c.name: c for c in (VIT_H, VIT_BIGG, VIT_L_336, TINY, TINY_336)}


def key_shapes(cfg: ClipVisionConfig, position_ids: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """The `CLIPVisionModelWithProjection` state-dict keys and shapes, in the model's order.

    position_ids: also list the int64 `vision_model.embeddings.position_ids` [1, tokens] buffer
    that files saved by older transformers (the h94 encoders) carry.
    """
    h, i, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    emb = "vision_model.embeddings."
    out: list[tuple[str, tuple[int, ...]]] = [
        (emb + "class_embedding", (h,)),
        (emb + "patch_embedding.weight", (h, 3, p, p)),
        (emb + "position_embedding.weight", (cfg.num_positions, h)),
    ]
    if position_ids:
        out.append((emb + "position_ids", (1, cfg.num_positions)))
    out += [("vision_model.pre_layrnorm.weight", (h,)), ("vision_model.pre_layrnorm.bias", (h,))]
    for n in range(cfg.num_hidden_layers):
        layer = f"vision_model.encoder.layers.{n}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += [(f"{layer}self_attn.{proj}.weight", (h, h)), (f"{layer}self_attn.{proj}.bias", (h,))]
        out += [
            (layer + "layer_norm1.weight", (h,)),
            (layer + "layer_norm1.bias", (h,)),
            (layer + "mlp.fc1.weight", (i, h)),
            (layer + "mlp.fc1.bias", (i,)),
            (layer + "mlp.fc2.weight", (h, i)),
            (layer + "mlp.fc2.bias", (h,)),
            (layer + "layer_norm2.weight", (h,)),
            (layer + "layer_norm2.bias", (h,)),
        ]
    out += [
        ("vision_model.post_layernorm.weight", (h,)),
        ("vision_model.post_layernorm.bias", (h,)),
        ("visual_projection.weight", (cfg.projection_dim, h)),
    ]
    return out


def tensor_specs(
    cfg: ClipVisionConfig, dtype: torch.dtype = torch.float16, position_ids: bool | None = None
) -> list[TensorSpec]:
    """Writer specs: norms 1/0, biases 0, weights and embeddings N(0, 0.02), position_ids 0..n-1.

    position_ids: None = as in the published file.
    """
    if position_ids is None:
        position_ids = cfg.published_position_ids
    specs = []
    for key, shape in key_shapes(cfg, position_ids=position_ids):
        if key.endswith("position_ids"):
            specs.append(TensorSpec(key, shape, torch.int64, "arange"))
        elif "norm" in key:  # pre_layrnorm, post_layernorm, layer_norm1/2
            specs.append(TensorSpec(key, shape, dtype, "ones" if key.endswith("weight") else "zeros"))
        elif key.endswith("bias"):
            specs.append(TensorSpec(key, shape, dtype, "zeros"))
        else:
            specs.append(TensorSpec(key, shape, dtype, "normal", 0.02))
    return specs


def parameter_count(cfg: ClipVisionConfig) -> int:
    total = 0
    for _, shape in key_shapes(cfg):
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def published_file_size(cfg: ClipVisionConfig) -> int:
    """Byte size of a file with the published dtype, buffers and metadata (computed, not written)."""
    return safetensors_file_size(
        tensor_specs(cfg, cfg.published_dtype, cfg.published_position_ids), dict(cfg.published_metadata)
    )


def write_clip_vision(
    path: str | os.PathLike,
    cfg: ClipVisionConfig = VIT_H,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    position_ids: bool | None = None,
) -> Path:
    """Write a seeded random encoder file in ComfyUI's clip_vision layout to `path`.

    `path` may be a directory (the file is then named `cfg.file_name`). Tensors are generated in
    chunks: writing ViT-H in fp16 (1.26 GB) needs well under 1 GB of RAM.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / cfg.file_name
    metadata = dict(cfg.published_metadata) or {"format": "pt"}
    return write_safetensors(path, tensor_specs(cfg, dtype, position_ids), metadata, seed=seed)


def clip_vision_state_dict(cfg: ClipVisionConfig = TINY, seed: int = 0, dtype: torch.dtype = torch.float32):
    """In-memory state dict with the values `write_clip_vision` would store (tiny configs)."""
    return state_dict(tensor_specs(cfg, dtype, position_ids=False), seed)


def cached_clip_vision(
    cache_dir: str | os.PathLike, cfg: ClipVisionConfig = VIT_H, seed: int = 0, dtype: torch.dtype = torch.float16
) -> Path:
    """The synthetic encoder file under `cache_dir`, written on first use.

    The folder name carries WRITER_VERSION, seed and dtype, so a change of the writer regenerates.
    """
    tag = str(dtype).removeprefix("torch.")
    path = Path(cache_dir) / f"clip_vision-v{WRITER_VERSION}-s{seed}-{tag}" / cfg.file_name
    if not path.exists():
        log.info("generating synthetic CLIP vision %s (%s) at %s", cfg.name, tag, path)
        write_clip_vision(path, cfg, seed=seed, dtype=dtype)
    return path


def comfy_json_config(cfg: ClipVisionConfig) -> dict:
    """The JSON ComfyUI's `ClipVisionModel(json_config)` reads (same fields as its bundled
    `comfy/clip_vision_config_*.json`)."""
    return {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": cfg.hidden_act,
        "hidden_size": cfg.hidden_size,
        "image_size": cfg.image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "model_type": "clip_vision_model",
        "num_attention_heads": cfg.num_attention_heads,
        "num_channels": 3,
        "num_hidden_layers": cfg.num_hidden_layers,
        "patch_size": cfg.patch_size,
        "projection_dim": cfg.projection_dim,
        "torch_dtype": "float32",
    }


def write_comfy_json(cfg: ClipVisionConfig, path: str | os.PathLike) -> Path:
    """Write `comfy_json_config(cfg)`; `path` may be a directory (file `<cfg.name>.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / f"clip_vision_config_{cfg.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(comfy_json_config(cfg), indent=2) + "\n")
    return path


def hf_config(cfg: ClipVisionConfig):
    """`transformers.CLIPVisionConfig` of the encoder (for `CLIPVisionModelWithProjection`)."""
    from transformers import CLIPVisionConfig

    fields = comfy_json_config(cfg)
    fields.pop("model_type")
    fields.pop("torch_dtype")
    return CLIPVisionConfig(**fields)


def describe(cfg: ClipVisionConfig) -> dict:
    """Plain-data summary (for reports)."""
    d = asdict(cfg)
    d["published_dtype"] = str(cfg.published_dtype)
    d["parameters"] = parameter_count(cfg)
    return d
