"""Unified-loader presets for Flux / SD3.5 adapters, resolved by file content.

The preset names live in `ip_adapter_core.presets.Preset` (one combo for every base); this
module decides which installed files fit them. Every DiT variant has its own tensor layout
(XLabs v1 and v2 differ in token count), so names are only a tie-break.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from ..presets import Preset
from . import catalog
from .spec import DitAdapterSpec, DitBase, DitKind


@dataclass(frozen=True)
class DitRule:
    kind: DitKind
    base: DitBase
    tokens: int | None  # None: any token count
    published: catalog.PublishedDitAdapter


DIT_RULES: dict[Preset, DitRule] = {
    Preset.FLUX_XLABS_V2: DitRule(DitKind.XLABS, DitBase.FLUX, 16, catalog.XLABS_V2),
    Preset.FLUX_XLABS_V1: DitRule(DitKind.XLABS, DitBase.FLUX, 4, catalog.XLABS_V1),
    Preset.FLUX_INSTANTX: DitRule(DitKind.INSTANTX_FLUX, DitBase.FLUX, None, catalog.INSTANTX_FLUX),
    Preset.SD35_INSTANTX: DitRule(DitKind.INSTANTX_SD35, DitBase.SD35, None, catalog.INSTANTX_SD35),
}


def is_dit_preset(preset: Preset) -> bool:
    return preset in DIT_RULES


def presets_for(base: DitBase) -> list[Preset]:
    return [p for p, rule in DIT_RULES.items() if rule.base is base]


def rank_dit(preset: Preset, base: DitBase, candidates: Iterable[tuple[str, DitAdapterSpec]]) -> list[str]:
    """Names of the installed DiT adapters that fit `preset` on a `base` model, best first
    (files of the published size first, then by name)."""
    rule = DIT_RULES.get(preset)
    if rule is None or rule.base is not base:
        return []
    fits = []
    for name, spec in candidates:
        if spec.kind is not rule.kind or spec.base is not base:
            continue
        if rule.tokens is not None and spec.tokens != rule.tokens:
            continue
        fits.append((spec != rule.published.spec, os.path.basename(name).lower(), name))
    return [name for *_, name in sorted(fits)]


def suggestion(preset: Preset) -> str:
    rule = DIT_RULES[preset]
    p = rule.published
    return f"'{p.file_name}' from huggingface.co/{p.repo} ({p.listed_size})"
