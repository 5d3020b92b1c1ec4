"""Everything that touches ComfyUI internals beyond the node API, in one place.

Keeping the compatibility surface small is what lets the pack survive host updates.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

import comfy.model_management as mm
from comfy.ldm.modules import attention as comfy_attention

from ..ip_adapter_core.errors import IncompatibleModelError
from ..ip_adapter_core.spec import AdapterSpec, BaseModel

log = logging.getLogger("ipadapter_kit")

# Hosts since 0.3.59 route attention through overrides in transformer_options and honour
# attn_precision; older ones take (q, k, v, heads) only.
_ATTN_TAKES_OPTIONS = "attn_precision" in inspect.signature(comfy_attention.optimized_attention).parameters


def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """The attention the unpatched layer would compute (same function, same arguments)."""
    heads = extra_options["n_heads"]
    if _ATTN_TAKES_OPTIONS:
        return comfy_attention.optimized_attention(
            q, k, v, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
        )
    return comfy_attention.optimized_attention(q, k, v, heads)


@dataclass(frozen=True)
class HostLayer:
    """One attn2 of the loaded UNet, in checkpoint order."""

    index: int
    key: tuple[str, int, int]  # ComfyUI's (block, block_id, block_index)
    transformer_index: int
    width: int  # attn2 inner width
    context_dim: int
    heads: int
    module_path: str = ""  # "input_blocks.1.1.transformer_blocks.0" inside diffusion_model

    @property
    def block(self) -> str:
        return self.key[0]

    @property
    def block_index(self) -> int:
        return self.key[2]


def unet_of(model) -> torch.nn.Module:
    return model.model.diffusion_model


def cross_attention_layers(model) -> list[HostLayer]:
    """Enumerate the UNet's cross-attention layers as ComfyUI keys them, in the order
    adapter checkpoints number them (input, output, middle)."""
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = unet_of(model)
    blocks = []
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if not hasattr(unet, name):
            raise IncompatibleModelError(
                f"This model ({type(model.model).__name__}) is not a UNet like SD1.5/SDXL: "
                "SD1.5/SDXL/Kolors IP-Adapters only apply to those. For Flux or SD3.5 use the "
                "IP-Adapter made for them."
            )
    blocks = [("input", i, b, f"input_blocks.{i}") for i, b in enumerate(unet.input_blocks)]
    blocks.append(("middle", 0, unet.middle_block, "middle_block"))
    blocks += [("output", i, b, f"output_blocks.{i}") for i, b in enumerate(unet.output_blocks)]
    found = []
    t_idx = 0
    for block_name, block_id, block, block_path in blocks:
        children = list(block) if isinstance(block, torch.nn.Sequential) else [block]
        for m_idx, module in enumerate(children):
            if not isinstance(module, SpatialTransformer):
                continue
            for i, tb in enumerate(module.transformer_blocks):
                attn2 = getattr(tb, "attn2", None)
                if attn2 is None:
                    continue
                path = f"{block_path}.{m_idx}.transformer_blocks.{i}"
                found.append(
                    (block_name, block_id, i, t_idx, attn2.to_q.out_features, attn2.to_k.in_features, attn2.heads, path)
                )
            t_idx += 1
    order = {"input": 0, "output": 1, "middle": 2}
    found.sort(key=lambda f: (order[f[0]], f[3], f[2]))
    return [
        HostLayer(index=n, key=(b, bid, i), transformer_index=t, width=w, context_dim=c, heads=h, module_path=path)
        for n, (b, bid, i, t, w, c, h, path) in enumerate(found)
    ]


def model_family(model, layers: list[HostLayer]) -> str:
    """"sd15", "sdxl", "kolors" or a description of what the model is."""
    name = type(model.model).__name__
    if getattr(unet_of(model), "encoder_hid_proj", None) is not None or "kolors" in name.lower():
        return BaseModel.KOLORS.value
    if len(layers) == 16 and layers[0].context_dim == 768:
        return BaseModel.SD15.value
    if len(layers) == 70 and layers[0].context_dim == 2048:
        return BaseModel.SDXL.value
    ctx = layers[0].context_dim if layers else 0
    return f"{name} ({len(layers)} cross-attention layers, {ctx}-d text tokens)"


_FAMILY_LABEL = {"sd15": "SD1.5", "sdxl": "SDXL", "kolors": "Kolors"}


def check_adapter_fits(spec: AdapterSpec, model, layers: list[HostLayer], adapter_name: str) -> None:
    """Refuse an adapter made for another base model, naming both."""
    family = model_family(model, layers)
    want = spec.base.value
    label = _FAMILY_LABEL.get(family, family)
    if family != want:
        hint = {
            "sd15": "Use an SD1.5 adapter (e.g. ip-adapter_sd15.safetensors) with this model",
            "sdxl": "Use an SDXL adapter (e.g. ip-adapter_sdxl_vit-h.safetensors) with this model",
            "kolors": "Use the Kolors adapter (ip_adapter_plus_general.bin) with this model",
        }.get(family, "Load a base model this adapter was made for")
        raise IncompatibleModelError(
            f"'{adapter_name}' is an IP-Adapter for {spec.base.label}, but the model is {label}. "
            f"{hint}, or load a {spec.base.label} checkpoint for this adapter."
        )
    widths = [layer.width for layer in layers]
    if widths != list(spec.layer_widths) or any(layer.context_dim != spec.cross_attention_dim for layer in layers):
        raise IncompatibleModelError(
            f"'{adapter_name}' ({spec.base.label}) does not fit this model's cross-attention layers "
            f"({len(layers)} layers, widths {sorted(set(widths))}); the checkpoint may be a "
            "modified architecture."
        )


def sigma_range(model, start_at: float, end_at: float) -> tuple[float, float]:
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_at)), float(sampling.percent_to_sigma(end_at))


def compute_device() -> torch.device:
    return mm.get_torch_device()


def offload_device() -> torch.device:
    return mm.unet_offload_device()


def storage_device() -> torch.device:
    """Where per-apply tensors live between runs (CPU on every host)."""
    return mm.intermediate_device()


def adapter_dtype(device: torch.device, allow_bf16: bool = False) -> torch.dtype:
    """Compute dtype of adapter modules on `device`. The Flux/SD3.5 files are bf16 and their
    hosts run in bf16, so those may use it; the UNet adapters stay in fp16/fp32 like the UNet."""
    if device.type == "cpu":
        return torch.float32
    if allow_bf16 and mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16 if mm.should_use_fp16(device) else torch.float32


def load_to_device(patcher) -> None:
    mm.load_models_gpu([patcher])


# --- which batch chunk is the negative -------------------------------------------------
# ComfyUI batches the conds a guider passes to calc_cond_batch and tells the patch each
# chunk's *position* in that list (`cond_or_uncond`). Position 0 is the positive only for
# CFGGuider ([positive, negative]); DualCFGGuider (CosXL edit / ip2p) passes [negative,
# middle, positive]. Two wrappers recover each chunk's role by name: PREDICT_NOISE sees the
# guider and records {uuid set of a cond list: its name ("positive", "negative", "middle",
# ...)}; CALC_COND_BATCH matches its cond lists (or their context-window copies, which
# keep the uuids) against that and stores one role per position for the patch.

_ROLE_WRAPPER_KEY = "ipadapter_kit.cond_roles"
_ROLES_BY_CONDS = "ipadapter_kit.roles_by_conds"
CHUNK_ROLES = "ipadapter_kit.chunk_roles"
POSITIVE_ROLE = "positive"


def _cond_signature(conds) -> frozenset:
    return frozenset(c.get("uuid") for c in conds if isinstance(c, dict))


def _with_transformer_option(model_options: dict, key: str, value) -> dict:
    options = dict(model_options)
    transformer = dict(options.get("transformer_options", {}))
    transformer[key] = value
    options["transformer_options"] = transformer
    return options


def _note_guider_roles(executor, x, timestep, model_options={}, seed=None):  # noqa: B006 - mirrors the host signature
    conds = getattr(executor.class_obj, "conds", None)
    if isinstance(conds, dict) and isinstance(model_options, dict):
        roles, ambiguous = {}, set()
        for name, cond_list in conds.items():
            signature = _cond_signature(cond_list) if cond_list else frozenset()
            if not signature or None in signature:
                continue  # conds without uuids cannot be told apart: positional fallback
            if roles.setdefault(signature, name) != name:
                ambiguous.add(signature)
        for signature in ambiguous:
            roles.pop(signature)
        model_options = _with_transformer_option(model_options, _ROLES_BY_CONDS, roles)
    return executor(x, timestep, model_options, seed)


def _note_chunk_roles(executor, model, conds, x_in, timestep, model_options):
    roles = model_options.get("transformer_options", {}).get(_ROLES_BY_CONDS) if isinstance(model_options, dict) else None
    if roles:
        by_position = tuple(None if c is None else roles.get(_cond_signature(c)) for c in conds)
        model_options = _with_transformer_option(model_options, CHUNK_ROLES, by_position)
    return executor(model, conds, x_in, timestep, model_options)


def track_cond_roles(model_patcher) -> None:
    """Let the patch tell positive from negative chunks under any guider (idempotent)."""
    if not hasattr(model_patcher, "add_wrapper_with_key"):
        return  # hosts before Dec 2024: only CFGGuider's [positive, negative] layout exists
    from comfy.patcher_extension import WrappersMP

    for kind, fn in ((WrappersMP.PREDICT_NOISE, _note_guider_roles), (WrappersMP.CALC_COND_BATCH, _note_chunk_roles)):
        if fn not in model_patcher.get_wrappers(kind, _ROLE_WRAPPER_KEY):
            model_patcher.add_wrapper_with_key(kind, _ROLE_WRAPPER_KEY, fn)


def chunk_kinds(extra_options: dict, cond: int = 0, uncond: int = 1) -> tuple[int, ...]:
    """`cond` or `uncond` for every chunk of the current batch: the guider's "positive"
    conds are `cond`, every other list (negative, DualCFG's middle, ...) is `uncond`.
    Without role information, position 0 is the positive (CFGGuider's layout)."""
    layout = extra_options.get("cond_or_uncond") or (0,)
    roles = extra_options.get(CHUNK_ROLES)
    out = []
    for position in layout:
        role = roles[position] if roles and 0 <= position < len(roles) else None
        if role is None:
            out.append(cond if position == 0 else uncond)
        else:
            out.append(cond if role == POSITIVE_ROLE else uncond)
    return tuple(out)
