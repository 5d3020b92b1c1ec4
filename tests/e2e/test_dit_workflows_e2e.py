"""The shipped Flux / SD3.5 example workflows, run end to end through a real ComfyUI server.

For each of workflows/api/{flux_xlabs,flux_instantx,sd35_instantx}.json the test takes the
shipped API JSON, makes the run small (64x64 latent, 2 steps), POSTs it to a server of its
own and checks that an image is saved; then it POSTs the same prompt with the IPAdapter
Apply (Flux / SD3.5) weight set to 0 and checks that the image changes, so a patch that does
not run (or does not reach the sampled blocks) fails the test.

Full-size Flux.1-dev / SD3.5 Large and their text encoders are far too large for the CPU test
budget, so the models are synthetic stand-ins (tests/fixtures/dit_host_models.py, random
weights, generated once into .cache/models), under the shipped file names, so every loader
node of the workflow (UNETLoader, VAELoader, CheckpointLoaderSimple, CLIPVisionLoader,
IPAK_ModelLoader) runs unchanged on them:

- Flux: full width (3072; ComfyUI's Flux detection fixes 24 heads of 128) but 1 double +
  1 single block instead of 19 + 38. SD3.5: an MMDiT of depth 3 (width 192) with SD3.5
  Large's qk RMS-norm and T5-width context, in a checkpoint with a 16-channel VAE.
- CLIP ViT-L/14 and SigLIP so400m-384 (+ pooling head) image encoders are full size (ComfyUI's
  CLIPVisionLoader only knows full-size configs).
- Adapters: the published key layouts with K/V for the stand-in models' blocks.

Substituted in the e2e copy of each workflow (and only there): the text side. T5-XXL / CLIP-L /
CLIP-G cannot be made tiny (their loaders expect full-size files, many GB), so the
DualCLIPLoader / TripleCLIPLoader node is removed and each CLIPTextEncode becomes a test-only
node (IPAKTest_StubTextEncode, written into this server's custom_nodes folder) that returns
CONDITIONING of the shape the text encoders give: [1, tokens, 4096] (T5 width) with a
pooled_output of 768 (Flux: CLIP-L) or 2048 (SD3: CLIP-L + CLIP-G), seeded from the prompt
text. FluxGuidance and everything after it are the shipped nodes. Random weights make noise
images: this tests that the workflows run and that the adapter acts, not image quality.

This module starts its own server (the shared `comfy_server` has no stub node and no DiT
models); it runs only while these tests do.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import time

import dit_host_models
import e2e_server
import host
import numpy as np
import pytest
from PIL import Image

if str(host.REPO) not in sys.path:
    sys.path.append(str(host.REPO))

from workflows import images  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKFLOWS = ("flux_xlabs", "flux_instantx", "sd35_instantx")
# Pack log lines of the first (patched) run of each workflow: the variant recognised by content,
# and for InstantX Flux the SigLIP pooling head read back from the encoder file.
EXPECTED_LOG = {
    "flux_xlabs": ["IPAdapter: loaded flux-ip-adapter-v2.safetensors (XLabs Flux IP-Adapter v2 (16 tokens))"],
    "flux_instantx": ["IPAdapter: loaded ip-adapter.bin (InstantX FLUX.1-dev IP-Adapter",
                      f"IPAdapter: SigLIP pooling head from {dit_host_models.SIGLIP}"],
    "sd35_instantx": ["IPAdapter: loaded ip-adapter.bin (InstantX SD3.5-Large IP-Adapter"],
}
SIZE, STEPS = 64, 2
API_DIR = host.REPO / "workflows" / "api"
STUB_TEXT = "IPAKTest_StubTextEncode"
TEXT_LOADERS = ("DualCLIPLoader", "TripleCLIPLoader")
# What the stub returns instead of the text encoders' output (see the module docstring).
TEXT_SHAPES = {
    "flux": {"tokens": 8, "context_dim": dit_host_models.FLUX_CONTEXT, "pooled_dim": dit_host_models.FLUX_POOLED},
    "sd35": {"tokens": 8, "context_dim": dit_host_models.SD3_CONTEXT, "pooled_dim": dit_host_models.SD3_POOLED},
}
# Inputs naming model files: each must be one of the synthetic tree's files.
FILE_INPUTS = {
    "UNETLoader": ("unet_name", "diffusion_models"),
    "VAELoader": ("vae_name", "vae"),
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "CLIPVisionLoader": ("clip_name", "clip_vision"),
    "IPAK_ModelLoader": ("ipadapter_file", "ipadapter"),
}

STUB_NODES = '''
"""Test-only node for the IPAdapter Kit DiT workflow e2e tests (never shipped): stands in for
CLIPTextEncode with T5 / CLIP-L / CLIP-G, which are far too large for the CPU test budget."""
import zlib

import torch


class StubTextEncode:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"default": "", "multiline": True}),
            "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
            "context_dim": ("INT", {"default": 4096, "min": 1, "max": 8192}),
            "pooled_dim": ("INT", {"default": 768, "min": 1, "max": 8192}),
        }}

    def run(self, text, tokens, context_dim, pooled_dim):
        g = torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))
        cond = torch.randn(1, tokens, context_dim, generator=g)
        pooled = torch.randn(1, pooled_dim, generator=g)
        return ([[cond, {"pooled_output": pooled}]],)


NODE_CLASS_MAPPINGS = {"IPAKTest_StubTextEncode": StubTextEncode}
'''


def shipped(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def e2e_prompt(name: str, weight: float | None = None) -> dict:
    """The shipped workflow with the text encoders stubbed, a 64x64 latent and 2 steps;
    `weight` overrides IPAK_ApplyDiT's weight."""
    prompt = copy.deepcopy(shipped(name))
    family = "sd35" if name.startswith("sd35") else "flux"
    loaders = {nid for nid, node in prompt.items() if node["class_type"] in TEXT_LOADERS}
    assert len(loaders) == 1, f"{name}: expected one text-encoder loader, found {loaders}"
    for nid in loaders:
        del prompt[nid]
    counts = {"stub": 0, "apply": 0}
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPTextEncode":
            assert inputs["clip"][0] in loaders, f"{name}: CLIPTextEncode not fed by the text-encoder loader"
            node["class_type"] = STUB_TEXT
            node["inputs"] = {"text": inputs["text"], **TEXT_SHAPES[family]}
            counts["stub"] += 1
        elif kind == "EmptySD3LatentImage":
            inputs.update(width=SIZE, height=SIZE, batch_size=1)
        elif kind == "KSampler":
            inputs["steps"] = STEPS
        elif kind == "IPAK_ApplyDiT":
            counts["apply"] += 1
            if weight is not None:
                inputs["weight"] = weight
    assert counts["stub"] == 2 and counts["apply"] == 1, f"{name}: unexpected graph {counts}"
    for nid, node in prompt.items():  # nothing may still read from a removed node
        for key, value in node["inputs"].items():
            assert not (isinstance(value, list) and value and value[0] in loaders), f"{name}: {nid}.{key} -> {value}"
    return prompt


@pytest.fixture(scope="module")
def dit_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("dit-comfy-base")
    # --base-directory BASE: ComfyUI's models folder is BASE/models (diffusion_models/ included,
    # which the shared server's extra_model_paths.yaml does not map).
    dit_host_models.models_tree(base / "models")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ipak_dit_test_nodes.py").write_text(STUB_NODES)
    refs = {n["inputs"]["image"] for w in WORKFLOWS for n in shipped(w).values() if n["class_type"] == "LoadImage"}
    images.write(sorted(refs), base / "input")
    srv = e2e_server.start_server(base, None)
    yield srv
    srv.stop()


def _saved(server, entry: dict) -> np.ndarray:
    saved = [img for img in server.output_images(entry) if img.get("type") == "output"]
    assert len(saved) == 1, saved
    assert saved[0]["subfolder"] == "ipadapter_kit"
    pic = Image.open(io.BytesIO(server.fetch_image(saved[0])))
    assert pic.size == (SIZE, SIZE)
    return np.asarray(pic.convert("RGB")).astype(np.int16)


def test_the_dit_workflows_name_only_files_of_the_synthetic_tree(dit_server):
    tree = dit_server.base / "models"
    for name in WORKFLOWS:
        for node in shipped(name).values():
            if node["class_type"] in FILE_INPUTS:
                key, folder = FILE_INPUTS[node["class_type"]]
                assert (tree / folder / node["inputs"][key]).is_file(), f"{name}: {folder}/{node['inputs'][key]}"
    assert not e2e_server.pack_import_failures(dit_server.log_text())


@pytest.mark.parametrize("name", WORKFLOWS)
def test_dit_workflow_runs_and_the_adapter_changes_the_image(dit_server, name):
    start = len(dit_server.log_text())
    t0 = time.monotonic()
    entry = dit_server.run(e2e_prompt(name), timeout=600)
    seconds = time.monotonic() - t0
    patched = _saved(dit_server, entry)
    log = dit_server.log_text()[start:]
    for line in EXPECTED_LOG[name]:
        assert line in log, f"{name}: no '{line}' in the server log"
    assert "has no effect with these settings" not in log
    assert "invalid value encountered" not in log
    assert patched.std() > 1.0, "flat image"

    t1 = time.monotonic()
    entry = dit_server.run(e2e_prompt(name, weight=0.0), timeout=600)
    seconds_off = time.monotonic() - t1
    plain = _saved(dit_server, entry)
    diff = np.abs(patched - plain)
    # The same seed and graph: only the adapter (weight != 0) can change the picture.
    assert diff.max() > 0, f"{name}: the image with the adapter equals the one with weight 0 (patch did not act)"
    print(f"{name}: {seconds:.1f} s with the adapter, {seconds_off:.1f} s at weight 0; "  # noqa: T201
          f"mean |diff| {diff.mean():.2f}, max {diff.max()}")
