"""Node definitions (ComfyUI's /object_info entries) -> how the frontend lays a node out.

The ComfyUI frontend (1.32, services/litegraphService.ts) builds a node from its definition:
inputs in `input_order` (required, then optional, then any others), first an input slot for
every socket input (MODEL, IMAGE, ...), then a widget for every widget input (INT, FLOAT,
STRING, BOOLEAN, COMBO) with an input slot of its own (`widget: {name}`). An INT named
`seed` / `noise_seed` or flagged `control_after_generate` gets a second widget right after it
(the "control after generate" combo: fixed / increment / decrement / randomize); a COMBO with
`image_upload` gets an "upload" button (value "image") after all the others. `widgets_values`
of a saved node lists the widgets' values in that order, the extra ones included;
`graphToPrompt` sends every widget except those two by name. Host-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
CONTROL_WIDGET = "control_after_generate"
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
FILE_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx",
                   ".png", ".jpg", ".jpeg", ".webp")


class DefinitionError(ValueError):
    """A graph does not fit the node definitions (unknown type, input or value)."""


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str  # socket type, or one of WIDGET_TYPES
    optional: bool
    options: dict
    choices: tuple | None = None  # COMBO values

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control(self) -> bool:
        if self.type != "INT" or not self.is_widget:
            return False
        flag = self.options.get("control_after_generate")
        return bool(flag) if flag is not None else self.name in SEED_NAMES

    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        if self.type == "COMBO":
            return self.choices[0] if self.choices else None
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type)


@dataclass(frozen=True)
class Widget:
    name: str
    kind: str  # "value", "control" (after a seed) or "upload" (button)
    input: InputDef | None = None


@dataclass(frozen=True)
class OutputDef:
    name: str
    type: str
    is_list: bool = False


@dataclass
class NodeDef:
    type: str
    display_name: str
    inputs: list[InputDef]  # in the frontend's order
    outputs: list[OutputDef]
    output_node: bool = False
    upload: str | None = None  # input that gets the upload button
    python_module: str = ""
    _by_name: dict[str, InputDef] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._by_name = {i.name: i for i in self.inputs}

    @classmethod
    def from_info(cls, node_type: str, info: dict) -> NodeDef:
        spec = info.get("input", {}) or {}
        order = info.get("input_order") or {sec: list((spec.get(sec) or {}).keys()) for sec in ("required", "optional")}
        inputs: list[InputDef] = []
        seen = set()
        upload = None
        for section in ("required", "optional"):
            entries = spec.get(section) or {}
            for name in order.get(section, []) or []:
                if name in entries and name not in seen:
                    inputs.append(_input_def(name, entries[name], section == "optional"))
                    seen.add(name)
        for section in ("required", "optional"):  # anything input_order left out
            for name, entry in (spec.get(section) or {}).items():
                if name not in seen:
                    inputs.append(_input_def(name, entry, section == "optional"))
                    seen.add(name)
        for i in inputs:
            if i.type == "COMBO" and not i.optional and any(i.options.get(f) for f in UPLOAD_FLAGS):
                upload = i.name
                break
        outputs = []
        types = list(info.get("output", []) or [])
        names = list(info.get("output_name", None) or types)
        is_list = list(info.get("output_is_list", None) or [False] * len(types))
        for k, t in enumerate(types):
            outputs.append(OutputDef(names[k] if k < len(names) else t, t if isinstance(t, str) else "COMBO",
                                     bool(is_list[k]) if k < len(is_list) else False))
        return cls(node_type, info.get("display_name") or node_type, inputs, outputs,
                   bool(info.get("output_node", False)), upload, info.get("python_module", ""))

    def input(self, name: str) -> InputDef:
        try:
            return self._by_name[name]
        except KeyError:
            raise DefinitionError(
                f"{self.type} has no input '{name}' (inputs: {', '.join(self._by_name) or 'none'})"
            ) from None

    def has_input(self, name: str) -> bool:
        return name in self._by_name

    def sockets(self) -> list[InputDef]:
        return [i for i in self.inputs if not i.is_widget]

    def widget_inputs(self) -> list[InputDef]:
        return [i for i in self.inputs if i.is_widget]

    def widgets(self) -> list[Widget]:
        """Every widget in the frontend's order, the extra ones included."""
        out = []
        for i in self.widget_inputs():
            out.append(Widget(i.name, "value", i))
            if i.has_control:
                out.append(Widget(CONTROL_WIDGET, "control", i))
            if i.type == "COMBO" and i.options.get("control_after_generate"):
                raise DefinitionError(f"{self.type}.{i.name}: COMBO with control_after_generate is not supported")
        if self.upload is not None:
            out.append(Widget("upload", "upload"))
        return out

    def slots(self) -> list[tuple[str, str, bool, bool]]:
        """The node's input slots as the frontend makes them: (name, type, optional, is_widget)."""
        slots = [(i.name, i.type, i.optional, False) for i in self.sockets()]
        slots += [(i.name, i.type, i.optional, True) for i in self.widget_inputs()]
        if self.upload is not None:
            slots.append(("upload", "IMAGEUPLOAD", False, True))
        return slots

    def slot_index(self, name: str) -> int:
        for k, slot in enumerate(self.slots()):
            if slot[0] == name:
                return k
        raise DefinitionError(f"{self.type} has no input '{name}'")

    def output_index(self, slot: int | str) -> int:
        if isinstance(slot, int):
            if not 0 <= slot < len(self.outputs):
                raise DefinitionError(f"{self.type} has no output {slot} (it has {len(self.outputs)})")
            return slot
        names = [o.name for o in self.outputs]
        if slot in names:
            return names.index(slot)
        types = [o.type for o in self.outputs]
        if types.count(slot) == 1:
            return types.index(slot)
        raise DefinitionError(f"{self.type} has no output '{slot}' (outputs: {', '.join(names)})")


def _input_def(name: str, entry, optional: bool) -> InputDef:
    if not isinstance(entry, (list, tuple)) or not entry:
        raise DefinitionError(f"input '{name}': unexpected definition {entry!r}")
    head = entry[0]
    options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if isinstance(head, (list, tuple)):  # V1 combo: the list of values
        return InputDef(name, "COMBO", optional, options, tuple(head))
    if head == "COMBO":
        return InputDef(name, "COMBO", optional, options, tuple(options.get("options", ()) or ()))
    return InputDef(name, str(head), optional, options)


def node_defs(object_info: dict) -> dict[str, NodeDef]:
    return {k: NodeDef.from_info(k, v) for k, v in object_info.items()}


def looks_like_file(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(FILE_EXTENSIONS)


def check_value(node_type: str, i: InputDef, value: Any) -> None:
    """Raise DefinitionError if `value` is not a valid value of widget input `i`. File names
    (models, input images) are not checked against the combo: they depend on the machine."""
    where = f"{node_type}.{i.name}"
    if i.type == "COMBO":
        if looks_like_file(value):
            return
        if i.choices is not None and value not in i.choices:
            raise DefinitionError(f"{where} = {value!r} is not one of {list(i.choices)[:12]}")
        return
    if i.type == "BOOLEAN":
        if not isinstance(value, bool):
            raise DefinitionError(f"{where} = {value!r} is not a boolean")
        return
    if i.type == "STRING":
        if not isinstance(value, str):
            raise DefinitionError(f"{where} = {value!r} is not a string")
        return
    if i.type in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DefinitionError(f"{where} = {value!r} is not a number")
        if i.type == "INT" and int(value) != value:
            raise DefinitionError(f"{where} = {value!r} is not an integer")
        lo, hi = i.options.get("min"), i.options.get("max")
        if lo is not None and value < lo or hi is not None and value > hi:
            raise DefinitionError(f"{where} = {value!r} is outside [{lo}, {hi}]")


def types_match(output_type: str, input_type: str) -> bool:
    """The host's link check (comfy_execution/validation.py): equal, '*' or a comma union."""
    if output_type == input_type or "*" in (output_type, input_type):
        return True
    a = {t.strip() for t in output_type.split(",")}
    b = {t.strip() for t in input_type.split(",")}
    return bool(a & b)
