"""`python -m ip_adapter_core.inspect`: one JSON object per file, errors as objects, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from pathlib import Path

import pytest

from ip_adapter_core import catalog

REPO_ROOT = Path(__file__).resolve().parents[2]
FILES = [
    "ip-adapter_sd15_vit-G.safetensors",  # needs the bigG encoder although it is SD1.5
    "ip-adapter-plus_sd15.safetensors",
    "ip-adapter-faceid-plusv2_sd15.bin",
    "ip-adapter-faceid-portrait_sd15.bin",
]


def run_inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ip_adapter_core.inspect", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def files(adapter_file, tmp_path_factory):
    paths = {name: adapter_file(name) for name in FILES}
    bad = tmp_path_factory.mktemp("inspect") / "ip-adapter_sd15.safetensors"
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 44642768\n")
    paths["bad"] = str(bad)
    return paths


@pytest.fixture(scope="module")
def json_run(files):
    """One process for all files, the bad one in the middle: it must not stop the others."""
    return run_inspect(*[files[n] for n in FILES[:2]], files["bad"], *[files[n] for n in FILES[2:]], "--json")


def test_json_has_one_object_per_file_and_exit_code_1(json_run):
    assert json_run.returncode == 1, json_run.stderr
    lines = json_run.stdout.strip().splitlines()
    assert len(lines) == len(FILES) + 1
    objects = [json.loads(line) for line in lines]
    assert [o["file"] for o in objects] == FILES[:2] + ["ip-adapter_sd15.safetensors"] + FILES[2:]


@pytest.mark.parametrize("name", FILES)
def test_json_describes_the_file(json_run, name):
    objects = {o["file"]: o for o in map(json.loads, json_run.stdout.strip().splitlines()) if "error" not in o}
    got = objects[name]
    spec = catalog.published(name).spec
    assert got["base"] == spec.base.value == "sd15"
    assert got["tokens"] == spec.tokens
    assert got["cross_attention_layers"] == 16
    assert got["image_encoder"] == spec.encoder.value
    assert got["encoder_output"] == spec.encoder_output.value
    assert got["kind"] == spec.kind.value
    assert got["lora"] is spec.lora
    clip = spec.clip_encoder
    assert got.get("clip_vision_file") == (clip.file_name if clip else None)


def test_json_error_object_for_a_bad_file(json_run):
    errors = [o for o in map(json.loads, json_run.stdout.strip().splitlines()) if "error" in o]
    assert len(errors) == 1
    (err,) = errors
    assert err["file"] == "ip-adapter_sd15.safetensors"
    assert err["error"] == "UnreadableCheckpointError"
    assert "Git LFS" in err["message"]
    assert json_run.stderr == ""  # in --json mode errors are objects on stdout


def test_human_readable_names_the_clip_vision_file(files, capsys):
    """In-process (`main` is what `-m` runs): good files print a summary and return 0, a bad
    file goes to stderr and makes it 1."""
    from ip_adapter_core.inspect import main

    status = main([files["ip-adapter_sd15_vit-G.safetensors"], files["ip-adapter-faceid-plusv2_sd15.bin"]])
    out = capsys.readouterr().out
    assert status == 0
    assert "ip-adapter_sd15_vit-G.safetensors: IP-Adapter (4 tokens) for SD1.5" in out
    assert "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors" in out
    # FaceID-Plus needs insightface and the ViT-H file, and says so
    assert "ip-adapter-faceid-plusv2_sd15.bin: IP-Adapter FaceID-Plus for SD1.5" in out
    assert "insightface" in out and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in out
    assert "rank 128" in out and "faceid_v2" in out
    assert "{" not in out  # not JSON

    status = main([files["ip-adapter-plus_sd15.safetensors"], files["bad"]])
    captured = capsys.readouterr()
    assert status == 1
    assert "IP-Adapter Plus for SD1.5" in captured.out and "CLIP-ViT-H-14" in captured.out
    assert "ip-adapter_sd15.safetensors:" in captured.err and "Git LFS" in captured.err
