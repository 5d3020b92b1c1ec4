"""FaceID graphs through ComfyUI's own validator and executor (in-process), with test-only
nodes for the tiny model, a tiny FaceID adapter and the stub face analyser."""

from __future__ import annotations

import logging

import pytest
import torch

import tiny  # noqa: I001  (host first)
import nodes as comfy_nodes
from faceid_tiny import KINDS, faceid_adapter
from host import HostError, run_prompt
from ipadapter_kit.ip_adapter_core.testing.faces import StubFaceAnalyzer, face_image

_MODELS: dict = {}


def _model(arch):
    if arch not in _MODELS:
        _MODELS[arch] = tiny.tiny_model(arch)
    return _MODELS[arch]


class FTinyModel:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (["sd15", "sdxl"],)}}

    def run(self, arch):
        return (_model(arch),)


class FTinyFaceIDAdapter:
    RETURN_TYPES = ("IPADAPTER",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (["sd15", "sdxl"],), "kind": (list(KINDS),)}}

    def run(self, arch, kind):
        return (faceid_adapter(_model(arch), KINDS[kind], seed=2),)


class FStubInsightFace:
    RETURN_TYPES = ("INSIGHTFACE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (StubFaceAnalyzer(),)


class FFaceImages:
    """A batch of pictures with one face each; `blank` = comma-separated frames without one."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 2}), "blank": ("STRING", {"default": ""})}}

    def run(self, count, blank):
        skip = {int(x) for x in blank.split(",") if x.strip()}
        return (torch.cat([face_image(96, 96, [] if i in skip else [(10, 12, 84, 90)], seed=i) for i in range(count)]),)


class FTinyConditioning:
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (["sd15", "sdxl"],)}}

    def run(self, arch):
        return tiny.conditioning(arch)


class FLatentStats:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "face_image": ("IMAGE",)}}

    def run(self, samples, face_image):
        s = samples["samples"]
        return {"ui": {"stats": [{"finite": bool(torch.isfinite(s).all()), "rows": [float(r.double().sum()) for r in s],
                                  "crops": list(face_image.shape)}]}}


class FUseInsightFace:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"insightface": ("INSIGHTFACE",)}}

    def run(self, insightface):
        return {"ui": {"name": [str(getattr(insightface, "name", ""))]}}


@pytest.fixture(scope="module", autouse=True)
def test_nodes():
    added = {"F_TinyModel": FTinyModel, "F_TinyFaceIDAdapter": FTinyFaceIDAdapter, "F_StubInsightFace": FStubInsightFace,
             "F_FaceImages": FFaceImages, "F_TinyConditioning": FTinyConditioning, "F_LatentStats": FLatentStats,
             "F_UseInsightFace": FUseInsightFace}
    comfy_nodes.NODE_CLASS_MAPPINGS.update(added)
    yield
    for key in added:
        comfy_nodes.NODE_CLASS_MAPPINGS.pop(key, None)


def graph(kind="faceid", blank="", weight=1.0, unfold=True, frames=3, analysis_node=False, analyser=True):
    g = {
        "1": {"class_type": "F_TinyModel", "inputs": {"arch": "sd15"}},
        "2": {"class_type": "F_TinyFaceIDAdapter", "inputs": {"arch": "sd15", "kind": kind}},
        "3": {"class_type": "F_StubInsightFace", "inputs": {}},
        "4": {"class_type": "F_FaceImages", "inputs": {"count": frames, "blank": blank}},
        "6": {"class_type": "F_TinyConditioning", "inputs": {"arch": "sd15"}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": frames}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["6", 0], "negative": ["6", 1],
                                                   "latent_image": ["7", 0], "seed": 3, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "F_LatentStats", "inputs": {"samples": ["8", 0], "face_image": ["5", 1]}},
        "5": {"class_type": "IPAK_ApplyFaceID", "inputs": {
            "model": ["1", 0], "ipadapter": ["2", 0], "weight": weight, "weight_faceidv2": 1.0, "faceid_version": "auto",
            "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
            "embeds_scaling": "V only", "lora_strength": 0.6, "unfold_batch": unfold, "image": ["4", 0],
        }},
    }
    if analyser:
        g["5"]["inputs"]["insightface"] = ["3", 0]
    if analysis_node:
        g["10"] = {"class_type": "IPAK_FaceAnalysis", "inputs": {"ipadapter": ["2", 0], "image": ["4", 0], "insightface": ["3", 0]}}
        del g["5"]["inputs"]["image"]
        g["5"]["inputs"]["face_embeds"] = ["10", 0]
        g["5"]["inputs"]["neg_embeds"] = ["10", 1]
    return g


def _stats(result):
    return result["outputs"]["9"]["stats"][0]


def test_faceless_frame_completes_with_a_warning_naming_it(caplog):
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        with_gap = _stats(run_prompt(graph(blank="1")))
    assert with_gap["finite"] and with_gap["crops"][0] == 2
    assert "frame(s) 1 (no face) of a batch of 3" in caplog.text
    full = _stats(run_prompt(graph()))
    assert full["crops"][0] == 3
    assert with_gap["rows"][0] == full["rows"][0] and with_gap["rows"][2] == full["rows"][2]
    assert with_gap["rows"][1] != full["rows"][1]


def test_face_analysis_then_apply_equals_apply_in_the_executor():
    direct = _stats(run_prompt(graph(kind="portrait", blank="2")))
    via = _stats(run_prompt(graph(kind="portrait", blank="2", analysis_node=True)))
    assert via["rows"] == pytest.approx(direct["rows"], rel=1e-6, abs=1e-6)


def test_fail_policy_is_a_node_error_naming_the_frame():
    g = graph(blank="0")
    g["5"]["inputs"]["no_face"] = "fail"
    with pytest.raises(HostError, match=r"frame\(s\) 0 \(no face\)"):
        run_prompt(g)


def test_without_an_analyser_the_error_says_how_to_install(monkeypatch):
    import sys

    for mod in ("insightface", "insightface.app", "onnxruntime"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(HostError, match="pip install insightface onnxruntime"):
        run_prompt(graph(analyser=False, frames=1))
    loader = {
        "1": {"class_type": "IPAK_InsightFaceLoader", "inputs": {"model_name": "buffalo_l", "provider": "auto"}},
        "2": {"class_type": "F_UseInsightFace", "inputs": {"insightface": ["1", 0]}},
    }
    with pytest.raises(HostError, match=r"OptionalDependencyError(.|\n)*pip install insightface onnxruntime"):
        run_prompt(loader)
