"""Per-frame weight schedules: easing names, ramps, image layouts, the true complement."""

from __future__ import annotations

import math

import pytest

from ip_adapter_core.errors import WeightSpecError
from ip_adapter_core.schedules import (
    BatchMethod,
    Timing,
    WeightsStrategy,
    as_weight_list,
    build_schedule,
    cycle_weights,
    ease,
    parse_weights,
    prompt_schedule,
)


def approx(values):
    return pytest.approx(values, abs=1e-9)


def test_easing_names_follow_the_usual_convention():
    x = 0.25
    assert ease(Timing.EASE_IN, x) == pytest.approx(1 - math.cos(math.pi * x / 2))  # slow start
    assert ease(Timing.EASE_OUT, x) == pytest.approx(math.sin(math.pi * x / 2))  # fast start
    assert ease(Timing.EASE_IN, x) < ease(Timing.LINEAR, x) < ease(Timing.EASE_OUT, x)
    for t in (Timing.LINEAR, Timing.EASE_IN, Timing.EASE_OUT, Timing.EASE_IN_OUT):
        assert ease(t, 0.0) == pytest.approx(0.0) and ease(t, 1.0) == pytest.approx(1.0)


def test_linear_ramp_and_held_frames():
    assert cycle_weights(WeightsStrategy("1.0, 0.0", Timing.LINEAR, frames=5)) == approx([1, 0.75, 0.5, 0.25, 0])
    held = cycle_weights(WeightsStrategy("1, 0", Timing.LINEAR, frames=8, start_frame=2, end_frame=6))
    assert held == approx([1, 1, 1, 2 / 3, 1 / 3, 0, 0, 0])
    # the typed end value is hit exactly, whatever the rounding of the ramp
    assert cycle_weights(WeightsStrategy("0.1, 0.7", Timing.EASE_IN_OUT, frames=7))[-1] == 0.7


def test_ease_in_starts_slow_in_the_schedule():
    w = cycle_weights(WeightsStrategy("0, 1", Timing.EASE_IN, frames=5))
    assert w[1] == pytest.approx(1 - math.cos(math.pi * 0.25 / 2))
    assert w[1] < 0.25


def test_one_frame_ramp_does_not_divide_by_zero():
    assert cycle_weights(WeightsStrategy("1, 0", Timing.LINEAR, frames=4, start_frame=2, end_frame=3)) == approx([1, 1, 0, 0])
    assert cycle_weights(WeightsStrategy("1, 0", Timing.LINEAR, frames=4, start_frame=3, end_frame=3)) == approx([1, 1, 1, 0])


def test_custom_keeps_the_typed_weights():
    assert cycle_weights(WeightsStrategy("0.2\n0.4; 0.9", Timing.CUSTOM)) == approx([0.2, 0.4, 0.9])
    assert cycle_weights(WeightsStrategy("", Timing.CUSTOM)) == [0.0]


def test_random_is_seeded_and_in_range():
    a = cycle_weights(WeightsStrategy("0.2, 0.8", Timing.RANDOM, frames=20, seed=7))
    b = cycle_weights(WeightsStrategy("0.2, 0.8", Timing.RANDOM, frames=20, seed=7))
    c = cycle_weights(WeightsStrategy("0.2, 0.8", Timing.RANDOM, frames=20, seed=8))
    assert a == b and a != c and all(0.2 <= w <= 0.8 for w in a)


def test_full_batch_holds_each_image_for_a_cycle():
    s = build_schedule(WeightsStrategy("1, 0", Timing.LINEAR, frames=3), image_count=3)
    assert s.image_1 == [0, 0, 0, 1, 1, 1, 2, 2, 2] and s.image_2 is None
    assert s.weights == approx([1, 0.5, 0] * 3) and s.total_frames == 9


def test_shift_batches_fade_image_i_into_i_plus_1_with_a_true_complement():
    s = build_schedule(WeightsStrategy("1, 0", Timing.LINEAR, frames=4, start_frame=1, add_starting_frames=2,
                                       add_ending_frames=3, method=BatchMethod.SHIFT), image_count=3)
    assert s.image_1 == [0, 0] + [0] * 4 + [1] * 4 + [2] * 3
    assert s.image_2 == [0, 0] + [1] * 4 + [2] * 4 + [2] * 3
    assert [a + b for a, b in zip(s.weights, s.weights_invert)] == approx([1.0] * s.total_frames)
    assert s.weights_reversed == s.weights[::-1]
    assert s.weights_reversed != approx(s.weights_invert)  # the incumbent's reversal is not a complement (#717)


def test_alternate_batches_keep_each_image_on_one_adapter():
    s = build_schedule(WeightsStrategy("1, 0", Timing.LINEAR, frames=3, method=BatchMethod.ALTERNATE), image_count=4)
    assert s.image_1 == [0] * 3 + [2] * 3 + [2] * 3
    assert s.image_2 == [1] * 3 + [1] * 3 + [3] * 3
    assert s.weights == approx([1, 0.5, 0, 0, 0.5, 1, 1, 0.5, 0])
    # per image, its weight never jumps between consecutive frames
    for image in range(4):
        track = [(w if i1 == image else 0.0) + (wi if i2 == image else 0.0)
                 for w, wi, i1, i2 in zip(s.weights, s.weights_invert, s.image_1, s.image_2)]
        assert max(abs(a - b) for a, b in zip(track, track[1:])) <= 0.5 + 1e-9


def test_padding_applies_without_images_too():
    s = build_schedule(WeightsStrategy("1, 0", Timing.LINEAR, frames=2, add_starting_frames=2, add_ending_frames=1))
    assert s.weights == approx([1, 1, 1, 0, 0]) and s.image_1 is None


def test_one_image_with_shift_is_a_full_batch():
    s = build_schedule(WeightsStrategy("1, 0", Timing.LINEAR, frames=2, method=BatchMethod.SHIFT), image_count=1)
    assert s.image_1 == [0, 0] and s.image_2 is None


def test_prompt_schedule_keyframes_follow_the_cycles():
    strategy = WeightsStrategy("1, 0", Timing.LINEAR, frames=4, add_starting_frames=2, add_ending_frames=1, frame_count=3)
    text = prompt_schedule(strategy, ["a cat", 'a "dog"', ""])
    assert text == '"0": "a cat",\n"2": "a cat",\n"6": "a \\"dog\\"",\n"10": "a \\"dog\\"",\n"14": "a \\"dog\\"",\n'
    assert prompt_schedule(strategy, []) == ""


def test_strategy_dict_round_trip_and_incumbent_dicts():
    s = WeightsStrategy("1, 0", Timing.EASE_OUT, frames=6, method=BatchMethod.SHIFT, frame_count=2, seed=3)
    assert WeightsStrategy.from_dict(s.to_dict()) == s
    incumbent = {"weights": "1.0,0.0", "timing": "custom", "frames": 4, "start_frame": 0, "end_frame": 4,
                 "add_starting_frames": 0, "add_ending_frames": 0, "method": "full batch", "frame_count": 4}
    assert WeightsStrategy.from_dict(incumbent).seed == 0
    with pytest.raises(WeightSpecError):
        WeightsStrategy.from_dict({**incumbent, "timing": "bounce"})


def test_bad_weights_are_refused_with_the_format():
    with pytest.raises(WeightSpecError, match="separated by commas"):
        parse_weights("1.0, abc")
    with pytest.raises(WeightSpecError):
        parse_weights("1, nan")


def test_weight_values_from_sockets():
    assert as_weight_list(0.5) is None
    assert as_weight_list([1, 0.5]) == [1.0, 0.5]
    with pytest.raises(WeightSpecError):
        as_weight_list([])
