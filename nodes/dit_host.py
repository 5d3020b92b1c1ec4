"""ComfyUI internals the DiT (Flux / SD3.5) adapters touch, in one place (host.py's
counterpart for DiT models).

Written against ComfyUI 0.3.64-0.3.75 (`comfy/ldm/flux/layers.py` DoubleStreamBlock /
SingleStreamBlock, `comfy/ldm/modules/diffusionmodules/mmdit.py` `_block_mixing`). The
re-implemented block forwards call the blocks' own sub-modules and ComfyUI's attention
functions, so weight formats (GGUF, fp8 ops), LoRA weight patches and attention overrides in
transformer_options keep working; they differ from the originals only by the image-prompt
hooks and by not adding in place to their inputs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from comfy.ldm.flux import layers as flux_layers
from comfy.ldm.flux import math as flux_math
from comfy.ldm.modules import attention as comfy_attention
from comfy.ldm.modules.diffusionmodules import mmdit

from ..ip_adapter_core.dit.spec import DitAdapterSpec, DitBase, DitKind
from ..ip_adapter_core.errors import IncompatibleModelError

_ATTN_PARAMS = inspect.signature(comfy_attention.optimized_attention).parameters
# Since 0.3.59 attention functions take **kwargs and read transformer_options (attention overrides).
_ATTN_TAKES_OPTIONS = "transformer_options" in _ATTN_PARAMS or any(
    p.kind is inspect.Parameter.VAR_KEYWORD for p in _ATTN_PARAMS.values()
)


@dataclass(frozen=True)
class DitModelInfo:
    base: DitBase
    hidden: int
    heads: int
    head_dim: int
    double_blocks: int  # Flux double blocks, or SD3 joint blocks
    single_blocks: int  # Flux single blocks (0 for SD3)
    name: str

    @property
    def label(self) -> str:
        if self.base is DitBase.FLUX:
            return f"Flux ({self.double_blocks} double + {self.single_blocks} single blocks, width {self.hidden})"
        return f"SD3 MMDiT ({self.double_blocks} joint blocks, width {self.hidden})"


def diffusion_model(model) -> torch.nn.Module:
    return model.model.diffusion_model


def dit_model_info(model) -> DitModelInfo | None:
    """The DiT family of a MODEL, or None when it is not a Flux.1 / SD3 transformer."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if dm is None:
        return None
    name = type(model.model).__name__
    from comfy.ldm.flux.model import Flux

    if isinstance(dm, Flux):
        params = dm.params
        if getattr(params, "global_modulation", False) or getattr(params, "mlp_silu_act", False):
            return None  # Flux.2: no IP-Adapter exists for it
        return DitModelInfo(DitBase.FLUX, dm.hidden_size, dm.num_heads, dm.hidden_size // dm.num_heads,
                            len(dm.double_blocks), len(dm.single_blocks), name)
    if isinstance(dm, mmdit.MMDiT) and hasattr(dm, "joint_blocks"):
        attn = dm.joint_blocks[0].x_block.attn
        return DitModelInfo(DitBase.SD35, dm.hidden_size, attn.num_heads, attn.head_dim, len(dm.joint_blocks), 0, name)
    return None


def check_fits(spec: DitAdapterSpec, info: DitModelInfo | None, model, adapter_name: str) -> None:
    """Refuse an adapter that does not fit the model, naming both."""
    if info is None:
        what = type(getattr(model, "model", model)).__name__
        raise IncompatibleModelError(
            f"'{adapter_name}' ({spec.title}) is an IP-Adapter for {spec.base.label}, but the model is {what}, "
            f"not a {spec.base.label} transformer. Load a {spec.base.label} checkpoint, or use an adapter made for "
            "this model."
        )
    if info.base is not spec.base:
        raise IncompatibleModelError(
            f"'{adapter_name}' ({spec.title}) is an IP-Adapter for {spec.base.label}, but the model is "
            f"{info.label}. Use it with a {spec.base.label} model."
        )
    problems = []
    if spec.hidden_size != info.hidden:
        problems.append(f"its K/V layers are {spec.hidden_size} wide, the model's attention is {info.hidden}")
    if spec.kind is DitKind.XLABS and spec.blocks != info.double_blocks:
        problems.append(f"it has K/V for {spec.blocks} double blocks, the model has {info.double_blocks}")
    if spec.kind is DitKind.INSTANTX_FLUX:
        if spec.blocks != info.double_blocks + info.single_blocks:
            problems.append(f"it has K/V for {spec.blocks} blocks, the model has {info.double_blocks} double + "
                            f"{info.single_blocks} single blocks")
        elif spec.double_blocks is not None and spec.double_blocks != info.double_blocks:
            problems.append(f"it expects {spec.double_blocks} double blocks, the model has {info.double_blocks}")
    if spec.kind is DitKind.INSTANTX_SD35:
        if spec.blocks != info.double_blocks:
            problems.append(f"it has K/V for {spec.blocks} joint blocks, the model has {info.double_blocks}")
        if spec.head_dim != info.head_dim:
            problems.append(f"its heads are {spec.head_dim}-d, the model's {info.head_dim}-d")
        dm = None
        try:
            dm = diffusion_model(model)
        except AttributeError:
            pass
        if dm is not None and any(getattr(b.x_block, "x_block_self_attn", False) for b in dm.joint_blocks):
            problems.append("the model is an MMDiT-X (SD3.5 Medium) with a second image self-attention")
    if problems:
        raise IncompatibleModelError(
            f"'{adapter_name}' ({spec.title}) does not fit this {info.label}: {'; '.join(problems)}. "
            + ("It was made for FLUX.1-dev (19 double + 38 single blocks, width 3072)." if spec.base is DitBase.FLUX
               else "It was made for SD3.5 Large (38 joint blocks, width 2432); SD3.5 Medium and SD3 Medium do not fit.")
        )


def transformer_options(args: dict, extra: dict) -> dict:
    """The block's transformer_options (args since ComfyUI 0.3.5x, the extra dict before)."""
    to = args.get("transformer_options")
    if to is None:
        to = extra.get("transformer_options")
    return to if to is not None else {}


# --- Flux -----------------------------------------------------------------------------------


def _double_mods(block, vec):
    if getattr(block, "modulation", True):
        img_mod1, img_mod2 = block.img_mod(vec)
        txt_mod1, txt_mod2 = block.txt_mod(vec)
        return img_mod1, img_mod2, txt_mod1, txt_mod2
    (img_mod1, img_mod2), (txt_mod1, txt_mod2) = vec
    return img_mod1, img_mod2, txt_mod1, txt_mod2


def _qkv(attn_module, x, mod, heads):
    qkv = attn_module.qkv(flux_layers.apply_mod(x, 1 + mod.scale, mod.shift))
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


def flux_double_query(block, args: dict) -> torch.Tensor:
    """The image query [B, H, L, D] a DoubleStreamBlock computes from args (after its QK-norm,
    before RoPE). Call it before the block runs: the block adds to args["img"] in place."""
    img_mod1 = _double_mods(block, args["vec"])[0]
    q, _, v = _qkv(block.img_attn, block.img_norm1(args["img"]), img_mod1, block.num_heads)
    return block.img_attn.norm.query_norm(q).to(v)


def flux_double_forward(block, args: dict, add_attn=None, add_out=None) -> dict:
    """DoubleStreamBlock.forward with hooks: `add_attn(q_img, img_attn)` returns the image
    attention output before img_attn.proj (InstantX); `add_out(q_img)` returns a term added to
    the block's image output (XLabs). q_img: [B, H, L, D] after QK-norm, before RoPE."""
    img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
    attn_mask = args.get("attn_mask")
    to = args.get("transformer_options") or {}
    img_mod1, img_mod2, txt_mod1, txt_mod2 = _double_mods(block, vec)

    img_q, img_k, img_v = _qkv(block.img_attn, block.img_norm1(img), img_mod1, block.num_heads)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    txt_q, txt_k, txt_v = _qkv(block.txt_attn, block.txt_norm1(txt), txt_mod1, block.num_heads)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    if getattr(block, "flipped_img_txt", False):
        q, k, v = (torch.cat(p, dim=2) for p in ((img_q, txt_q), (img_k, txt_k), (img_v, txt_v)))
        attn = flux_math.attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=to)
        img_attn, txt_attn = attn[:, : img.shape[1]], attn[:, img.shape[1]:]
    else:
        q, k, v = (torch.cat(p, dim=2) for p in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        attn = flux_math.attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=to)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
    del q, k, v, attn

    if add_attn is not None:
        img_attn = add_attn(img_q, img_attn)
    apply_mod = flux_layers.apply_mod
    img = img + apply_mod(block.img_attn.proj(img_attn), img_mod1.gate)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift)), img_mod2.gate)
    txt = txt + apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate)
    txt = txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift)), txt_mod2.gate)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    if add_out is not None:
        img = img + add_out(img_q)
    return {"img": img, "txt": txt}


def flux_single_forward(block, args: dict, add_attn) -> dict:
    """SingleStreamBlock.forward with `add_attn(q, attn)` applied to the attention output of
    the whole (text + image) sequence before linear2 (InstantX)."""
    x, vec, pe = args["img"], args["vec"], args["pe"]
    to = args.get("transformer_options") or {}
    mod = block.modulation(vec)[0] if block.modulation else vec
    mlp_first = getattr(block, "mlp_hidden_dim_first", block.mlp_hidden_dim)
    qkv, mlp = torch.split(
        block.linear1(flux_layers.apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift)),
        [3 * block.hidden_size, mlp_first], dim=-1,
    )
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    del qkv
    q, k = block.norm(q, k, v)
    attn = flux_math.attention(q, k, v, pe=pe, mask=args.get("attn_mask"), transformer_options=to)
    attn = add_attn(q, attn)
    output = block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))
    x = x + flux_layers.apply_mod(output, mod.gate)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return {"img": x}


def flux_double_block(model, i: int):
    return diffusion_model(model).double_blocks[i]


def flux_single_block(model, i: int):
    return diffusion_model(model).single_blocks[i]


# --- SD3 / MMDiT ----------------------------------------------------------------------------


def _joint_attention(q, k, v, heads: int, to: dict):
    if _ATTN_TAKES_OPTIONS:
        return comfy_attention.optimized_attention(q, k, v, heads=heads, transformer_options=to)
    return comfy_attention.optimized_attention(q, k, v, heads=heads)


def mmdit_joint_forward(joint_block, args: dict, add_attn) -> dict:
    """`_block_mixing` of one JointBlock with `add_attn(q_raw, k_raw, v, x_attn)`: q_raw/k_raw/v
    [B, H, L, D] are the image stream's projections before ln_q/ln_k; it returns the image
    attention output before the x block's attn.proj (InstantX SD3.5)."""
    context, x, c = args["txt"], args["img"], args["vec"]
    to = args.get("transformer_options") or {}
    cb, xb = joint_block.context_block, joint_block.x_block
    context_qkv, context_inter = cb.pre_attention(context, c)

    if not xb.scale_mod_only:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = xb.adaLN_modulation(c).chunk(6, dim=1)
    else:
        shift_msa = shift_mlp = None
        scale_msa, gate_msa, scale_mlp, gate_mlp = xb.adaLN_modulation(c).chunk(4, dim=1)
    qkv = xb.attn.qkv(mmdit.modulate(xb.norm1(x), shift_msa, scale_msa))
    q_raw, k_raw, v = mmdit.split_qkv(qkv, xb.attn.head_dim)  # [B, L, H, D]
    q = xb.attn.ln_q(q_raw).reshape(q_raw.shape[0], q_raw.shape[1], -1)
    k = xb.attn.ln_k(k_raw).reshape(q_raw.shape[0], q_raw.shape[1], -1)

    attn = _joint_attention(
        torch.cat((context_qkv[0], q), dim=1), torch.cat((context_qkv[1], k), dim=1),
        torch.cat((context_qkv[2], v), dim=1), xb.attn.num_heads, to,
    )
    n_ctx = context_qkv[0].shape[1]
    context_attn, x_attn = attn[:, :n_ctx], attn[:, n_ctx:]
    context = cb.post_attention(context_attn, *context_inter) if not cb.pre_only else None
    x_attn = add_attn(q_raw.transpose(1, 2), k_raw.transpose(1, 2), v.transpose(1, 2), x_attn)
    x = xb.post_attention(x_attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp)
    return {"txt": context, "img": x}


def mmdit_joint_block(model, i: int):
    return diffusion_model(model).joint_blocks[i]


def timestep_multiplier(model) -> float:
    """DiT timestep per sigma (SD3: 1000): ModelSamplingDiscreteFlow.timestep(sigma) = sigma * multiplier."""
    sampling = model.get_model_object("model_sampling")
    return float(getattr(sampling, "multiplier", 1000.0))
