"""The pack's nodes run through ComfyUI's own validator and executor (in-process), with
small models supplied by test-only nodes."""

from __future__ import annotations

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
import nodes as comfy_nodes
from host import HostError, run_prompt
from ipadapter_kit.ip_adapter_core.spec import ProjectionKind

_MODELS: dict = {}


def _model(arch):
    if arch not in _MODELS:
        _MODELS[arch] = tiny.tiny_model(arch)
    return _MODELS[arch]


class TinyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (["sd15", "sdxl"],)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, arch):
        return (_model(arch),)


class TinyAdapter:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (["sd15", "sdxl"],), "kind": (["linear", "resampler"],)}}

    RETURN_TYPES = ("IPADAPTER",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, arch, kind):
        return (tiny.tiny_adapter(tiny.tiny_spec(_model(arch), ProjectionKind(kind))),)


class TinyClipVision:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self):
        return (tiny.tiny_clip_vision(),)


class TinyConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (["sd15", "sdxl"],)}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, arch):
        return tiny.conditioning(arch)


class LatentStats:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, samples):
        s = samples["samples"]
        return {"ui": {"stats": [{"finite": bool(torch.isfinite(s).all()), "sum": float(s.double().sum()), "shape": list(s.shape)}]}}


@pytest.fixture(scope="module", autouse=True)
def test_nodes():
    added = {"T_TinyModel": TinyModel, "T_TinyAdapter": TinyAdapter, "T_TinyClipVision": TinyClipVision,
             "T_TinyConditioning": TinyConditioning, "T_LatentStats": LatentStats}
    comfy_nodes.NODE_CLASS_MAPPINGS.update(added)
    yield
    for key in added:
        comfy_nodes.NODE_CLASS_MAPPINGS.pop(key, None)


def graph(arch="sd15", model_arch=None, kind="linear", weight=1.0, embeds_path=False):
    g = {
        "1": {"class_type": "T_TinyModel", "inputs": {"arch": model_arch or arch}},
        "2": {"class_type": "T_TinyAdapter", "inputs": {"arch": arch, "kind": kind}},
        "3": {"class_type": "T_TinyClipVision", "inputs": {}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 2, "color": 0x3366CC}},
        "6": {"class_type": "T_TinyConditioning", "inputs": {"arch": model_arch or arch}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["6", 0], "negative": ["6", 1],
                                                   "latent_image": ["7", 0], "seed": 3, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "LatentStats", "inputs": {"samples": ["8", 0]}},
    }
    g["9"]["class_type"] = "T_LatentStats"
    common = {"weight": weight, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}
    if embeds_path:
        g["10"] = {"class_type": "IPAK_EncodeImage", "inputs": {"ipadapter": ["2", 0], "image": ["4", 0], "clip_vision": ["3", 0]}}
        g["5"] = {"class_type": "IPAK_ApplyEmbeds", "inputs": {"model": ["1", 0], "ipadapter": ["2", 0], "pos_embeds": ["10", 0],
                                                               "neg_embeds": ["10", 1], **common}}
    else:
        g["5"] = {"class_type": "IPAK_Apply", "inputs": {"model": ["1", 0], "ipadapter": ["2", 0], "image": ["4", 0],
                                                         "clip_vision": ["3", 0], "combine_embeds": "concat", **common}}
    return g


def _stats(result):
    return result["outputs"]["9"]["stats"][0]


@pytest.mark.parametrize("kind", ["linear", "resampler"])
def test_apply_runs_in_the_executor(kind):
    with_adapter = _stats(run_prompt(graph(kind=kind)))
    without = _stats(run_prompt(graph(kind=kind, weight=0.0)))
    assert with_adapter["finite"] and without["finite"]
    assert with_adapter["sum"] != without["sum"]


def test_encode_then_apply_embeds_equals_apply():
    direct = _stats(run_prompt(graph()))
    via_embeds = _stats(run_prompt(graph(embeds_path=True)))
    assert via_embeds["sum"] == pytest.approx(direct["sum"], rel=1e-6, abs=1e-6)


def test_wrong_base_model_is_a_clear_node_error():
    with pytest.raises(HostError) as err:
        run_prompt(graph(arch="sd15", model_arch="sdxl"))
    text = str(err.value)
    assert "IP-Adapter for SD1.5" in text and "the model is SDXL" in text
