"""Cross-attention layer tables of the UNets IP-Adapters were published for.

Adapter checkpoints number their K/V layers in diffusers' `attn_processors` order
(down blocks, up blocks, mid block); ComfyUI executes them input -> middle -> output and
counts SpatialTransformers as `transformer_index`. One table serves both numberings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class CrossAttnLayer:
    index: int  # position in the checkpoint (0-based); weights are "{2*index+1}.to_k_ip.weight"
    block: str  # ComfyUI block name: "input" | "middle" | "output"
    block_id: int
    block_index: int  # transformer block inside the SpatialTransformer
    transformer_index: int  # ComfyUI's running SpatialTransformer count (execution order)
    hidden: int  # attn2 inner width (query width)
    diffusers_name: str  # "...attn2" module path in diffusers' UNet2DConditionModel

    @property
    def ckpt_key(self) -> int:
        return 2 * self.index + 1

    @property
    def comfy_key(self) -> tuple[str, int, int]:
        return (self.block, self.block_id, self.block_index)


@dataclass(frozen=True)
class _Stage:
    block: str
    block_id: int
    hidden: int
    depth: int
    diffusers_prefix: str


def _build(stages: list[_Stage]) -> tuple[CrossAttnLayer, ...]:
    """`stages` in execution order; returns layers in checkpoint order."""
    order = {"input": 0, "output": 1, "middle": 2}
    with_tidx = [(t, s) for t, s in enumerate(stages)]
    ckpt_sorted = sorted(with_tidx, key=lambda ts: (order[ts[1].block], ts[0]))
    layers: list[CrossAttnLayer] = []
    for t_idx, stage in ckpt_sorted:
        for i in range(stage.depth):
            layers.append(
                CrossAttnLayer(
                    index=len(layers),
                    block=stage.block,
                    block_id=stage.block_id,
                    block_index=i,
                    transformer_index=t_idx,
                    hidden=stage.hidden,
                    diffusers_name=f"{stage.diffusers_prefix}.transformer_blocks.{i}.attn2",
                )
            )
    return tuple(layers)


@lru_cache(maxsize=None)
def sd15_layers() -> tuple[CrossAttnLayer, ...]:
    widths = {0: 320, 1: 640, 2: 1280}
    stages = []
    for down in range(3):
        for a in range(2):
            stages.append(_Stage("input", 1 + 3 * down + a, widths[down], 1, f"down_blocks.{down}.attentions.{a}"))
    stages.append(_Stage("middle", 0, 1280, 1, "mid_block.attentions.0"))
    up_widths = {1: 1280, 2: 640, 3: 320}
    for up in (1, 2, 3):
        for a in range(3):
            stages.append(_Stage("output", 3 * up + a, up_widths[up], 1, f"up_blocks.{up}.attentions.{a}"))
    return _build(stages)


@lru_cache(maxsize=None)
def sdxl_layers() -> tuple[CrossAttnLayer, ...]:
    """SDXL and Kolors share this UNet topology (70 cross-attention layers)."""
    stages = []
    for down, (width, depth) in ((1, (640, 2)), (2, (1280, 10))):
        for a in range(2):
            stages.append(_Stage("input", 1 + 3 * down + a, width, depth, f"down_blocks.{down}.attentions.{a}"))
    stages.append(_Stage("middle", 0, 1280, 10, "mid_block.attentions.0"))
    for up, (width, depth) in ((0, (1280, 10)), (1, (640, 2))):
        for a in range(3):
            stages.append(_Stage("output", 3 * up + a, width, depth, f"up_blocks.{up}.attentions.{a}"))
    return _build(stages)


SD15_CROSS_DIM = 768
SDXL_CROSS_DIM = 2048


def layers_for(num_layers: int) -> tuple[CrossAttnLayer, ...] | None:
    for table in (sd15_layers(), sdxl_layers()):
        if len(table) == num_layers:
            return table
    return None


def transformer_count(layers: tuple[CrossAttnLayer, ...]) -> int:
    return 1 + max(layer.transformer_index for layer in layers)
