"""Batches and animation: image i -> latent i ("unfold"), per-frame weight schedules for
cross-fades, prompt schedules that follow them.

Per-frame weights travel through FLOAT sockets as Python lists (as in the incumbent pack),
so a Weights node's output can feed any `weight` input of this pack's batch-capable nodes.
With AnimateDiff-Evolved context windows the patch reads `ad_params["sub_idxs"]`, so a
window of frames 16..31 gets images, weights and masks 16..31.
"""

from __future__ import annotations

import torch

from ..ip_adapter_core.errors import ImageInputError
from ..ip_adapter_core.schedules import (
    BatchMethod,
    Timing,
    WeightsStrategy,
    as_weight_list,
    build_schedule,
    prompt_schedule,
)
from ._api import Input, NodeSpec, Output, PackNode
from .apply import CROP, EMBEDS, END, LAYER_WEIGHTS, MASK, SCALING, START, WEIGHT_TYPE, default_negative
from .apply_core import apply_embeds
from .apply_helpers import ENCODE_BATCH, FRAME_WEIGHT_NOTE, as_embeds, encode_pair, settings_for, unet_adapter
from .encoding import CropMode

STRATEGY = "WEIGHTS_STRATEGY"

_WEIGHT = Input(
    "weight", "FLOAT", "Strength of the image prompt." + FRAME_WEIGHT_NOTE + " Frames past the list's end keep its last value.",
    default=1.0, min=-1.0, max=5.0, step=0.05,
)
_MODEL_OUT = [Output("MODEL", "model", "A patched clone of the model.")]


class ApplyBatch(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ApplyBatch",
        display_name="IPAdapter Batch (image i -> latent i)",
        category="ipadapter/batch",
        description="Applies reference image i to latent i (frame i of an animation), instead of combining all "
        "images. Fewer images than latents: the last image repeats. A weight list gives frame i weight i; a "
        "mask batch gives frame i mask i. Works with AnimateDiff context windows.",
        inputs=lambda: [
            Input("model", "MODEL", "The diffusion model to patch."),
            Input("ipadapter", "IPADAPTER", "The adapter (CLIP-based)."),
            Input("image", "IMAGE", "One reference per latent frame."),
            _WEIGHT, WEIGHT_TYPE, START, END, SCALING, ENCODE_BATCH,
            Input("image_negative", "IMAGE", "Optional negative image(s); a batch gives frame i negative i.", optional=True),
            MASK,
            Input("clip_vision", "CLIP_VISION", "CLIP vision encoder; optional when the Unified Loader supplied one.", optional=True),
            LAYER_WEIGHTS, CROP,
        ],
        outputs=_MODEL_OUT,
    )

    @classmethod
    def run(cls, model, ipadapter, image, weight, weight_type, start_at, end_at, embeds_scaling, encode_batch_size=0,
            image_negative=None, attn_mask=None, clip_vision=None, layer_weights="", crop=CropMode.CENTER.value):
        settings = settings_for(weight, weight_type, start_at, end_at, embeds_scaling, attn_mask=attn_mask,
                                layer_weights=layer_weights, unfold=True)
        settings.validate()
        cond, uncond = encode_pair(ipadapter, clip_vision, image, image_negative, crop, encode_batch_size)
        return (apply_embeds(model, ipadapter, cond, uncond, settings),)


class ApplyEmbedsBatch(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ApplyEmbedsBatch",
        display_name="IPAdapter Embeds Batch (embed i -> latent i)",
        category="ipadapter/batch",
        description="Like IPAdapter Batch, from precomputed embeds: embed i acts on latent i.",
        inputs=lambda: [
            Input("model", "MODEL", "The diffusion model to patch."),
            Input("ipadapter", "IPADAPTER", "The adapter."),
            Input("pos_embeds", EMBEDS, "One embed per latent frame (Encode Image / Load / Combine Embeds with concat)."),
            _WEIGHT, WEIGHT_TYPE, START, END, SCALING,
            Input("neg_embeds", EMBEDS, "Negative embeds; a batch gives frame i negative i. Without them the adapter's default negative is used.", optional=True),
            MASK,
            Input("clip_vision", "CLIP_VISION", "Only needed for a Plus model's default negative when neg_embeds is not connected.", optional=True),
            LAYER_WEIGHTS,
        ],
        outputs=_MODEL_OUT,
    )

    @classmethod
    def run(cls, model, ipadapter, pos_embeds, weight, weight_type, start_at, end_at, embeds_scaling, neg_embeds=None,
            attn_mask=None, clip_vision=None, layer_weights=""):
        settings = settings_for(weight, weight_type, start_at, end_at, embeds_scaling, attn_mask=attn_mask,
                                layer_weights=layer_weights, unfold=True)
        settings.validate()
        unet_adapter(ipadapter)
        pos = as_embeds(pos_embeds, "pos_embeds")
        neg = as_embeds(neg_embeds, "neg_embeds") if neg_embeds is not None else default_negative(ipadapter, pos, clip_vision)
        return (apply_embeds(model, ipadapter, pos, neg, settings),)


# --- weight schedules ------------------------------------------------------------------

_SCHEDULE_OUTPUTS = [
    Output("FLOAT", "weights", "One weight per frame, for the adapter that gets image_1 (link to a weight input)."),
    Output("FLOAT", "weights_invert", "The complement, 1 - weight, frame by frame: for the adapter that gets image_2."),
    Output("INT", "total_frames", "Number of frames in the schedule (make the latent batch this long)."),
    Output("IMAGE", "image_1", "The image batch laid out frame by frame for the first adapter (needs image)."),
    Output("IMAGE", "image_2", "The second image of each transition, frame by frame (shift/alternate batches)."),
    Output(STRATEGY, "weights_strategy", "These settings, for Weights From Strategy and Prompt Schedule nodes."),
    Output("FLOAT", "weights_reversed", "The weights back to front (what the incumbent pack called weights_invert)."),
]


def _pick(image: torch.Tensor | None, indices: list[int] | None):
    if image is None or indices is None:
        return None
    return image.index_select(0, torch.tensor(indices, dtype=torch.long, device=image.device))


def _schedule_outputs(strategy: WeightsStrategy, image):
    count = 0
    if image is not None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0:
            raise ImageInputError("image must be a non-empty IMAGE batch.")
        count = int(image.shape[0])
    schedule = build_schedule(strategy, count)
    return (
        schedule.weights, schedule.weights_invert, schedule.total_frames,
        _pick(image, schedule.image_1), _pick(image, schedule.image_2), strategy.to_dict(), schedule.weights_reversed,
    )


class Weights(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_Weights",
        display_name="IPAdapter Weights (per frame)",
        category="ipadapter/weights",
        description="Builds a per-frame weight schedule for animations: a ramp from the first to the last typed "
        "weight over `frames` frames (or the typed weights as they are, with timing custom), repeated per image, "
        "with images laid out to match for cross-fades. Easing: ease_in starts slowly (1-cos), ease_out starts "
        "fast (sin); the incumbent pack had these two names swapped.",
        inputs=lambda: [
            Input("weights", "STRING", "Weights separated by commas or new lines. With a timing other than custom, the "
                  "first and last values are the ramp's start and end.", default="1.0, 0.0", multiline=True),
            Input("timing", "COMBO", "custom: the weights as typed; linear/ease_in (slow start)/ease_out (fast start)/"
                  "ease_in_out: a ramp; random: random values between start and end (seeded).",
                  default=Timing.LINEAR.value, options=[t.value for t in Timing]),
            Input("frames", "INT", "Frames per cycle (one image, or one transition); at least 2 for a ramp.", default=0, min=0, max=9999, step=1),
            Input("start_frame", "INT", "The ramp starts at this frame of the cycle; earlier frames hold the start weight.", default=0, min=0, max=9999, step=1),
            Input("end_frame", "INT", "The ramp ends at this frame of the cycle; later frames hold the end weight.", default=9999, min=0, max=9999, step=1),
            Input("add_starting_frames", "INT", "Extra frames before the schedule (first image, first weight).", default=0, min=0, max=9999, step=1),
            Input("add_ending_frames", "INT", "Extra frames after the schedule (last image, last weight).", default=0, min=0, max=9999, step=1),
            Input("method", "COMBO", "full batch: each image holds for a cycle; shift batches: cycle i fades image i "
                  "(image_1, weights) into image i+1 (image_2, weights_invert); alternate batches: the same, but each "
                  "image stays on one adapter.", default=BatchMethod.FULL.value, options=[m.value for m in BatchMethod]),
            Input("image", "IMAGE", "Optional reference images to lay out frame by frame.", optional=True),
            Input("seed", "INT", "Seed of the random timing (the schedule is the same for the same seed).", optional=True, default=0, min=0, max=0xFFFFFFFFFFFFFFFF, step=1),
        ],
        outputs=_SCHEDULE_OUTPUTS,
    )

    @classmethod
    def run(cls, weights, timing, frames, start_frame, end_frame, add_starting_frames, add_ending_frames, method, image=None, seed=0):
        strategy = WeightsStrategy(
            weights=weights, timing=Timing(timing), frames=frames, start_frame=start_frame, end_frame=end_frame,
            add_starting_frames=add_starting_frames, add_ending_frames=add_ending_frames, method=BatchMethod(method),
            frame_count=int(image.shape[0]) if isinstance(image, torch.Tensor) and image.ndim == 4 else 0, seed=seed,
        )
        return _schedule_outputs(strategy, image)


class WeightsFromStrategy(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_WeightsFromStrategy",
        display_name="IPAdapter Weights From Strategy",
        category="ipadapter/weights",
        description="Rebuilds a weight schedule from a stored strategy, optionally for another image batch.",
        inputs=lambda: [
            Input("weights_strategy", STRATEGY, "From an IPAdapter Weights node (or a node made for the incumbent pack's strategy)."),
            Input("image", "IMAGE", "Optional reference images to lay out frame by frame.", optional=True),
        ],
        outputs=_SCHEDULE_OUTPUTS,
    )

    @classmethod
    def run(cls, weights_strategy, image=None):
        return _schedule_outputs(WeightsStrategy.from_dict(weights_strategy), image)


class PromptScheduleFromStrategy(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_PromptScheduleFromWeightsStrategy",
        display_name="IPAdapter Prompt Schedule From Weights Strategy",
        category="ipadapter/weights",
        description="Text keyframes for a batch prompt-schedule node (FizzNodes format, '\"frame\": \"prompt\",' per "
        "line): prompt line i starts where image i's cycle starts.",
        inputs=lambda: [
            Input("weights_strategy", STRATEGY, "From an IPAdapter Weights node."),
            Input("prompt", "STRING", "One prompt per line, one line per image (the last line repeats if short).", default="", multiline=True),
        ],
        outputs=[Output("STRING", "prompt_schedule", "Keyframed prompts.")],
    )

    @classmethod
    def run(cls, weights_strategy, prompt=""):
        return (prompt_schedule(WeightsStrategy.from_dict(weights_strategy), (prompt or "").split("\n")),)


class CombineWeights(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_CombineWeights",
        display_name="IPAdapter Combine Weights",
        category="ipadapter/weights",
        description="Joins two weight schedules (or numbers) end to end: the frames of weights_2 follow those of weights_1.",
        inputs=lambda: [
            Input("weights_1", "FLOAT", "A weight or a per-frame weight list.", default=0.0, min=-1.0, max=5.0, step=0.05),
            Input("weights_2", "FLOAT", "A weight or a per-frame weight list, appended after weights_1.", default=0.0, min=-1.0, max=5.0, step=0.05),
        ],
        outputs=[
            Output("FLOAT", "weights", "The joined per-frame weights."),
            Output("INT", "count", "Number of frames."),
        ],
    )

    @classmethod
    def run(cls, weights_1, weights_2):
        joined = []
        for value in (weights_1, weights_2):
            frames = as_weight_list(value)
            joined += frames if frames is not None else [float(value)]
        return joined, len(joined)


NODES = [ApplyBatch, ApplyEmbedsBatch, Weights, WeightsFromStrategy, PromptScheduleFromStrategy, CombineWeights]
