"""Bad adapter files in models/ipadapter, loaded by the real IPAdapter Model Loader node through
ComfyUI's executor: each gets a clear error (what is wrong, what to do), no pickle payload
runs, and no file in the folder is changed."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import robust_nodes as rn  # noqa: I001  (sets up the host first)
from host import models_dir, run_prompt
from ipadapter_kit.ip_adapter_core import layouts
from ipadapter_kit.ip_adapter_core.testing import write_adapter


class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _safetensors_with_header(path: Path, header: object | bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def _pad_header_to(src: Path, dst: Path, low_byte: int) -> None:
    """Copy a safetensors file with its header padded (spaces, as writers do) so the 8-byte
    header length starts with `low_byte`; the tensors are unchanged."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    pad = next(p for p in range(0, 4096, 8) if (n + p) % 256 == low_byte)
    dst.write_bytes(struct.pack("<Q", n + pad) + raw[8 : 8 + n] + b" " * pad + raw[8 + n :])


def _other_architecture(path: Path) -> None:
    """An IP-Adapter-shaped file for a UNet this pack does not support (SD2.x: 1024-d text)."""
    state = {"image_proj.proj.weight": torch.zeros(4 * 1024, 1024, dtype=torch.float16),
             "image_proj.norm.weight": torch.ones(1024, dtype=torch.float16),
             "image_proj.norm.bias": torch.zeros(1024, dtype=torch.float16)}
    for i, layer in enumerate(layouts.sd15_layers()):
        for kv in ("k", "v"):
            state[f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight"] = torch.zeros(layer.hidden, 1024, dtype=torch.float16)
    save_file(state, str(path))


def _corrupt_pickle_opcode(src: Path, dst: Path) -> None:
    blob = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the local header's extra field pads the data
    assert blob[start] == 0x80  # the pickle's PROTO opcode
    blob[start + 2] = 0xFF  # not an opcode
    dst.write_bytes(bytes(blob))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """models/ with the bad files below; yields (root, marker path a payload would create)."""
    root = tmp_path_factory.mktemp("models")
    ipa = root / "ipadapter"
    ipa.mkdir()
    marker = root / "payload-ran"
    good = Path(write_adapter(ipa, "ip-adapter_sd15.safetensors"))
    good_bin = Path(write_adapter(ipa, "ip-adapter_sd15_light_v11.bin"))
    data = good.read_bytes()
    (ipa / "empty.safetensors").touch()
    (ipa / "half-downloaded.safetensors").write_bytes(data[: len(data) // 2])
    (ipa / "half-downloaded.bin").write_bytes(good_bin.read_bytes()[: good_bin.stat().st_size // 2])
    (ipa / "saved-web-page.safetensors").write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")
    (ipa / "lfs-pointer.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 44642768\n")
    (ipa / "random-bytes.pth").write_bytes(bytes(range(256)) * 20)
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(ipa / "a-lora.safetensors"))
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(8, 3, 2, 2)}, str(ipa / "clip-vision.safetensors"))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(ipa / "sd-checkpoint.safetensors"))
    torch.save([torch.zeros(2), torch.ones(2)], ipa / "a-list.ckpt")
    _other_architecture(ipa / "sd21-adapter.safetensors")
    _safetensors_with_header(ipa / "header-entry-not-object.safetensors", {"image_proj.proj.weight": [1, 2]})
    _safetensors_with_header(ipa / "header-negative-shape.safetensors",
                             {"image_proj.proj.weight": {"dtype": "F16", "shape": [-4, 2], "data_offsets": [0, 0]}})
    _safetensors_with_header(ipa / "header-nested.safetensors", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    _safetensors_with_header(ipa / "header-huge-shape.safetensors",  # found by the fuzzer
                             {"image_proj.proj.weight": {"dtype": "F16", "shape": [0, 0, 657, 0, 358_348_230_551_548_224], "data_offsets": [0, 0]}})
    _pad_header_to(good, ipa / "header-length-0x80.safetensors", 0x80)
    padded = (ipa / "header-length-0x80.safetensors").read_bytes()
    (ipa / "header-length-0x80-truncated.safetensors").write_bytes(padded[: len(padded) - 1000])
    torch.save({"image_proj": OrderedDict([("proj.weight", torch.zeros(3072, 1024)), ("norm.weight", _Call(os.system, f"touch '{marker}'"))]),
                "ip_adapter": OrderedDict()}, ipa / "payload-os-system.bin")
    with open(ipa / "payload-exec.bin", "wb") as fh:
        pickle.dump({"image_proj": _Call(builtins.exec, f"open({str(marker)!r}, 'w').write('x')"), "ip_adapter": {}}, fh, protocol=2)
    with open(ipa / "payload-text-pickle.bin", "wb") as fh:
        pickle.dump({"image_proj": _Call(os.system, f"touch '{marker}'")}, fh, protocol=0)
    _corrupt_pickle_opcode(good_bin, ipa / "corrupt-pickle.bin")
    before = _fingerprints(ipa)
    with models_dir(root), rn.registered():
        yield root, marker
    assert _fingerprints(ipa) == before, "a file in the ipadapter folder changed"
    assert not marker.exists()


def _fingerprints(folder: Path) -> dict:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# (file, exception class, words the message must contain: what is wrong and what to do)
REFUSED = [
    ("empty.safetensors", "UnreadableCheckpointError", ["empty (0 bytes)", "download the file again"]),
    ("half-downloaded.safetensors", "UnreadableCheckpointError", ["is truncated", "Download the file again"]),
    ("half-downloaded.bin", "UnreadableCheckpointError", ["corrupt or truncated PyTorch file", "Download it again"]),
    ("saved-web-page.safetensors", "UnreadableCheckpointError", ["neither a safetensors file nor a PyTorch checkpoint", "HTML page", "download the real file again"]),
    ("lfs-pointer.bin", "UnreadableCheckpointError", ["Git LFS pointer", "download the real file again"]),
    ("random-bytes.pth", "UnreadableCheckpointError", ["neither a safetensors file nor a PyTorch checkpoint"]),
    ("a-lora.safetensors", "NotAnAdapterError", ["not an IP-Adapter checkpoint", "a LoRA (put it in models/loras)"]),
    ("clip-vision.safetensors", "NotAnAdapterError", ["CLIP vision encoder (put it in models/clip_vision)"]),
    ("sd-checkpoint.safetensors", "NotAnAdapterError", ["Stable Diffusion checkpoint (put it in models/checkpoints)"]),
    ("a-list.ckpt", "NotAnAdapterError", ["holds a list", "not an IP-Adapter checkpoint"]),
    ("sd21-adapter.safetensors", "UnknownLayoutError", ["768-d", "1024-d tokens", "architecture this pack does not support"]),
    ("header-entry-not-object.safetensors", "UnreadableCheckpointError", ["corrupt safetensors header", "Download the file again"]),
    ("header-negative-shape.safetensors", "UnreadableCheckpointError", ["corrupt safetensors header", "shape [-4, 2]"]),
    ("header-nested.safetensors", "UnreadableCheckpointError", ["corrupt safetensors header", "nested too deeply"]),
    ("header-huge-shape.safetensors", "UnreadableCheckpointError", ["not a valid safetensors file", "Download the file again"]),
    ("header-length-0x80-truncated.safetensors", "UnreadableCheckpointError", ["truncated", "Download the file again"]),
    ("payload-os-system.bin", "UnsafeCheckpointError", ["Refused to load", "GLOBAL posix.system", "nothing from it was executed", ".safetensors release"]),
    ("payload-exec.bin", "UnsafeCheckpointError", ["Refused to load", "exec", "nothing from it was executed"]),
    ("payload-text-pickle.bin", "UnreadableCheckpointError", ["neither a safetensors file nor a PyTorch checkpoint"]),
    ("corrupt-pickle.bin", "UnreadableCheckpointError", ["corrupt PyTorch file (byte 255 is not a pickle instruction)", "nothing from it was executed", "Download it again"]),
]


@pytest.mark.parametrize("file_name, error, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_file_gets_a_clear_error_from_the_loader_node(folder, file_name, error, words):
    _, marker = folder
    text = rn.node_error(rn.loader_graph(file_name))
    message = rn.message_of(text)
    assert "IPAK_ModelLoader" in text
    assert message.startswith(f"ipadapter_kit.ip_adapter_core.errors.{error}: "), message
    assert f"'{file_name}'" in message, message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert "\x1b" not in message
    assert not marker.exists(), "a pickle payload ran"


@pytest.mark.parametrize("file_name", ["ip-adapter_sd15.safetensors", "ip-adapter_sd15_light_v11.bin", "header-length-0x80.safetensors"])
def test_good_files_load(folder, file_name):
    """Including a safetensors file whose header length starts with 0x80, the first byte of a
    pickle: it used to be routed to torch.load."""
    result = run_prompt(rn.loader_graph(file_name))
    assert result["outputs"]["adapter_info"]["adapter"][0]["title"] == "IP-Adapter (4 tokens) for SD1.5"


def test_published_sd15_file_on_an_sdxl_model_names_both_models(folder):
    """The real loader and a real-layout file on the wrong base model, with an encoder that fits
    neither: the base model is reported first (it used to be the encoder), naming the adapter's
    base, the model's, and which adapter to use."""
    graph = rn.apply_graph(model="sdxl", clip="vit-bigg")
    graph.update(rn.loader_graph("ip-adapter_sd15.safetensors"))
    graph["apply"]["inputs"]["ipadapter"] = ["loader", 0]
    del graph["adapter"], graph["adapter_info"]
    message = rn.message_of(rn.node_error(graph))
    assert "IncompatibleModelError" in message
    assert "'ip-adapter_sd15.safetensors' is an IP-Adapter for SD1.5, but the model is SDXL" in message
    assert "Use an SDXL adapter (e.g. ip-adapter_sdxl_vit-h.safetensors)" in message
