"""UI ("Save") workflow -> API prompt, driven by node definitions (host-free).

What the frontend's `graphToPrompt` does, for version-0.4 and version-1 workflows without
subgraphs: frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) and muted nodes are
left out, links are followed through Reroutes and bypassed nodes, widget values are matched
to widget names by position using the node definition (the `control_after_generate` value after a
seed and the upload button's value are skipped), list values are wrapped as `{"__value__": [...]}`.

    api = ui_to_api(json.load(open("example_workflows/sd15_basic.json")), object_info)
    missing_node_types(workflow, object_info)   # what the frontend would report as missing
"""

from __future__ import annotations

from typing import Any

from .graph import VIRTUAL_TYPES
from .objectinfo import NodeDef

MODE_NEVER = 2  # muted
MODE_BYPASS = 4


class ConversionError(ValueError):
    """The workflow cannot be converted with these node definitions."""


def missing_node_types(workflow: dict, object_info: dict) -> list[str]:
    """Node types the frontend would list as missing: neither registered by the host nor
    frontend-only."""
    types = {n.get("type") for n in workflow.get("nodes", [])}
    return sorted(t for t in types if t not in object_info and t not in VIRTUAL_TYPES)


def _links(workflow: dict) -> dict[int, tuple[int, int, int, int]]:
    """link id -> (origin id, origin slot, target id, target slot), for both schema versions."""
    out = {}
    for link in workflow.get("links", []) or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
        else:
            out[link[0]] = (link[1], link[2], link[3], link[4])
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ConversionError("subgraphs are not supported")
    missing = missing_node_types(workflow, object_info)
    if missing:
        raise ConversionError(f"node types not registered: {', '.join(missing)}")
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    links = _links(workflow)
    defs: dict[str, NodeDef] = {}

    def node_def(node_type: str) -> NodeDef:
        if node_type not in defs:
            defs[node_type] = NodeDef.from_info(node_type, object_info[node_type])
        return defs[node_type]

    def resolve(link_id: int, seen: frozenset = frozenset()) -> tuple[int, int] | None:
        """The real (node id, output slot) behind a link, through Reroutes and bypassed nodes."""
        if link_id in seen or link_id not in links:
            return None
        origin_id, origin_slot, _, _ = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None:
            return None
        seen = seen | {link_id}
        if origin["type"] == "Reroute":
            upstream = (origin.get("inputs") or [{}])[0].get("link")
            return resolve(upstream, seen) if upstream is not None else None
        if origin.get("mode") == MODE_NEVER:
            return None
        if origin.get("mode") == MODE_BYPASS:
            out_type = (origin.get("outputs") or [])[origin_slot].get("type")
            for slot in origin.get("inputs") or []:
                if slot.get("link") is not None and slot.get("type") == out_type:
                    return resolve(slot["link"], seen)
            return None
        return origin_id, origin_slot

    api: dict[str, dict] = {}
    for node_id in sorted(nodes):
        n = nodes[node_id]
        if n["type"] in VIRTUAL_TYPES or n.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        d = node_def(n["type"])
        widgets = d.widgets()
        values = n.get("widgets_values")
        inputs: dict[str, Any] = {}
        if isinstance(values, dict):
            for w in widgets:
                if w.kind == "value" and w.name in values:
                    inputs[w.name] = values[w.name]
        elif values is not None:
            if len(values) != len(widgets):
                raise ConversionError(
                    f"node {node_id} ({n['type']}): {len(values)} widget values for {len(widgets)} widgets "
                    f"({', '.join(w.name for w in widgets)})"
                )
            for w, v in zip(widgets, values):
                if w.kind == "value":
                    inputs[w.name] = v
        for name, value in list(inputs.items()):
            if isinstance(value, list):
                inputs[name] = {"__value__": value}
        for slot in n.get("inputs") or []:
            if slot.get("link") is None:
                continue
            target = resolve(slot["link"])
            if target is not None:
                inputs[slot["name"]] = [str(target[0]), int(target[1])]
            elif slot["name"] in inputs and not slot.get("widget"):
                del inputs[slot["name"]]
        api[str(node_id)] = {
            "inputs": inputs,
            "class_type": n["type"],
            "_meta": {"title": n.get("title") or d.display_name},
        }
    for entry in api.values():  # links to nodes that were left out
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in api:
                del entry["inputs"][name]
    return api
