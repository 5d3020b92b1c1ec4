"""Every node: stable prefixed id, category under ipadapter/, a tooltip on every input and
output, a valid V3 schema, a working V1 fallback, and an up-to-date node reference."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import tiny  # noqa: F401  (sets up the host first)
from ipadapter_kit import NODE_IDS
from ipadapter_kit.nodes import NODE_CLASSES
from ipadapter_kit.nodes._api import build_v1, build_v3

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ids_categories_and_tooltips():
    assert len(NODE_IDS) == len(set(NODE_IDS)) == len(NODE_CLASSES)
    for node in NODE_CLASSES:
        spec = node.SPEC
        assert spec.node_id.startswith("IPAK_"), spec.node_id
        assert spec.category == "ipadapter" or spec.category.startswith("ipadapter/"), spec.category
        assert spec.description.strip(), spec.node_id
        for i in spec.input_list():
            assert i.tooltip and i.tooltip.strip(), f"{spec.node_id}.{i.name} has no tooltip"
        for o in spec.outputs:
            assert o.tooltip and o.tooltip.strip(), f"{spec.node_id} output {o.name} has no tooltip"


def test_v3_schemas_validate_and_match_the_v1_view():
    from comfy_api.latest import io

    v3 = build_v3(NODE_CLASSES, io)
    v1, names = build_v1(NODE_CLASSES)
    for cls in v3:
        info = cls.GET_NODE_INFO_V1()  # runs the host's own schema validation
        legacy = v1[info["name"]]
        assert set(info["input"]["required"]) == set(legacy.INPUT_TYPES()["required"])
        assert set(info["input"].get("optional", {})) == set(legacy.INPUT_TYPES()["optional"])
        assert tuple(info["output"]) == legacy.RETURN_TYPES
        assert names[info["name"]] == info["display_name"]


def test_the_pack_registers_v1_nodes_on_hosts_without_comfy_api():
    code = (
        "import sys, builtins\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import host\n"
        "host.import_comfy()\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name.startswith('comfy_api.latest'): raise ImportError(name)  # a host before 0.3.47\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "pack = host.import_pack()\n"
        "assert not hasattr(pack, 'comfy_entrypoint'), 'V3 entry point without comfy_api'\n"
        "assert sorted(pack.NODE_CLASS_MAPPINGS) == sorted(pack.NODE_IDS)\n"
        "print('v1 ok', len(pack.NODE_CLASS_MAPPINGS))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "tests")], capture_output=True, text=True, timeout=300)
    assert "v1 ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_node_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "node_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_v3_extension_lists_every_node():
    import ipadapter_kit

    ext = asyncio.run(ipadapter_kit.comfy_entrypoint())
    listed = asyncio.run(ext.get_node_list())
    assert [cls.GET_SCHEMA().node_id for cls in listed] == NODE_IDS
