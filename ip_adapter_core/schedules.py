"""Per-frame weight schedules for batches and animations (cross-fades between references).

A *strategy* is what the user typed (a weight ramp, its timing, frame counts, how images
are paired); `build_schedule` turns it into one weight per latent frame plus, for each
frame, which reference image goes to the first and the second adapter. The dictionary
form of a strategy (`WeightsStrategy.to_dict`) uses the same keys as the incumbent pack's
WEIGHTS_STRATEGY, so strategies made by third-party nodes for it load here too.

Easing names follow the usual convention: an ease-in curve starts slowly
(`1 - cos(pi x / 2)`), an ease-out curve starts fast (`sin(pi x / 2)`). The incumbent pack
has the two swapped; see `Timing`.
"""

from __future__ import annotations

import enum
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import WeightSpecError

MAX_FRAMES = 9999


class Timing(str, enum.Enum):
    CUSTOM = "custom"  # the weights as typed, one per frame
    LINEAR = "linear"
    EASE_IN_OUT = "ease_in_out"
    EASE_IN = "ease_in"  # slow start: 1 - cos(pi x / 2)  (the incumbent's "ease_out")
    EASE_OUT = "ease_out"  # fast start: sin(pi x / 2)      (the incumbent's "ease_in")
    RANDOM = "random"  # uniform between the first and last weight, seeded


class BatchMethod(str, enum.Enum):
    FULL = "full batch"  # every image holds for one cycle: image_1 only
    SHIFT = "shift batches"  # cycle i fades image i (image_1) into image i+1 (image_2)
    ALTERNATE = "alternate batches"  # like shift, but each image stays on the same adapter


def ease(timing: Timing, x: float) -> float:
    """Progress 0..1 -> eased progress 0..1 (x=0 -> 0, x=1 -> 1)."""
    if timing is Timing.LINEAR:
        return x
    if timing is Timing.EASE_IN:
        return 1.0 - math.cos(math.pi * x / 2.0)
    if timing is Timing.EASE_OUT:
        return math.sin(math.pi * x / 2.0)
    if timing is Timing.EASE_IN_OUT:
        return (1.0 - math.cos(math.pi * x)) / 2.0
    raise ValueError(timing)


_SPLIT = re.compile(r"[,\n;]")


def parse_weights(text: str) -> list[float]:
    """ "1.0, 0.5\\n0.0" -> [1.0, 0.5, 0.0] (commas, semicolons or new lines)."""
    out = []
    for raw in _SPLIT.split(text or ""):
        token = raw.strip()
        if not token:
            continue
        try:
            value = float(token)
        except ValueError:
            raise WeightSpecError(
                f"weights: '{token}' is not a number. Write numbers separated by commas or new lines, e.g. '1.0, 0.0'."
            ) from None
        if not math.isfinite(value):
            raise WeightSpecError(f"weights: '{token}' is not a finite number.")
        out.append(value)
    return out


def _int(value, name: str, lo: int = 0, hi: int = MAX_FRAMES) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise WeightSpecError(f"weights strategy: {name} must be a whole number, got {value!r}.") from None
    if not lo <= number <= hi:
        raise WeightSpecError(f"weights strategy: {name} must be between {lo} and {hi}, got {number}.")
    return number


@dataclass(frozen=True)
class WeightsStrategy:
    weights: str = "1.0, 0.0"
    timing: Timing = Timing.LINEAR
    frames: int = 0  # frames per cycle (timings other than custom; at least 2)
    start_frame: int = 0  # the ramp starts here (earlier frames hold the first weight)
    end_frame: int = MAX_FRAMES  # the ramp ends here (later frames hold the last weight)
    add_starting_frames: int = 0  # extra frames before everything (first image, first weight)
    add_ending_frames: int = 0  # extra frames after everything (last image, last weight)
    method: BatchMethod = BatchMethod.FULL
    frame_count: int = 0  # images the strategy was made for (0: none connected)
    seed: int = 0  # random timing only

    def __post_init__(self):
        object.__setattr__(self, "timing", Timing(self.timing))
        object.__setattr__(self, "method", BatchMethod(self.method))
        for name in ("frames", "start_frame", "end_frame", "add_starting_frames", "add_ending_frames", "frame_count"):
            object.__setattr__(self, name, _int(getattr(self, name), name))
        object.__setattr__(self, "seed", _int(self.seed, "seed", 0, 2**64 - 1))
        parse_weights(self.weights)  # fail early on a bad string

    def to_dict(self) -> dict:
        """The WEIGHTS_STRATEGY value: the incumbent's keys, plus `seed`."""
        return {
            "weights": self.weights,
            "timing": self.timing.value,
            "frames": self.frames,
            "start_frame": self.start_frame,
            "end_frame": self.end_frame,
            "add_starting_frames": self.add_starting_frames,
            "add_ending_frames": self.add_ending_frames,
            "method": self.method.value,
            "frame_count": self.frame_count,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "WeightsStrategy":
        if isinstance(data, WeightsStrategy):
            return data
        if not isinstance(data, Mapping):
            raise WeightSpecError(f"weights_strategy must come from an IPAdapter Weights node, got {type(data).__name__}.")
        known = cls.__dataclass_fields__
        values = {k: data[k] for k in known if k in data}
        try:
            return cls(**values)
        except ValueError as e:
            if isinstance(e, WeightSpecError):
                raise
            raise WeightSpecError(f"weights_strategy holds an unknown option: {e}.") from None


@dataclass(frozen=True)
class Schedule:
    weights: list[float]  # one per latent frame, for the first adapter (image_1)
    weights_invert: list[float]  # 1 - w: the second adapter's (image_2) share, frame by frame
    weights_reversed: list[float]  # the weights back to front (the incumbent's "weights_invert")
    image_1: list[int] | None  # per frame: index into the image batch
    image_2: list[int] | None
    cycle: list[float]  # the weights of one cycle (one image or one transition)
    segments: int  # cycles in the schedule (images, or transitions)

    @property
    def total_frames(self) -> int:
        return len(self.weights)


def cycle_weights(strategy: WeightsStrategy) -> list[float]:
    """The weights of one cycle."""
    typed = parse_weights(strategy.weights)
    if strategy.timing is Timing.CUSTOM:
        return typed or [0.0]
    start, end = (typed[0], typed[-1]) if typed else (0.0, 1.0)
    frames = max(strategy.frames, 2)
    end_frame = min(strategy.end_frame, frames)
    start_frame = min(strategy.start_frame, end_frame)
    duration = end_frame - start_frame
    out = [start] * start_frame
    rng = random.Random(strategy.seed)
    for i in range(duration):
        x = i / (duration - 1) if duration > 1 else 1.0
        if strategy.timing is Timing.RANDOM:
            out.append(rng.uniform(start, end))
        elif i == duration - 1:
            out.append(end)  # exactly the typed end value
        else:
            out.append(start + (end - start) * ease(strategy.timing, x))
    out += [end] * (frames - end_frame)
    return out


def build_schedule(strategy: WeightsStrategy, image_count: int = 0) -> Schedule:
    """Per-frame weights (and image indices when `image_count` > 0) for a strategy."""
    cycle = cycle_weights(strategy)
    n = len(cycle)
    method = strategy.method
    if method is not BatchMethod.FULL and image_count == 1:
        method = BatchMethod.FULL  # one image has no transition to make
    image_1: list[int] | None = None
    image_2: list[int] | None = None
    if image_count <= 0:
        weights, segments = list(cycle), 1
    elif method is BatchMethod.FULL:
        segments = image_count
        weights = cycle * segments
        image_1 = [i for i in range(image_count) for _ in range(n)]
    else:
        segments = image_count - 1
        weights, image_1, image_2 = [], [], []
        for s in range(segments):
            if method is BatchMethod.SHIFT or s % 2 == 0:
                first, second, w = s, s + 1, cycle
            else:  # alternate: the even image stays on adapter 1, now fading in
                first, second, w = s + 1, s, [1.0 - x for x in cycle]
            weights += w
            image_1 += [first] * n
            image_2 += [second] * n
    if strategy.add_starting_frames:
        k = strategy.add_starting_frames
        weights = [weights[0]] * k + weights
        if image_1 is not None:
            image_1 = [0] * k + image_1
            image_2 = [0] * k + image_2 if image_2 is not None else None
    if strategy.add_ending_frames:
        k = strategy.add_ending_frames
        weights = weights + [weights[-1]] * k
        if image_1 is not None:
            image_1 = image_1 + [image_count - 1] * k
            image_2 = image_2 + [image_count - 1] * k if image_2 is not None else None
    return Schedule(
        weights=weights,
        weights_invert=[1.0 - w for w in weights],
        weights_reversed=weights[::-1],
        image_1=image_1,
        image_2=image_2,
        cycle=cycle,
        segments=segments,
    )


def prompt_schedule(strategy: WeightsStrategy, prompts: Sequence[str]) -> str:
    """FizzNodes-style keyframes ('"frame": "prompt",' per line): prompt i starts where image
    i's cycle starts. Missing prompts repeat the last one; extra ones are dropped."""
    lines = [p.strip() for p in prompts if p.strip()]
    if not lines:
        return ""
    count = strategy.frame_count or len(lines)
    lines = (lines + [lines[-1]] * count)[:count]
    schedule = build_schedule(strategy, count)
    n = len(schedule.cycle)
    lead = strategy.add_starting_frames
    keys: dict[int, str] = {}
    if lead:
        keys[0] = lines[0]
    for i, text in enumerate(lines):
        keys[i * n + lead] = text
    if strategy.add_ending_frames:
        keys.setdefault(schedule.segments * n + lead, lines[-1])
    return "".join(f"\"{frame}\": {json.dumps(text, ensure_ascii=False)},\n" for frame, text in sorted(keys.items()))


def as_weight_list(value) -> list[float] | None:
    """A FLOAT socket value that is a list (or tensor) of per-frame weights -> list; a
    plain number -> None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
        if not isinstance(value, list):
            return None
    if isinstance(value, (list, tuple)):
        flat = []
        for item in value:
            if isinstance(item, (list, tuple)):
                flat.extend(float(x) for x in item)
            else:
                flat.append(float(item))
        if not flat:
            raise WeightSpecError("the per-frame weight list is empty.")
        if not all(math.isfinite(x) for x in flat):
            raise WeightSpecError("the per-frame weight list holds non-finite values.")
        return flat
    raise WeightSpecError(f"weight must be a number or a list of per-frame weights, got {type(value).__name__}.")
