"""Registry metadata and the package layout ComfyUI and the Comfy Registry rely on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_registry_section_is_complete():
    meta = _pyproject()
    comfy = meta["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    icon = comfy["Icon"]
    assert icon.startswith("https://") and icon.endswith((".svg", ".png"))
    shipped = icon.split("/main/", 1)[1]
    assert (REPO / shipped).is_file(), f"the icon {shipped} is not in the repository"
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", meta["project"]["name"])


def test_optional_faceid_extra_and_requirements_agree():
    meta = _pyproject()
    extras = meta["project"]["optional-dependencies"]
    assert {d.split(">")[0].split("=")[0] for d in extras["faceid"]} == {"insightface", "onnxruntime"}
    req = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=\[ ;]", line)[0].lower() for line in req if line}
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in meta["project"]["dependencies"]}
    assert declared <= names, f"pyproject dependencies missing from requirements.txt: {declared - names}"


def test_layout_and_license():
    for path in ("__init__.py", "nodes", "ip_adapter_core", "workflows", "example_workflows", "tests", "LICENSE", ".ci/run"):
        assert (REPO / path).exists(), path
    assert "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()[:200]
    assert "Version 3" in (REPO / "LICENSE").read_text()[:400]
