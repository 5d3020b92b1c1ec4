"""Missing pieces of an installation, through the real nodes in ComfyUI's executor: a preset's
adapter file or CLIP vision encoder not installed (named, with the folder to put it in), and
FaceID without its optional packages (the install command)."""

from __future__ import annotations

import importlib.util

import pytest

import robust_nodes as rn  # noqa: I001  (sets up the host first)
from host import models_dir
from ipadapter_kit.ip_adapter_core.testing import write_adapter


@pytest.fixture(scope="module", autouse=True)
def robust_nodes():
    with rn.registered():
        yield


def _unified(preset: str = "standard (medium strength)") -> dict:
    return {"model": {"class_type": "R_Model", "inputs": {"arch": "sd15"}},
            "unified": {"class_type": "IPAK_UnifiedLoader", "inputs": {"model": ["model", 0], "preset": preset}},
            "adapter_info": {"class_type": "R_AdapterInfo", "inputs": {"ipadapter": ["unified", 1]}}}


def test_unified_loader_names_the_missing_adapter_file_and_folder(tmp_path):
    with models_dir(tmp_path):
        message = rn.message_of(rn.node_error(_unified()))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.MissingModelFileError: "), message
    assert "The 'standard (medium strength)' preset needs 'ip-adapter_sd15.safetensors'" in message
    assert "for SD1.5 in the ipadapter folder" in message
    assert str(tmp_path / "ipadapter") in message and "Installed: no adapter files" in message


def test_unified_loader_names_the_missing_clip_vision_file(tmp_path):
    write_adapter(tmp_path / "ipadapter", "ip-adapter_sd15.safetensors")
    with models_dir(tmp_path):
        message = rn.message_of(rn.node_error(_unified()))
    assert "MissingModelFileError" in message
    assert "No clip-vit-h-14 image encoder found in the clip_vision folder" in message
    assert "Download 'CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors' (any file name works" in message


@pytest.mark.skipif(importlib.util.find_spec("insightface") is not None and importlib.util.find_spec("onnxruntime") is not None,
                    reason="insightface and onnxruntime are installed here")
def test_faceid_without_its_packages_gives_the_install_command():
    graph = {"face": {"class_type": "IPAK_InsightFaceLoader", "inputs": {"model_name": "buffalo_l", "provider": "auto"}},
             "sink": {"class_type": "R_Sink", "inputs": {"value": ["face", 0]}}}
    message = rn.node_error(graph)
    assert "ipadapter_kit.ip_adapter_core.errors.OptionalDependencyError: " in message
    assert "not installed or not importable" in message and "pip install insightface onnxruntime" in message
