"""Odd and bad node inputs through IPAK_Apply in ComfyUI's executor: images (empty, grey, RGBA,
1x1, very large, non-square, NaN), masks (any size or batch, all-zero, all-one, another aspect
ratio), weights (negative, large, NaN, start after end) and per-layer weight strings. What a
user can reasonably connect works; what cannot work gets an error that says what to do."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import robust_nodes as rn  # noqa: I001  (sets up the host first)
from host import HostError, run_prompt
from ipadapter_kit.ip_adapter_core.errors import InvalidInputError, WeightSpecError
from ipadapter_kit.nodes.apply import Apply


@pytest.fixture(scope="module", autouse=True)
def robust_nodes():
    with rn.registered():
        yield


def _error(graph) -> str:
    return rn.message_of(rn.node_error(graph))


SD15_KEYS = 16

# --- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", rn.IMAGES_THAT_WORK)
def test_images_a_user_can_connect_work(case):
    info = rn.info(run_prompt(rn.apply_graph(image=case)))
    assert info["keys"] == SD15_KEYS and math.isfinite(info["kv_sum"])


@pytest.mark.parametrize("crop", ["center", "pad", "squash"])
def test_non_square_references_work_with_every_crop_mode(crop):
    info = rn.info(run_prompt(rn.apply_graph(adapter="sd15-plus", image="tall", crop=crop)))
    assert info["keys"] == SD15_KEYS and math.isfinite(info["kv_sum"])


@pytest.mark.parametrize("odd, plain", [("rgba", "rgb40"), ("gray", "gray_as_rgb")])
def test_alpha_is_dropped_and_grey_is_replicated(odd, plain):
    """RGBA = its RGB channels, one channel = that channel as RGB: the same image K/V."""
    assert rn.info(run_prompt(rn.apply_graph(image=odd)))["kv_sum"] == rn.info(run_prompt(rn.apply_graph(image=plain)))["kv_sum"]


REFUSED_IMAGES = [
    ("empty", ["image is an empty batch (0 images)", "Connect at least one image"]),
    ("nan", ["image contains NaN or infinite pixel values", "check the node that made it"]),
    ("inf", ["image contains NaN or infinite pixel values", "check the node that made it"]),
    ("two_channels", ["image has 2 channels", "expected 1 (grey), 3 (RGB) or 4 (RGBA)", "Convert it to RGB first"]),
    ("huge", ["image is 8x9000 pixels", "over 8192 px per side", "Downscale it first (e.g. ImageScale)"]),
    ("no_pixels", ["image has no pixels (shape [1, 0, 32, 3])", "check the node that made it"]),
    ("rank5", ["image must be [batch, height, width, channels]; got shape [1, 1, 32, 32, 3]", "Connect an IMAGE output"]),
]


@pytest.mark.parametrize("case, words", REFUSED_IMAGES, ids=[c for c, _ in REFUSED_IMAGES])
def test_unusable_images_get_a_clear_error(case, words):
    message = _error(rn.apply_graph(image=case))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.ImageInputError: "), message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_a_bad_negative_image_is_named_as_such():
    g = rn.apply_graph()
    g["negative"] = {"class_type": "R_Image", "inputs": {"case": "nan"}}
    g["apply"]["inputs"]["image_negative"] = ["negative", 0]
    assert "image_negative contains NaN or infinite pixel values" in _error(g)


def _with_negative(image: str, negative: str, combine: str = "concat") -> dict:
    g = rn.apply_graph(image=image, combine_embeds=combine)
    g["negative"] = {"class_type": "R_Image", "inputs": {"case": negative}}
    g["apply"]["inputs"]["image_negative"] = ["negative", 0]
    return g


@pytest.mark.parametrize("image, negative, combine", [
    ("batch3", "rgb", "concat"), ("batch3", "batch3", "concat"), ("batch2", "batch3", "average"), ("rgb", "batch2", "add"),
])
def test_negative_images_that_line_up_work(image, negative, combine):
    assert rn.info(run_prompt(_with_negative(image, negative, combine)))["keys"] == SD15_KEYS


def test_a_negative_batch_that_cannot_line_up_is_refused_at_apply_time():
    """concat puts each image's tokens side by side, so 3 negatives cannot stand against 2
    references; this used to fail inside KSampler with a raw size-mismatch traceback."""
    message = _error(_with_negative("batch2", "batch3"))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.InvalidInputError: "), message
    assert "holds 3 images but there are 2 reference images, and combine_embeds is 'concat'" in message
    assert "Use 1 negative image, 2 of them, or another combine_embeds method" in message


@pytest.mark.slow
def test_style_and_composition_with_concat_and_different_batch_sizes_samples():
    """2 style images + 1 composition image with concat: the composition layers get a negative
    as long as their own tokens (this used to crash inside KSampler)."""
    g = rn.apply_graph(model="sdxl", adapter="sdxl-linear", image="batch2")
    g["composition"] = {"class_type": "R_Image", "inputs": {"case": "rgb"}}
    g["apply"] = {"class_type": "IPAK_StyleComposition", "inputs": {
        "model": ["model", 0], "ipadapter": ["adapter", 0], "image_style": ["image", 0], "image_composition": ["composition", 0],
        "weight_style": 1.0, "weight_composition": 1.0, "expand_style": False, "combine_embeds": "concat", "start_at": 0.0,
        "end_at": 1.0, "embeds_scaling": "V only", "clip_vision": ["clip", 0]}}
    rn.add_sampler(g, ["apply", 0], "sdxl")
    assert rn.stats(run_prompt(g))["finite"]


# --- masks ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unmasked():
    """Sampled latents without the adapter, and with it but without a mask (latent batch 2)."""
    plain = rn.stats(run_prompt(rn.apply_graph(sample=True, latent=(2, 64, 64), weight=0.0)))
    full = rn.stats(run_prompt(rn.apply_graph(sample=True, latent=(2, 64, 64))))
    assert not torch.equal(plain["tensor"], full["tensor"])
    return plain["tensor"], full["tensor"]


@pytest.mark.slow
@pytest.mark.parametrize("case", rn.MASKS_THAT_WORK)
def test_masks_of_any_size_and_batch_work(case, unmasked):
    plain, full = unmasked
    out = rn.stats(run_prompt(rn.apply_graph(mask=case, sample=True, latent=(2, 64, 64))))
    assert out["finite"]
    if case == "zeros":
        assert torch.equal(out["tensor"], plain)  # masked out everywhere = no adapter, exactly
    elif case in ("ones", "one_pixel"):
        assert torch.equal(out["tensor"], full)  # white everywhere = no mask, exactly
    else:
        assert not torch.equal(out["tensor"], plain) and not torch.equal(out["tensor"], full)


@pytest.mark.slow
def test_mask_with_another_aspect_ratio_works_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        out = rn.stats(run_prompt(rn.apply_graph(mask="wide", sample=True, latent=(1, 64, 64))))
    assert out["finite"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "ipadapter_kit" and r.levelno == logging.WARNING]
    assert any("attn_mask is 64x16 but the latent is 8x8" in w and "stretched" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        run_prompt(rn.apply_graph(mask="left_half", sample=True, latent=(1, 64, 64)))
    assert not [r for r in caplog.records if "attn_mask is" in r.getMessage()]  # same aspect: no warning


REFUSED_MASKS = [
    ("empty", ["attn_mask is empty (shape [0, 8, 8])", "connect a mask with at least one pixel, or disconnect it"]),
    ("nan", ["attn_mask contains NaN or infinite values", "check the node that made it"]),
    ("rank1", ["attn_mask must be [height, width] or [batch, height, width]; got shape [8]", "Connect a MASK"]),
]


@pytest.mark.parametrize("case, words", REFUSED_MASKS, ids=[c for c, _ in REFUSED_MASKS])
def test_unusable_masks_get_a_clear_error(case, words):
    message = _error(rn.apply_graph(mask=case))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.MaskInputError: "), message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


# --- weights ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_negative_and_maximum_weights_sample_finite_and_differ():
    low = rn.stats(run_prompt(rn.apply_graph(sample=True, weight=-1.0)))
    high = rn.stats(run_prompt(rn.apply_graph(sample=True, weight=5.0)))
    assert low["finite"] and high["finite"] and low["sum"] != high["sum"]


def test_weight_beyond_the_node_range_is_refused_by_comfyui_validator():
    with pytest.raises(HostError, match="weight") as err:
        run_prompt(rn.apply_graph(weight=50.0))
    assert "prompt rejected" in str(err.value) and "bigger than max of 5.0" in str(err.value)


@pytest.mark.parametrize("inputs, words", [
    ({"weight": float("nan")}, ["weight must be a finite number, got nan", "set a number in the node"]),
    ({"start_at": 0.8, "end_at": 0.2}, ["start_at (0.8) is after end_at (0.2)", "never be active", "Set start_at <= end_at"]),
], ids=["nan-weight", "start-after-end"])
def test_unusable_weights_get_a_clear_error(inputs, words):
    message = _error(rn.apply_graph(**inputs))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.WeightSpecError: "), message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


@pytest.mark.parametrize("inputs, keys", [
    ({"weight": 0.0}, 0),
    ({"start_at": 0.5, "end_at": 0.5}, 0),
    ({"layer_weights": ""}, SD15_KEYS),
    ({"layer_weights": "  \n "}, SD15_KEYS),
    ({"layer_weights": ", ;"}, SD15_KEYS),  # no entries = no per-layer weights (it used to switch every layer off)
    ({"layer_weights": "3:1, 6:0.5"}, 2),
    ({"layer_weights": "3 : 1 ;\n6:0.5,"}, 2),
    ({"layer_weights": "*:0.5, 3:0"}, SD15_KEYS - 1),
    ({"layer_weights": "*:0"}, 0),
], ids=["weight-0", "empty-range", "lw-empty", "lw-blank", "lw-separators", "lw-two", "lw-loose", "lw-star", "lw-all-0"])
def test_settings_without_effect_and_layer_weight_strings(inputs, keys):
    assert rn.info(run_prompt(rn.apply_graph(**inputs)))["keys"] == keys


@pytest.mark.parametrize("text, words", [
    ("3:abc", ["cannot read '3:abc'", "Write 'index:weight' pairs separated by commas, e.g. '3:1.0, 6:0.5'", "transformer 0..15"]),
    ("-1:1", ["cannot read '-1:1'"]),
    ("3=1", ["cannot read '3=1'"]),
    ("99:1", ["transformer index 99 does not exist; this model has 16 (0..15)"]),
    ("3.9:1", ["transformer 3 has 1 block(s); '3.9:1' is out of range"]),
    ("3:1e400", ["'3:1e400' is not a finite number"]),
])
def test_malformed_layer_weights_say_how_to_write_them(text, words):
    message = _error(rn.apply_graph(layer_weights=text))
    assert message.startswith("ipadapter_kit.ip_adapter_core.errors.WeightSpecError: layer_weights: "), message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


@pytest.mark.parametrize("field, value, error", [
    ("weight_type", "original", WeightSpecError),  # a v1 name: old workflows and other packs' Python calls
    ("embeds_scaling", "V", InvalidInputError),
    ("combine_embeds", "sum", InvalidInputError),
    ("crop", "fill", InvalidInputError),
])
def test_unknown_option_values_list_the_valid_ones(field, value, error):
    """ComfyUI's validator refuses these in a prompt; the node itself also answers clearly when
    called from Python (the incumbent raised a bare ValueError)."""
    args = dict(rn.APPLY_DEFAULTS)
    args[field] = value
    with pytest.raises(error) as err:
        Apply.run(rn.model("sd15"), rn.adapter("sd15-linear"), rn.image("rgb"), clip_vision=rn.clip_vision("tiny"), **args)
    assert f"{field} '{value}' is not one of" in str(err.value) and "pick one of those in the node" in str(err.value)
