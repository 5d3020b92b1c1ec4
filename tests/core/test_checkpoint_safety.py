"""Bad, broken and hostile files: the loader says what is wrong, runs nothing, changes nothing."""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import re
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ip_adapter_core.checkpoint import load_adapter_weights
from ip_adapter_core.errors import (
    CheckpointError,
    IPAdapterError,
    NotAnAdapterError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)


def _fingerprint(path: Path) -> tuple:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, sorted(os.listdir(path.parent))


def load_refused(path: Path, error: type[CheckpointError]) -> str:
    """Load `path`, expect `error`, check the file and its folder are untouched; the message."""
    before = _fingerprint(path)
    with pytest.raises(error) as info:
        load_adapter_weights(path)
    assert _fingerprint(path) == before
    message = str(info.value)
    assert f"'{path.name}'" in message, message
    assert isinstance(info.value, IPAdapterError)
    return message


def _copy(src: str, dst: Path, size: int | None = None) -> Path:
    shutil.copyfile(src, dst)
    if size is not None:
        with open(dst, "r+b") as fh:
            fh.truncate(size)
    return dst


# --- broken downloads ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"ip-adapter_sd15{suffix}"
    path.touch()
    message = load_refused(path, UnreadableCheckpointError)
    assert "empty" in message and "download" in message.lower()


@pytest.mark.parametrize("cut", ["in-length", "in-header", "half", "last-byte"])
def test_truncated_safetensors(tmp_path, adapter_file, cut):
    src = adapter_file("ip-adapter_sd15.safetensors")
    full = os.path.getsize(src)
    header = int.from_bytes(Path(src).read_bytes()[:8], "little")
    size = {"in-length": 5, "in-header": 8 + header // 2, "half": full // 2, "last-byte": full - 1}[cut]
    path = _copy(src, tmp_path / "ip-adapter_sd15.safetensors", size)
    message = load_refused(path, UnreadableCheckpointError)
    if cut == "in-length":  # not even a length prefix: cannot tell it from any other junk
        assert "download" in message.lower()
    else:
        assert "truncated" in message and "download" in message.lower(), message


@pytest.mark.parametrize("cut", ["head", "half", "tail"])
def test_truncated_bin(tmp_path, adapter_file, cut):
    src = adapter_file("ip-adapter_sd15_light_v11.bin")
    full = os.path.getsize(src)
    size = {"head": 1000, "half": full // 2, "tail": full - 100}[cut]
    path = _copy(src, tmp_path / "ip-adapter_sd15_light_v11.bin", size)
    message = load_refused(path, UnreadableCheckpointError)
    assert "corrupt or truncated" in message and "download" in message.lower(), message


def test_html_page_saved_as_safetensors(tmp_path):
    path = tmp_path / "ip-adapter-plus_sd15.safetensors"
    path.write_text(
        "<!DOCTYPE html>\n<html class=\"\" lang=\"en\">\n<head><title>h94/IP-Adapter at main</title></head>\n"
        "<body><h1>404</h1><p>Sorry, we can't find the page you are looking for.</p></body>\n</html>\n"
    )
    message = load_refused(path, UnreadableCheckpointError)
    assert "HTML" in message and "download" in message.lower(), message


def test_git_lfs_pointer(tmp_path):
    path = tmp_path / "ip-adapter_sd15.safetensors"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:289b45f16d043d0bf542e45831f971dcdaabe8b7f9ee0ff0b6e8f7a5d9b4e55b\n"
        "size 44642768\n"
    )
    message = load_refused(path, UnreadableCheckpointError)
    assert "Git LFS" in message and "download" in message.lower(), message


def test_torch_file_holding_a_list(tmp_path):
    path = tmp_path / "ip-adapter_sd15.bin"
    torch.save([torch.zeros(3, dtype=torch.float16), torch.ones(2)], path)
    message = load_refused(path, NotAnAdapterError)
    assert "list" in message and "not an IP-Adapter" in message, message


def test_torch_file_holding_non_tensors(tmp_path):
    path = tmp_path / "ip-adapter_sd15.bin"
    torch.save({"image_proj": OrderedDict(norm=1.5), "ip_adapter": OrderedDict()}, path)
    message = load_refused(path, NotAnAdapterError)
    assert "'norm'" in message and "not a tensor" in message, message


# --- hostile pickles -------------------------------------------------------------------


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious checkpoint does on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _exec_payload(marker: Path) -> _Payload:
    return _Payload(builtins.exec, f"open({str(marker)!r}, 'w').write('pwned')")


def _system_payload(marker: Path) -> _Payload:
    return _Payload(os.system, f"touch '{marker}'")


def _write_zip(path: Path, payload: _Payload) -> None:
    """A torch zip checkpoint that looks like an adapter, with the payload inside its pickle."""
    state = {
        "image_proj": OrderedDict(
            [("proj.weight", torch.zeros(3072, 4, dtype=torch.float16)), ("norm.weight", payload)]
        ),
        "ip_adapter": OrderedDict([("1.to_k_ip.weight", torch.zeros(320, 768, dtype=torch.float16))]),
    }
    torch.save(state, path)


def _write_raw(path: Path, payload: _Payload, protocol: int) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"image_proj": payload, "ip_adapter": {}}, fh, protocol=protocol)


HOSTILE = {
    "zip-exec": (lambda p, m: _write_zip(p, _exec_payload(m)), "exec"),
    "zip-os-system": (lambda p, m: _write_zip(p, _system_payload(m)), "system"),
    "raw-pickle-exec": (lambda p, m: _write_raw(p, _exec_payload(m), 2), "exec"),
    "raw-pickle-os-system": (lambda p, m: _write_raw(p, _system_payload(m), 4), "system"),
}


def _unsafe_load(path: Path):
    """What an unsafe loader would do with the file (torch.load without weights_only)."""
    with open(path, "rb") as fh:
        zipped = fh.read(2) == b"PK"
    if zipped:
        return torch.load(path, weights_only=False)
    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - deliberately unsafe: proves the payload is live


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind):
    write, _ = HOSTILE[kind]
    marker = tmp_path / "marker-created-by-payload"
    path = tmp_path / "ip-adapter_sd15.bin"
    write(path, marker)

    message = load_refused(path, UnsafeCheckpointError)
    assert not marker.exists()
    assert "nothing from it was executed" in message and "safetensors" in message, message

    # Control: the payload is live, so the refusal above is what kept it from running.
    _unsafe_load(path)
    assert marker.exists()


def test_text_protocol_pickle_is_refused_and_never_runs(tmp_path):
    """Protocol 0 pickles start with an opcode, not 0x80; they must not slip through either."""
    marker = tmp_path / "marker-created-by-payload"
    path = tmp_path / "ip-adapter_sd15.bin"
    _write_raw(path, _system_payload(marker), 0)
    load_refused(path, CheckpointError)
    assert not marker.exists()
    _unsafe_load(path)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["zip-exec", "zip-os-system"])
def test_unsafe_message_names_the_refused_call_and_is_plain_text(tmp_path, kind):
    write, name = HOSTILE[kind]
    path = tmp_path / "ip-adapter_sd15.bin"
    write(path, tmp_path / "marker")
    message = load_refused(path, UnsafeCheckpointError)
    assert "\x1b" not in message, repr(message)
    assert re.search(rf"\b{name}\b", message), message


# --- good files stay untouched -----------------------------------------------------------


@pytest.mark.parametrize("name", ["ip-adapter_sd15.safetensors", "ip-adapter_sd15_light_v11.bin"])
def test_loading_a_good_file_changes_nothing(tmp_path, adapter_file, name):
    path = _copy(adapter_file(name), tmp_path / name)
    before = _fingerprint(path)
    weights = load_adapter_weights(path)
    assert len(weights.image_proj) == 4 and len(weights.ip_adapter) == 32
    del weights
    assert _fingerprint(path) == before
