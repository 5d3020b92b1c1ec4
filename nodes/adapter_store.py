"""Loaded adapters: one managed copy per file, shared by every node that uses it.

The weights live in a ComfyUI `ModelPatcher`, so model management accounts for them,
moves them to the GPU only while image tokens are projected, and offloads or frees them
like any other model. Sampling never needs them: the patch holds the projected K/V only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import comfy.model_patcher

from ..ip_adapter_core.adapter import IPAdapterModel
from ..ip_adapter_core.checkpoint import load_adapter_weights
from ..ip_adapter_core.detect import describe
from ..ip_adapter_core.spec import AdapterSpec
from . import host
from .file_cache import LoadedFiles


@dataclass(eq=False)
class LoadedAdapter:
    path: str
    spec: AdapterSpec
    patcher: Any  # comfy.model_patcher.ModelPatcher around an IPAdapterModel

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def model(self) -> IPAdapterModel:
        return self.patcher.model

    def __deepcopy__(self, memo):  # shared, never copied with a model's options
        return self


@dataclass(eq=False)
class IPAdapterHandle:
    """What flows through an IPADAPTER socket: the adapter plus encoders a loader found."""

    adapter: LoadedAdapter
    clip_vision: Any = None
    insightface: Any = None
    extras: dict = field(default_factory=dict)

    @property
    def spec(self) -> AdapterSpec:
        return self.adapter.spec

    def __deepcopy__(self, memo):
        return self


def _load(path: str) -> LoadedAdapter:
    weights = load_adapter_weights(path)
    spec = describe(weights)
    load_device = host.compute_device()
    model = IPAdapterModel.from_weights(weights, spec, dtype=host.adapter_dtype(load_device))
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=host.offload_device())
    return LoadedAdapter(path=path, spec=spec, patcher=patcher)


#: Load (once) and return the managed adapter for a path.
load_adapter = LoadedFiles(_load)
