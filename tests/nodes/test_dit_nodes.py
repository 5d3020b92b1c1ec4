"""Flux / SD3.5 adapters through the nodes and ComfyUI's sampler on tiny models: loader and
info by content, encoders (CLIP-L image_embeds, SigLIP pooled via the recovered pooling
head, SigLIP penultimate), exactness at weight 0, the input model untouched, patch sharing,
stacking, composition with a foreign patch, per-step resampler caching, clear errors."""

from __future__ import annotations

import copy
import json
import os
import struct

import pytest
import torch

import tiny_dit as td  # noqa: I001  (sets up the host first)
import comfy.sample
from host import models_dir
from ipadapter_kit.ip_adapter_core.dit.projection import TimeResampler
from ipadapter_kit.ip_adapter_core.dit.spec import DitKind
from ipadapter_kit.ip_adapter_core.errors import (
    EncoderMismatchError,
    IncompatibleModelError,
    IPAdapterError,
    MissingModelFileError,
)
from ipadapter_kit.ip_adapter_core.presets import Preset
from ipadapter_kit.nodes import dit, dit_patch, dit_store, model_files
from ipadapter_kit.nodes.dit import ApplyDiT
from ipadapter_kit.nodes.info import AdapterInfo
from ipadapter_kit.nodes.loaders import ModelLoader, UnifiedLoader

STEPS = 2


@pytest.fixture(scope="module")
def flux():
    return td.flux_pair()[0]


@pytest.fixture(scope="module")
def sd3():
    return td.sd3_pair()[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-models")
    ipa = root / "ipadapter"
    out = {
        "xlabs": td.write(td.xlabs_spec(16), ipa, "xlabs v2 renamed.safetensors", seed=1),
        "instantx": td.write(td.instantx_flux_spec(), ipa, "ip-adapter.bin", seed=2),
        "sd35": td.write(td.sd35_spec(), ipa, "sd35-ip-adapter.bin", seed=3),
    }
    siglip = td.siglip_state(seed=4)
    from safetensors.torch import save_file

    (root / "clip_vision").mkdir()
    save_file(siglip, str(root / "clip_vision" / "tiny-siglip.safetensors"))
    return root, out, siglip


@pytest.fixture(scope="module")
def encoders(files):
    return td.tiny_clip_l(), td.tiny_siglip(files[2])


def _image(seed=5, h=48, w=64):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _conds(arch, seed=1):
    g = torch.Generator().manual_seed(seed)

    def one():
        if arch == "flux":
            return [[torch.randn(1, 6, td.FLUX_CTX, generator=g) * 0.5, {"pooled_output": torch.randn(1, 32, generator=g), "guidance": 3.5}]]
        return [[torch.randn(1, 5, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]

    return one(), one()


def _sample(model, arch, cfg=2.0, seed=0):
    pos, neg = _conds(arch)
    latent = torch.zeros(1, 16, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", pos, neg, latent, seed=seed)


def _apply(model, handle, clip, **kw):
    args = dict(weight=1.0, start_at=0.0, end_at=1.0)
    args.update(kw)
    image = args.pop("image", None)
    return ApplyDiT.run(model, handle, _image() if image is None else image, clip_vision=clip, **args)[0]


def _dit(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})


def test_model_loader_and_info_recognise_dit_files_by_content(files):
    root, paths, _ = files
    with models_dir(root):
        for key, kind in (("xlabs", DitKind.XLABS), ("instantx", DitKind.INSTANTX_FLUX), ("sd35", DitKind.INSTANTX_SD35)):
            name = os.path.basename(paths[key])
            handle = ModelLoader.run(name)[0]
            assert handle.spec.kind is kind and handle.adapter.name == name
            assert ModelLoader.run(name)[0].adapter is handle.adapter  # loaded once
            text = AdapterInfo.run(name).values[0]
            assert handle.spec.title in text and handle.spec.base.label in text


def test_xlabs_node_samples_and_is_exact_at_weight_zero(flux, files, encoders):
    clip_l, _ = encoders
    handle = td.handle(files[1]["xlabs"])
    options_before = copy.deepcopy(flux.model_options)
    weights_before = {k: v.clone() for k, v in flux.model.state_dict().items()}
    plain = _sample(flux, "flux")
    patched = _apply(flux, handle, clip_l)
    assert set(_dit(patched)) == {("double_block", 0), ("double_block", 1)}
    out = _sample(patched, "flux")
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert torch.equal(_sample(_apply(flux, handle, clip_l, weight=0.0), "flux"), plain)
    assert torch.equal(_sample(_apply(flux, handle, clip_l, start_at=0.5, end_at=0.5), "flux"), plain)
    gated = _sample(_apply(flux, handle, clip_l, start_at=0.0, end_at=0.4), "flux")  # only the first step
    assert not torch.equal(gated, plain) and not torch.equal(gated, out)
    # the input model is unchanged, and clones share (do not copy) the patch objects
    assert flux.model_options == options_before and not _dit(flux)
    assert all(torch.equal(v, weights_before[k]) for k, v in flux.model.state_dict().items())
    again = patched.clone()
    assert all(a is b for a, b in zip(_dit(again).values(), _dit(patched).values()))


def test_each_block_patch_runs_once_per_model_call(flux, files, encoders, monkeypatch):
    clip_l, siglip = encoders
    with models_dir(files[0]):
        patched = _apply(_apply(flux, td.handle(files[1]["xlabs"]), clip_l), td.handle(files[1]["instantx"]), siglip, weight=0.5)
    keys = _dit(patched)
    assert len(keys) == td.FLUX_DOUBLE + td.FLUX_SINGLE
    assert [len(keys[("double_block", i)].entries) for i in range(td.FLUX_DOUBLE)] == [2, 2]  # stacked in one patch
    calls, evaluations = [], []
    original = dit_patch.DitBlockPatch.__call__

    def spy(self, args, extra):
        calls.append((self.kind, self.index, tuple(args["transformer_options"]["cond_or_uncond"])))
        return original(self, args, extra)

    monkeypatch.setattr(dit_patch.DitBlockPatch, "__call__", spy)
    counted = patched.clone()
    counted.set_model_unet_function_wrapper(lambda f, a: evaluations.append(1) or f(a["input"], a["timestep"], **a["c"]))
    with models_dir(files[0]):
        assert torch.isfinite(_sample(counted, "flux")).all()
    assert len(calls) == len(keys) * len(evaluations) > 0


def test_instantx_flux_finds_the_siglip_pooling_head_by_content(flux, files, encoders):
    root, paths, state = files
    _, siglip = encoders
    handle = td.handle(paths["instantx"])
    with models_dir(root):
        head = dit_store.siglip_head_for(siglip, "x")
        cond, uncond = dit.dit_embeds(handle.spec, siglip, _image(), None, dit.DitCrop.AUTO, "x")
        hidden = siglip.encode_image(_image(), crop=False)["last_hidden_state"]
        assert torch.allclose(cond, head(hidden), atol=1e-6)
        assert torch.equal(uncond, torch.zeros_like(cond))
        patched = _apply(flux, handle, siglip)
    assert len(_dit(patched)) == td.FLUX_DOUBLE + td.FLUX_SINGLE
    assert not torch.equal(_sample(patched, "flux"), _sample(flux, "flux"))
    # the head is checked against the file it came from
    other = td.tiny_siglip(td.siglip_state(seed=11))
    with models_dir(root), pytest.raises(MissingModelFileError, match="vision_model.head"):
        dit_store.siglip_head_for(other, "ip-adapter.bin")


def test_sd35_samples_resampler_runs_once_per_model_call(sd3, files, encoders, monkeypatch):
    _, siglip = encoders
    handle = td.handle(files[1]["sd35"])
    plain = _sample(sd3, "sd3")
    patched = _apply(sd3, handle, siglip, weight=0.5)
    assert set(_dit(patched)) == {("double_block", i) for i in range(td.SD3_DEPTH)}
    assert handle.adapter.patcher in _dit(patched)[("double_block", 0)].models()  # loaded with the model
    resamples, evaluations = [], []
    original = TimeResampler.resample
    monkeypatch.setattr(TimeResampler, "resample", lambda self, *a: resamples.append(1) or original(self, *a))
    counted = patched.clone()
    counted.set_model_unet_function_wrapper(lambda f, a: evaluations.append(1) or f(a["input"], a["timestep"], **a["c"]))
    out = _sample(counted, "sd3")
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert len(resamples) == len(evaluations) > 0
    assert torch.equal(_sample(_apply(sd3, handle, siglip, weight=0.0), "sd3"), plain)


def test_a_foreign_block_patch_is_kept_and_composes(flux, files, encoders):
    clip_l, _ = encoders
    seen = []

    def foreign(args, extra):
        seen.append(1)
        return extra["original_block"](args)

    base = flux.clone()
    base.set_model_patch_replace(foreign, "dit", "double_block", 0)
    handle = td.handle(files[1]["xlabs"])
    both = _apply(base, handle, clip_l)
    assert _dit(both)[("double_block", 0)].inner is foreign
    assert torch.equal(_sample(both, "flux"), _sample(_apply(flux, handle, clip_l), "flux"))
    assert seen


def test_wrong_combinations_fail_with_clear_errors(flux, sd3, files, encoders):
    clip_l, siglip = encoders
    with pytest.raises(IncompatibleModelError, match="Flux"):
        _apply(sd3, td.handle(files[1]["xlabs"]), clip_l)
    with pytest.raises(IncompatibleModelError, match="SD3.5"):
        _apply(flux, td.handle(files[1]["sd35"]), siglip)
    with pytest.raises(EncoderMismatchError, match="clip-vit-l-14"):
        _apply(flux, td.handle(files[1]["xlabs"]), siglip)
    with pytest.raises(EncoderMismatchError, match="siglip"):
        _apply(sd3, td.handle(files[1]["sd35"]), clip_l)
    # SD1.5/SDXL nodes given a DiT adapter, and this node given a UNet adapter
    import tiny
    from ipadapter_kit.nodes.apply import Apply

    sd15 = tiny.tiny_model("sd15")
    with pytest.raises(IPAdapterError, match="Flux / SD3.5"):
        Apply.run(sd15, td.handle(files[1]["xlabs"]), _image(), 1.0, "linear", "concat", 0.0, 1.0, "V only", clip_vision=clip_l)
    unet_handle = tiny.tiny_adapter(tiny.tiny_spec(sd15))
    with pytest.raises(IncompatibleModelError, match="IPAdapter Apply"):
        _apply(flux, unet_handle, clip_l)


def _header_only_safetensors(path, shapes: dict) -> None:
    """A safetensors file with a complete header and no data: enough for content recognition."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = 2
        for s in shape:
            n *= s
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)


def test_unified_loader_flux_presets_by_content(flux, files, encoders, monkeypatch):
    root, paths, _ = files
    clip_l, _ = encoders
    shapes = {"vision_model.embeddings.position_embedding.weight": (257, 1024), "vision_model.embeddings.class_embedding": (1024,),
              "vision_model.post_layernorm.weight": (1024,), "visual_projection.weight": (768, 1024)}
    shapes.update({f"vision_model.encoder.layers.{i}.layer_norm1.weight": (1024,) for i in range(24)})
    _header_only_safetensors(root / "clip_vision" / "some clip-l.safetensors", shapes)
    loaded = []
    monkeypatch.setattr(model_files, "load_clip_vision", lambda name: loaded.append(name) or clip_l)
    with models_dir(root):
        model, handle = UnifiedLoader.run(flux, Preset.FLUX_XLABS_V2.value)
        assert model is flux and handle.adapter.name == os.path.basename(paths["xlabs"])
        assert loaded == ["some clip-l.safetensors"] and handle.clip_vision is clip_l
        assert torch.isfinite(_sample(_apply(flux, handle, None), "flux")).all()  # the loader's encoder is used
        with pytest.raises(MissingModelFileError, match="XLabs-AI/flux-ip-adapter "):
            UnifiedLoader.run(flux, Preset.FLUX_XLABS_V1.value)  # only a 16-token file is installed
        with pytest.raises(IncompatibleModelError, match="flux xlabs v2"):
            UnifiedLoader.run(flux, Preset.STANDARD.value)
        with pytest.raises(IncompatibleModelError, match="sd3.5"):
            UnifiedLoader.run(flux, Preset.SD35_INSTANTX.value)


# --- through ComfyUI's validator and executor (the example workflows' graph shape) ----------


class _TinyFlux:
    MODEL = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL", "CLIP_VISION", "CONDITIONING", "CONDITIONING", "LATENT")
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self):
        pos, neg = _conds("flux")
        return (*_TinyFlux.MODEL, pos, neg, {"samples": torch.zeros(1, 16, 8, 8)})


class _LatentSum:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, samples):
        s = samples["samples"]
        return {"ui": {"stats": [{"finite": bool(torch.isfinite(s).all()), "sum": float(s.double().sum())}]}}


def test_flux_graph_runs_in_the_executor(flux, files, encoders):
    import nodes as comfy_nodes
    from host import run_prompt

    _TinyFlux.MODEL = (flux, encoders[0])
    added = {"TD_TinyFlux": _TinyFlux, "TD_LatentSum": _LatentSum}
    comfy_nodes.NODE_CLASS_MAPPINGS.update(added)
    root, paths, _ = files

    def graph(weight):
        return {
            "1": {"class_type": "TD_TinyFlux", "inputs": {}},
            "2": {"class_type": "IPAK_ModelLoader", "inputs": {"ipadapter_file": os.path.basename(paths["xlabs"])}},
            "3": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 0x3366CC}},
            "4": {"class_type": "IPAK_ApplyDiT", "inputs": {"model": ["1", 0], "ipadapter": ["2", 0], "image": ["3", 0],
                                                            "clip_vision": ["1", 1], "weight": weight, "start_at": 0.0,
                                                            "end_at": 1.0, "combine_embeds": "concat", "crop": "auto"}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["1", 2], "negative": ["1", 3],
                                                       "latent_image": ["1", 4], "seed": 3, "steps": 2, "cfg": 1.0,
                                                       "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
            "6": {"class_type": "TD_LatentSum", "inputs": {"samples": ["5", 0]}},
        }

    try:
        with models_dir(root):
            on = run_prompt(graph(0.8))["outputs"]["6"]["stats"][0]
            off = run_prompt(graph(0.0))["outputs"]["6"]["stats"][0]
    finally:
        for key in added:
            comfy_nodes.NODE_CLASS_MAPPINGS.pop(key, None)
    assert on["finite"] and off["finite"] and on["sum"] != off["sum"]
