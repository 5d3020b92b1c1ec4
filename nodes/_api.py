"""One node definition, two host APIs.

Nodes declare a `NodeSpec` and a `run` classmethod. `build_v3` turns them into ComfyUI V3
(`comfy_api`) nodes; hosts older than 0.3.47 lack that API, and `build_v1` gives them the
classic `NODE_CLASS_MAPPINGS` form of the same nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Socket types the host defines itself; anything else is a custom type of this pack.
_V3_TYPES = {
    "MODEL": "Model",
    "IMAGE": "Image",
    "MASK": "Mask",
    "LATENT": "Latent",
    "CONDITIONING": "Conditioning",
    "CLIP_VISION": "ClipVision",
    "CLIP_VISION_OUTPUT": "ClipVisionOutput",
    "FLOAT": "Float",
    "INT": "Int",
    "BOOLEAN": "Boolean",
    "STRING": "String",
}


@dataclass(frozen=True)
class Input:
    name: str
    type: str  # a socket type, or "COMBO"
    tooltip: str
    optional: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: Sequence[str] | Callable[[], Sequence[str]] | None = None
    multiline: bool = False

    def choices(self) -> list[str]:
        opts = self.options() if callable(self.options) else self.options
        return list(opts or [])


@dataclass(frozen=True)
class Output:
    type: str
    name: str
    tooltip: str
    is_list: bool = False


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    category: str
    description: str
    inputs: Callable[[], Sequence[Input]] | Sequence[Input] = ()
    outputs: Sequence[Output] = ()
    output_node: bool = False

    def input_list(self) -> list[Input]:
        return list(self.inputs() if callable(self.inputs) else self.inputs)


@dataclass
class NodeResult:
    values: tuple = ()
    ui: dict | None = None


class PackNode:
    """Base class of the pack's nodes: set SPEC, implement `run(**inputs)`."""

    SPEC: ClassVar[NodeSpec]

    @classmethod
    def run(cls, **inputs) -> tuple | NodeResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def call(cls, **inputs) -> NodeResult:
        result = cls.run(**inputs)
        return result if isinstance(result, NodeResult) else NodeResult(tuple(result))


# --- V3 -------------------------------------------------------------------------------


def _v3_input(io, spec: Input):
    common = dict(optional=spec.optional, tooltip=spec.tooltip)
    if spec.type == "COMBO":
        choices = spec.choices()
        default = spec.default if spec.default in choices else (choices[0] if choices else None)
        return io.Combo.Input(spec.name, options=choices, default=default, **common)
    attr = _V3_TYPES.get(spec.type)
    cls = getattr(io, attr) if attr else io.Custom(spec.type)
    extra: dict[str, Any] = {}
    if spec.type in ("FLOAT", "INT"):
        extra = {k: getattr(spec, k) for k in ("default", "min", "max", "step") if getattr(spec, k) is not None}
    elif spec.type == "BOOLEAN" and spec.default is not None:
        extra = {"default": spec.default}
    elif spec.type == "STRING":
        extra = {"multiline": spec.multiline}
        if spec.default is not None:
            extra["default"] = spec.default
    return cls.Input(spec.name, **common, **extra)


def _v3_output(io, spec: Output):
    attr = _V3_TYPES.get(spec.type)
    cls = getattr(io, attr) if attr else io.Custom(spec.type)
    return cls.Output(display_name=spec.name, tooltip=spec.tooltip, is_output_list=spec.is_list)


def build_v3(node_classes: Sequence[type[PackNode]], io) -> list[type]:
    built = []
    for node in node_classes:
        built.append(_make_v3(node, io))
    return built


def _make_v3(node: type[PackNode], io) -> type:
    spec = node.SPEC

    def define_schema(cls):
        return io.Schema(
            node_id=spec.node_id,
            display_name=spec.display_name,
            category=spec.category,
            description=spec.description,
            inputs=[_v3_input(io, i) for i in spec.input_list()],
            outputs=[_v3_output(io, o) for o in spec.outputs],
            is_output_node=spec.output_node,
        )

    def execute(cls, **inputs):
        result = node.call(**inputs)
        return io.NodeOutput(*result.values, ui=result.ui)

    return type(
        node.__name__,
        (io.ComfyNode,),
        {
            "__module__": node.__module__,
            "__doc__": node.__doc__,
            "define_schema": classmethod(define_schema),
            "execute": classmethod(execute),
        },
    )


# --- V1 -------------------------------------------------------------------------------


def _v1_input(spec: Input) -> tuple:
    opts: dict[str, Any] = {"tooltip": spec.tooltip}
    if spec.type == "COMBO":
        choices = spec.choices()
        if spec.default in choices:
            opts["default"] = spec.default
        return (choices, opts)
    for key in ("default", "min", "max", "step"):
        value = getattr(spec, key)
        if value is not None:
            opts[key] = value
    if spec.type == "STRING":
        opts["multiline"] = spec.multiline
    return (spec.type, opts)


def _make_v1(node: type[PackNode]) -> type:
    spec = node.SPEC

    def input_types(cls):
        required, optional = {}, {}
        for i in spec.input_list():
            (optional if i.optional else required)[i.name] = _v1_input(i)
        return {"required": required, "optional": optional}

    def execute(self, **inputs):
        result = node.call(**inputs)
        if result.ui is not None:
            return {"ui": result.ui, "result": result.values}
        return result.values

    return type(
        node.__name__,
        (),
        {
            "__module__": node.__module__,
            "__doc__": node.__doc__,
            "INPUT_TYPES": classmethod(input_types),
            "RETURN_TYPES": tuple(o.type for o in spec.outputs),
            "RETURN_NAMES": tuple(o.name for o in spec.outputs),
            "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in spec.outputs),
            "OUTPUT_IS_LIST": tuple(o.is_list for o in spec.outputs),
            "FUNCTION": "execute",
            "CATEGORY": spec.category,
            "DESCRIPTION": spec.description,
            "OUTPUT_NODE": spec.output_node,
            "execute": execute,
        },
    )


def build_v1(node_classes: Sequence[type[PackNode]]) -> tuple[dict[str, type], dict[str, str]]:
    mappings = {n.SPEC.node_id: _make_v1(n) for n in node_classes}
    names = {n.SPEC.node_id: n.SPEC.display_name for n in node_classes}
    return mappings, names


@dataclass
class Registry:
    nodes: list[type[PackNode]] = field(default_factory=list)

    def add(self, node: type[PackNode]) -> type[PackNode]:
        if any(n.SPEC.node_id == node.SPEC.node_id for n in self.nodes):
            raise ValueError(f"duplicate node id {node.SPEC.node_id}")
        self.nodes.append(node)
        return node
