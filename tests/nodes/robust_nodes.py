"""Test-only nodes and graph builders of the reliability tests (tests/nodes/test_errors_*.py,
test_hygiene.py): every case runs through ComfyUI's own validator and executor
(`host.run_prompt`) with the pack's real nodes; the nodes here only supply tiny models,
encoders and hand-made bad inputs that no core node produces (RGBA, NaN, empty batches).

    with registered():                      # or the module-scoped `robust_nodes` fixture
        run_prompt(apply_graph(image="rgba"))
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

import tiny  # noqa: I001  (sets up the host first)
import nodes as comfy_nodes
from feature_helpers import kolors_model, kolors_spec
from host import HostError, run_prompt
from ipadapter_kit.ip_adapter_core.spec import ImageEncoder, ProjectionKind
from ipadapter_kit.nodes import host as pack_host

_CACHE: dict = {}


def cached(key, make):
    """One object per key for the whole session (the executor re-runs test nodes per prompt)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


# --- models, adapters, encoders ---------------------------------------------------------

MODELS = ("sd15", "sdxl", "kolors")


def model(arch: str):
    if arch == "kolors":
        return cached(("model", arch), kolors_model)
    return cached(("model", arch), lambda: tiny.tiny_model(arch))


def _spec(name: str):
    """Adapter variants by name: '<model arch>-<projection>[-<encoder>]'.

    linear/plus = tiny widths (tiny CLIP: 32-d image_embeds, 64-d hidden states);
    -vith / -bigg = the real ViT-H / ViT-bigG feature widths (1024/1280 image_embeds,
    1280/1664 hidden states), for the wrong-encoder cases users actually hit."""
    arch, kind, *enc = name.split("-")
    m = model(arch)
    if arch == "kolors":
        return kolors_spec(m)
    if kind == "linear":
        proj = {"": 32, "vith": 1024, "bigg": 1280}[enc[0] if enc else ""]
        spec = tiny.tiny_spec(m, ProjectionKind.LINEAR, clip_proj=proj)
    else:
        hidden = {"": 64, "vith": 1280, "bigg": 1664}[enc[0] if enc else ""]
        spec = tiny.tiny_spec(m, ProjectionKind.RESAMPLER, clip_hidden=hidden)
    if enc and enc[0] == "bigg":
        spec = dataclasses.replace(spec, encoder=ImageEncoder.VIT_BIGG)
    return spec


ADAPTERS = ("sd15-linear", "sd15-plus", "sdxl-linear", "sdxl-plus", "kolors-plus", "sd15-linear-vith",
            "sd15-linear-bigg", "sdxl-plus-vith")


def adapter(name: str, fresh: bool = False):
    if fresh:
        return tiny.tiny_adapter(_spec(name), name=f"{name}.safetensors")
    return cached(("adapter", name), lambda: tiny.tiny_adapter(_spec(name), name=f"{name}.safetensors"))


# Two-layer encoders (a penultimate layer must exist) with the published encoders' widths: the
# pack recognises an encoder by (hidden width, image_embeds width, image size), so these read
# as ViT-H / ViT-bigG.
CLIPS = {
    "tiny": {},
    "tiny-336": {"image_size": 336},
    "vit-h": {"hidden_size": 1280, "projection_dim": 1024, "num_attention_heads": 8, "num_hidden_layers": 2, "intermediate_size": 64},
    "vit-bigg": {"hidden_size": 1664, "projection_dim": 1280, "num_attention_heads": 8, "num_hidden_layers": 2, "intermediate_size": 64},
}


def clip_vision(name: str):
    return cached(("clip", name), lambda: tiny.tiny_clip_vision(**CLIPS[name]))


# --- hand-made inputs ---------------------------------------------------------------------


def image(case: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    return {
        "rgb": lambda: rand(1, 48, 64, 3),
        "batch2": lambda: rand(2, 36, 44, 3),
        "batch3": lambda: rand(3, 40, 40, 3),
        "rgb40": lambda: rand(1, 40, 40, 3),
        "rgba": lambda: torch.cat([rand(1, 40, 40, 3), rand(1, 40, 40, 1)], dim=-1),  # rgb40 + an alpha channel
        "gray": lambda: rand(1, 40, 40, 1),
        "gray_as_rgb": lambda: rand(1, 40, 40, 1).expand(-1, -1, -1, 3).contiguous(),
        "tiny1x1": lambda: rand(1, 1, 1, 3),
        "wide": lambda: rand(1, 16, 200, 3),
        "tall": lambda: rand(1, 300, 24, 3),
        "large": lambda: rand(1, 2048, 1536, 3),
        "out_of_range": lambda: rand(1, 32, 32, 3) * 4 - 2,
        "empty": lambda: torch.zeros(0, 32, 32, 3),
        "nan": lambda: torch.full((1, 32, 32, 3), float("nan")),
        "inf": lambda: torch.full((1, 32, 32, 3), float("inf")),
        "two_channels": lambda: rand(1, 32, 32, 2),
        "huge": lambda: torch.zeros(1, 9000, 8, 3),
        "no_pixels": lambda: torch.zeros(1, 0, 32, 3),
        "rank5": lambda: rand(1, 1, 32, 32, 3),
    }[case]()


IMAGES_THAT_WORK = ("rgb", "batch3", "rgba", "gray", "tiny1x1", "wide", "tall", "large", "out_of_range")
IMAGE_HELPERS = ("rgb40", "gray_as_rgb", "batch2")
IMAGES_REFUSED = ("empty", "nan", "inf", "two_channels", "huge", "no_pixels", "rank5")


def mask(case: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return {
        "left_half": lambda: torch.cat([torch.ones(1, 64, 32), torch.zeros(1, 64, 32)], dim=2),
        "zeros": lambda: torch.zeros(1, 64, 64),
        "ones": lambda: torch.ones(1, 64, 64),
        "one_pixel": lambda: torch.ones(1, 1, 1),
        "hw_only": lambda: torch.rand(24, 24, generator=g),
        "batch5": lambda: torch.rand(5, 30, 30, generator=g),
        "wide": lambda: torch.rand(1, 16, 64, generator=g),  # 4:1, the latent is square
        "odd": lambda: torch.rand(2, 7, 13, generator=g),
        "empty": lambda: torch.zeros(0, 8, 8),
        "nan": lambda: torch.full((1, 8, 8), float("nan")),
        "rank1": lambda: torch.ones(8),
    }[case]()


MASKS_THAT_WORK = ("left_half", "zeros", "ones", "one_pixel", "hw_only", "batch5", "wide", "odd")
MASKS_REFUSED = ("empty", "nan", "rank1")


# --- the nodes ------------------------------------------------------------------------------


class RModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (list(MODELS),)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, arch):
        return (model(arch),)


class RAdapter:
    """An IPADAPTER handle; `fresh` builds a new adapter per execution (for leak tests)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": (list(ADAPTERS),), "fresh": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("IPADAPTER",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, name, fresh):
        return (adapter(name, fresh),)


class RClipVision:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": (list(CLIPS),)}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, name):
        return (clip_vision(name),)


class RImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"case": (list(IMAGES_THAT_WORK + IMAGES_REFUSED + IMAGE_HELPERS),)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, case):
        return (image(case),)


class RMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"case": (list(MASKS_THAT_WORK + MASKS_REFUSED),)}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, case):
        return (mask(case),)


class RConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (list(MODELS),)}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, arch):
        return tiny.conditioning("sd15" if arch == "sd15" else "sdxl")


FOREIGN_CALLS: list[tuple] = []


def foreign_attn2(q, k, v, extra_options):
    """Another pack's attn2 replace patch (InstantID/PuLID style): plain attention, counted."""
    FOREIGN_CALLS.append(tuple(extra_options.get("cond_or_uncond") or ()))
    return pack_host.text_attention(q, k, v, extra_options)


class RForeignPatch:
    """Installs `foreign_attn2` on the first input and the middle attn2 of a clone."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, model):
        out = model.clone()
        first = pack_host.cross_attention_layers(model)[0].key
        out.set_model_attn2_replace(foreign_attn2, *first)
        out.set_model_attn2_replace(foreign_attn2, "middle", 0, 0)
        return (out,)


def attn2_patches(model_patcher) -> dict:
    return model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def describe_patches(model_patcher) -> dict:
    """What the sink reports: entries per key, which keys wrap a foreign patch, weight patches."""
    from ipadapter_kit.nodes.patch import Attn2Patch

    out = {"keys": 0, "entries": {}, "inner": [], "weight_patches": len(model_patcher.patches), "kv_sum": 0.0}
    for key, p in attn2_patches(model_patcher).items():
        out["keys"] += 1
        if isinstance(p, Attn2Patch):
            out["entries"][repr(key)] = len(p.entries)
            out["kv_sum"] += sum(float(e.prompt.cond[e.layer][1].double().sum()) for e in p.entries)
            if p.inner is not None:
                out["inner"].append(repr(key))
    return out


class RModelInfo:
    """Output node: the patches on a MODEL (cheap: no sampling)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, model):
        return {"ui": {"info": [describe_patches(model)]}}


class RAdapterInfo:
    """Output node: what an IPADAPTER socket carries."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ipadapter": ("IPADAPTER",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, ipadapter):
        return {"ui": {"adapter": [{"title": ipadapter.spec.title, "name": ipadapter.adapter.name}]}}


class RSink:
    """Output node taking anything (INSIGHTFACE, CLIP_VISION, ...): makes its input execute."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, value):
        return {"ui": {"type": [type(value).__name__]}}


class RLatentStats:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, samples):
        s = samples["samples"]
        return {"ui": {"stats": [{"finite": bool(torch.isfinite(s).all()), "sum": float(s.double().sum()),
                                  "shape": list(s.shape), "tensor": s.clone()}]}}


NODES = {
    "R_Model": RModel, "R_Adapter": RAdapter, "R_ClipVision": RClipVision, "R_Image": RImage, "R_Mask": RMask,
    "R_Conditioning": RConditioning, "R_ForeignPatch": RForeignPatch, "R_ModelInfo": RModelInfo,
    "R_AdapterInfo": RAdapterInfo, "R_Sink": RSink, "R_LatentStats": RLatentStats,
}


@contextlib.contextmanager
def registered():
    """The test nodes registered, on one intra-op thread: these models are many small ops, for
    which a second thread on a busy 2-core machine costs far more than it gains."""
    comfy_nodes.NODE_CLASS_MAPPINGS.update(NODES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for key in NODES:
            comfy_nodes.NODE_CLASS_MAPPINGS.pop(key, None)


# --- graphs ---------------------------------------------------------------------------------

APPLY_DEFAULTS = {"weight": 1.0, "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
                  "embeds_scaling": "V only"}


def apply_graph(model: str = "sd15", adapter: str = "sd15-linear", clip: str | None = "tiny", image: str = "rgb",
                mask: str | None = None, sample: bool = False, latent: tuple[int, int, int] = (1, 64, 64),
                fresh: bool = False, **apply_inputs) -> dict:
    """R_Model -> IPAK_Apply (R_Adapter, R_Image, R_ClipVision, R_Mask) -> R_ModelInfo, and with
    `sample` a 1-step KSampler on a `latent` = (batch, height px, width px) -> R_LatentStats."""
    g = {
        "model": {"class_type": "R_Model", "inputs": {"arch": model}},
        "adapter": {"class_type": "R_Adapter", "inputs": {"name": adapter, "fresh": fresh}},
        "image": {"class_type": "R_Image", "inputs": {"case": image}},
        "apply": {"class_type": "IPAK_Apply", "inputs": {"model": ["model", 0], "ipadapter": ["adapter", 0],
                                                         "image": ["image", 0], **APPLY_DEFAULTS, **apply_inputs}},
        "info": {"class_type": "R_ModelInfo", "inputs": {"model": ["apply", 0]}},
    }
    if clip is not None:
        g["clip"] = {"class_type": "R_ClipVision", "inputs": {"name": clip}}
        g["apply"]["inputs"]["clip_vision"] = ["clip", 0]
    if mask is not None:
        g["mask"] = {"class_type": "R_Mask", "inputs": {"case": mask}}
        g["apply"]["inputs"]["attn_mask"] = ["mask", 0]
    if sample:
        add_sampler(g, ["apply", 0], model, latent)
    return g


def add_sampler(g: dict, model_ref: list, arch: str, latent=(1, 64, 64), seed: int = 3, name: str = "sampler") -> dict:
    batch, height, width = latent
    g[f"{name}_cond"] = {"class_type": "R_Conditioning", "inputs": {"arch": arch}}
    g[f"{name}_latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}}
    g[name] = {"class_type": "KSampler", "inputs": {
        "model": model_ref, "positive": [f"{name}_cond", 0], "negative": [f"{name}_cond", 1],
        "latent_image": [f"{name}_latent", 0], "seed": seed, "steps": 1, "cfg": 5.0, "sampler_name": "euler",
        "scheduler": "normal", "denoise": 1.0}}
    g[f"{name}_stats"] = {"class_type": "R_LatentStats", "inputs": {"samples": [name, 0]}}
    return g


def loader_graph(file_name: str) -> dict:
    """The real IPAdapter Model Loader on a file of the ipadapter folder -> R_AdapterInfo."""
    return {"loader": {"class_type": "IPAK_ModelLoader", "inputs": {"ipadapter_file": file_name}},
            "adapter_info": {"class_type": "R_AdapterInfo", "inputs": {"ipadapter": ["loader", 0]}}}


def info(result: dict, node: str = "info") -> dict:
    return result["outputs"][node]["info"][0]


def stats(result: dict, node: str = "sampler_stats") -> dict:
    return result["outputs"][node]["stats"][0]


def node_error(prompt: dict) -> str:
    """Run a prompt that must fail in a node; ComfyUI's error text (type, message, traceback)."""
    try:
        run_prompt(prompt)
    except HostError as exc:
        return str(exc)
    raise AssertionError("the prompt ran although it should have failed")


def message_of(error_text: str) -> str:
    """The 'Type: message' line of a HostError, without the traceback."""
    head = error_text.split("\n  File ", 1)[0]
    return head.split(" failed: ", 1)[-1].strip()
