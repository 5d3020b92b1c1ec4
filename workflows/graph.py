"""A small description language for workflow graphs (host-free).

    g = Graph("sd15_basic", "SD1.5: image prompt", "...")
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), ckpt_name="v1-5-pruned-emaonly.safetensors")
    apply = g.node("IPAK_Apply", (400, 0), _title="Image prompt", model=ckpt[0], weight=0.8)
    g.group("Load models", [ckpt], color=BLUE)
    g.note("What to change ...", (0, -200))

Inputs are given by name: a value sets a widget, `node[i]` / `node["OUTPUT_NAME"]` links an
output; underscored keywords (`_title`, `_size`, `_models`, `_control`, ...) are not inputs.
Widgets not given take the default of the node definition when the files are built
(objectinfo.widget_layout); `control_after_generate` is the value of the frontend's extra widget
after a seed. Node ids are assigned in creation order, starting at 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Litegraph group colours the ComfyUI frontend offers.
BLUE = "#3f789e"
BROWN = "#b06634"
GREEN = "#8A8"
PURPLE = "#a1309b"
YELLOW = "#b58b2a"
CYAN = "#88A"
GREY = "#444"

# Frontend-only node types: they never reach the API format.
VIRTUAL_TYPES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")


@dataclass(frozen=True)
class Ref:
    """An output of a node: `slot` is its index or its name (resolved with the node definition)."""

    node: Node
    slot: int | str


@dataclass(frozen=True)
class ModelHint:
    """A model file the workflow names, with where ComfyUI can download it (properties.models)."""

    name: str
    url: str
    directory: str

    def as_json(self) -> dict:
        return {"name": self.name, "url": self.url, "directory": self.directory}


@dataclass(eq=False)
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    inputs: dict[str, Any]
    title: str | None = None
    size: tuple[float, float] | None = None
    color: str | None = None
    bgcolor: str | None = None
    models: tuple[ModelHint, ...] = ()
    control_after_generate: str | None = None

    def __getitem__(self, slot: int | str) -> Ref:
        return Ref(self, slot)

    @property
    def virtual(self) -> bool:
        return self.type in VIRTUAL_TYPES

    def links(self) -> dict[str, Ref]:
        return {k: v for k, v in self.inputs.items() if isinstance(v, Ref)}

    def values(self) -> dict[str, Any]:
        return {k: v for k, v in self.inputs.items() if not isinstance(v, Ref)}


@dataclass
class Group:
    title: str
    nodes: list[Node]
    color: str = BLUE


@dataclass
class Graph:
    name: str
    title: str
    description: str
    nodes: list[Node] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    models: list[ModelHint] = field(default_factory=list)  # workflow-level hints (files no widget names)
    images: list[str] = field(default_factory=list)  # input images LoadImage nodes name
    e2e: str = "run"  # "run": the e2e suite runs it; otherwise the reason it is validated only
    e2e_substitutions: dict[str, str] = field(default_factory=dict)  # model name -> synthetic stand-in name

    def node(
        self,
        node_type: str,
        pos: tuple[float, float],
        /,
        *,
        _title: str | None = None,
        _size: tuple[float, float] | None = None,
        _color: str | None = None,
        _bgcolor: str | None = None,
        _models: tuple[ModelHint, ...] | list[ModelHint] = (),
        _control: str | None = None,
        **inputs: Any,
    ) -> Node:
        """Add a node. Keyword arguments are its inputs; the underscored ones are its title, size,
        colours, model download hints and the value of the control_after_generate widget."""
        for value in inputs.values():
            if isinstance(value, Ref) and value.node not in self.nodes:
                raise ValueError(f"{node_type}: links to a node of another graph")
        n = Node(
            id=len(self.nodes) + 1,
            type=node_type,
            pos=(float(pos[0]), float(pos[1])),
            inputs=dict(inputs),
            title=_title,
            size=None if _size is None else (float(_size[0]), float(_size[1])),
            color=_color,
            bgcolor=_bgcolor,
            models=tuple(_models),
            control_after_generate=_control,
        )
        self.nodes.append(n)
        image = inputs.get("image")
        if node_type == "LoadImage" and isinstance(image, str) and image not in self.images:
            self.images.append(image)
        return n

    def note(self, text: str, pos: tuple[float, float], size: tuple[float, float] = (420, 200),
             title: str | None = None) -> Node:
        """A Note node (frontend-only) with `text`; yellow like the frontend's default notes."""
        return self.node("Note", pos, _title=title, _size=size, _color="#432", _bgcolor="#653", text=text)

    def group(self, title: str, nodes: list[Node], color: str = BLUE) -> Group:
        g = Group(title, list(nodes), color)
        self.groups.append(g)
        return g

    def by_type(self, type: str) -> list[Node]:
        return [n for n in self.nodes if n.type == type]
