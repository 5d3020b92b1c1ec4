"""A real ComfyUI server imports the pack cleanly, lists its nodes and runs prompts."""

from __future__ import annotations

import io

import e2e_server
import pytest
from PIL import Image


def test_object_info_lists_every_pack_node(comfy_server, pack):
    info = comfy_server.object_info()
    missing = [node_id for node_id in pack.NODE_IDS if node_id not in info]
    assert not missing, f"not registered by the server: {missing}"
    for node_id in pack.NODE_IDS:
        assert info[node_id]["python_module"].startswith("custom_nodes."), info[node_id]


def test_log_has_no_import_failure_for_the_pack(comfy_server):
    text = comfy_server.log_text()
    assert not e2e_server.pack_import_failures(text), "\n".join(e2e_server.pack_import_failures(text))
    assert e2e_server.PACK_NAME in text  # the custom-node import summary names the pack


def _combo_choices(spec) -> list:
    if not isinstance(spec, (list, tuple)) or not spec:
        return []
    if spec[0] == "COMBO":
        return list((spec[1] if len(spec) > 1 else {}).get("options", []))
    return list(spec[0]) if isinstance(spec[0], list) else []


def test_ipadapter_model_folder_is_served(comfy_server, pack, synthetic_models):
    """The `ipadapter:` key of the extra_model_paths.yaml reaches the pack's model combos."""
    adapters = sorted(p.name for p in (synthetic_models / "ipadapter").iterdir())
    info = comfy_server.object_info()
    combos = [
        (node_id, name, sorted(_combo_choices(spec)))
        for node_id in pack.NODE_IDS
        for section in ("required", "optional")
        for name, spec in info[node_id]["input"].get(section, {}).items()
    ]
    listing = [c for c in combos if set(adapters) <= set(c[2])]
    assert listing, f"no node of the pack lists the adapters {adapters}: {combos}"


def test_core_only_prompt_runs_and_png_is_served(comfy_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 0x3366CC}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e2e_core"}},
    }
    entry = comfy_server.run(prompt, timeout=60)
    assert entry["status"]["status_str"] == "success"
    images = comfy_server.output_images(entry)
    assert len(images) == 1 and images[0]["type"] == "output"
    png = comfy_server.fetch_image(images[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size == (32, 24)
    want = (255 - 0x33, 255 - 0x66, 255 - 0xCC)  # ImageInvert of the colour, +-1 for float rounding
    assert all(abs(a - b) <= 1 for a, b in zip(img.getpixel((5, 5)), want)), img.getpixel((5, 5))


def test_invalid_prompt_is_rejected_with_node_errors(comfy_server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "no-such-model.safetensors"}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "never"}},
    }
    with pytest.raises(e2e_server.PromptRejected) as err:
        comfy_server.post_prompt(prompt)
    assert "no-such-model.safetensors" in str(err.value)
    assert "CheckpointLoaderSimple" in str(err.value)
