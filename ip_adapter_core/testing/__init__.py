"""Test helpers that ship with the core: seeded synthetic checkpoints in the published layouts.

Nothing here is used at run time by the nodes, and no generated file is ever committed:
tests write them under a temporary directory.
"""

from .adapters import (
    adapter_state,
    adapter_weights,
    nested_state,
    resolve_variant,
    safetensors_header,
    safetensors_size,
    synthetic_metadata,
    write_adapter,
)

__all__ = [
    "adapter_state",
    "adapter_weights",
    "nested_state",
    "resolve_variant",
    "safetensors_header",
    "safetensors_size",
    "synthetic_metadata",
    "write_adapter",
]
