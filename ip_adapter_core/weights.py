"""Per-layer weight schedules: one concept for every weight type and the layer string.

Weight types are keyed by ComfyUI's `transformer_index` (one per SpatialTransformer:
16 for SD1.5, 11 for SDXL), as users of the incumbent pack know them. The InstantStyle
layers: SDXL style = output 1 (t6), composition = input 8 (t3); SD1.5 follows the
incumbent's choices (style t0-3 and t9-15, composition t4 at 0.25 and t5).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import WeightSpecError
from .layouts import CrossAttnLayer, transformer_count


class WeightType(str, enum.Enum):
    LINEAR = "linear"
    EASE_IN = "ease in"
    EASE_OUT = "ease out"
    EASE_IN_OUT = "ease in-out"
    REVERSE_IN_OUT = "reverse in-out"
    WEAK_INPUT = "weak input"
    WEAK_OUTPUT = "weak output"
    WEAK_MIDDLE = "weak middle"
    STRONG_MIDDLE = "strong middle"
    STYLE_TRANSFER = "style transfer"
    COMPOSITION = "composition"
    STRONG_STYLE_TRANSFER = "strong style transfer"
    STYLE_AND_COMPOSITION = "style and composition"
    STRONG_STYLE_AND_COMPOSITION = "strong style and composition"
    STYLE_TRANSFER_PRECISE = "style transfer precise"
    COMPOSITION_PRECISE = "composition precise"


class Route(enum.Enum):
    """Which image tokens a layer's cond/uncond chunks attend to."""

    NORMAL = 0  # cond chunks: the image; uncond chunks: the negative image
    COMPOSITION = 1  # like NORMAL, but with the composition image
    NEGATIVE = 2  # "precise": the image goes to the uncond chunks only, cond gets nothing


@dataclass(frozen=True)
class LayerWeight:
    weight: float
    route: Route = Route.NORMAL


_STYLE = {"sd15": set(range(0, 4)) | set(range(9, 16)), "sdxl": {6}}
_COMPOSITION = {"sd15": {4: 0.25, 5: 1.0}, "sdxl": {3: 1.0}}


def _family(layers: Sequence[CrossAttnLayer]) -> str:
    return "sd15" if transformer_count(layers) == 16 else "sdxl"


def _curve(weight_type: WeightType, t: int, count: int, block: str) -> float:
    x = t / count
    half = count / 2
    if weight_type is WeightType.EASE_IN:
        return 0.05 + 0.95 * (1 - x)
    if weight_type is WeightType.EASE_OUT:
        return 0.05 + 0.95 * x
    if weight_type is WeightType.EASE_IN_OUT:
        return 0.05 + 0.95 * (1 - abs(t - half) / half)
    if weight_type is WeightType.REVERSE_IN_OUT:
        return 0.05 + 0.95 * abs(t - half) / half
    if weight_type is WeightType.WEAK_INPUT:
        return 0.2 if block == "input" else 1.0
    if weight_type is WeightType.WEAK_OUTPUT:
        return 0.2 if block == "output" else 1.0
    if weight_type is WeightType.WEAK_MIDDLE:
        return 0.2 if block == "middle" else 1.0
    if weight_type is WeightType.STRONG_MIDDLE:
        return 1.0 if block == "middle" else 0.2
    return 1.0


def resolve_layer_weights(
    weight_type: WeightType,
    layers: Sequence[CrossAttnLayer],
    weight: float,
    weight_composition: float | None = None,
    layer_weights: str = "",
) -> list[LayerWeight]:
    """Weight and route of every layer (checkpoint order). `weight_composition` is the
    composition weight (style and composition), the style boost (style transfer precise)
    or the composition boost (composition precise); it defaults to `weight`."""
    fam = _family(layers)
    count = transformer_count(layers)
    wc = weight if weight_composition is None else weight_composition
    style, comp = _STYLE[fam], _COMPOSITION[fam]
    result = []
    for layer in layers:
        t = layer.transformer_index
        w, route = 0.0, Route.NORMAL
        wt = weight_type
        if wt is WeightType.STYLE_TRANSFER:
            w = weight if t in style else 0.0
        elif wt is WeightType.COMPOSITION:
            w = weight * comp.get(t, 0.0)
        elif wt is WeightType.STRONG_STYLE_TRANSFER:
            w = 0.0 if t in comp else weight
        elif wt is WeightType.STYLE_AND_COMPOSITION:
            if t in comp:
                w, route = wc * comp[t], Route.COMPOSITION
            elif t in style:
                w = weight
        elif wt is WeightType.STRONG_STYLE_AND_COMPOSITION:
            if t in comp:
                w, route = wc, Route.COMPOSITION
            else:
                w = weight
        elif wt is WeightType.STYLE_TRANSFER_PRECISE:
            if t in comp:
                w, route = wc * comp[t], Route.NEGATIVE
            elif t in style:
                w = weight
        elif wt is WeightType.COMPOSITION_PRECISE:
            if t in comp:
                w = weight * comp[t]
            else:
                w, route = wc * (1.0 if t in style else 0.1), Route.NEGATIVE
        else:
            w = weight * _curve(wt, t, count, layer.block)
        result.append(LayerWeight(w, route))
    if layer_weights.strip():
        factors = parse_layer_weights(layer_weights, layers)
        if factors is not None:
            result = [LayerWeight(lw.weight * factors[i], lw.route) for i, lw in enumerate(result)]
    return result


_PAIR = re.compile(r"^\s*(\*|\d+)(?:\.(\d+))?\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_layer_weights(text: str, layers: Sequence[CrossAttnLayer]) -> list[float] | None:
    """Parse "t:w, t:w" (t = transformer index, or "t.i" for block i inside it, "*" for
    every other layer) into a multiplier per layer. Unlisted layers get the "*" value, 0 by
    default, so "3:1, 6:1" patches only t3 and t6 (as the incumbent's layer_weights did).
    A text with no entries at all (only separators: ",", ";") is None: no per-layer weights,
    rather than every layer at the default 0 (an adapter silently switched off)."""
    count = transformer_count(layers)
    default = 0.0
    by_t: dict[int, float] = {}
    by_ti: dict[tuple[int, int], float] = {}
    entries = 0
    for raw in re.split(r"[,\n;]", text):
        if not raw.strip():
            continue
        entries += 1
        m = _PAIR.match(raw)
        if not m:
            raise WeightSpecError(
                f"layer_weights: cannot read '{raw.strip()}'. Write 'index:weight' pairs separated by "
                f"commas, e.g. '3:1.0, 6:0.5' (index = transformer 0..{count - 1}, '3.2' = block 2 of "
                "transformer 3, '*' = every other layer)."
            )
        key, sub, value = m.group(1), m.group(2), float(m.group(3))
        if not math.isfinite(value):
            raise WeightSpecError(f"layer_weights: '{raw.strip()}' is not a finite number.")
        if key == "*":
            default = value
            continue
        t = int(key)
        if t >= count:
            raise WeightSpecError(
                f"layer_weights: transformer index {t} does not exist; this model has {count} "
                f"(0..{count - 1})."
            )
        if sub is None:
            by_t[t] = value
        else:
            depth = sum(1 for layer in layers if layer.transformer_index == t)
            if int(sub) >= depth:
                raise WeightSpecError(f"layer_weights: transformer {t} has {depth} block(s); '{raw.strip()}' is out of range.")
            by_ti[(t, int(sub))] = value
    if entries == 0:
        return None
    out = []
    for layer in layers:
        key = (layer.transformer_index, layer.block_index)
        out.append(by_ti.get(key, by_t.get(layer.transformer_index, default)))
    return out
