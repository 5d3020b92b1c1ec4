"""Embeds utilities: bit-exact safetensors round trip through the output folder, pickle
files refused, combine methods, noise images; the encoder node's weight and pixel mask."""

from __future__ import annotations

import os

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
import folder_paths
from ipadapter_kit.ip_adapter_core.errors import InvalidInputError, MaskInputError, UnreadableCheckpointError
from ipadapter_kit.ip_adapter_core.spec import EncoderOutput, ProjectionKind
from ipadapter_kit.nodes.apply import EncodeImage
from ipadapter_kit.nodes.embeds import CombineEmbeds, LoadEmbeds, Noise, SaveEmbeds, embeds_files
from ipadapter_kit.nodes.encoding import CLIP_MEAN, ImageEmbeds


def _embeds(dtype=torch.float32, clip=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, 257, 64, generator=g).to(dtype)
    extra = torch.randn(3, 257, 64, generator=g).to(dtype) if clip else None
    output = EncoderOutput.FACE if clip else EncoderOutput.PENULTIMATE
    if clip:
        feats = torch.randn(3, 512, generator=g).to(dtype)
    return ImageEmbeds(output, feats, extra)


@pytest.mark.parametrize("dtype, clip", [(torch.float32, False), (torch.float16, True), (torch.bfloat16, False)])
def test_save_then_load_from_the_output_folder_is_bit_exact(dtype, clip):
    original = _embeds(dtype, clip)
    result = SaveEmbeds.call(embeds=original, filename_prefix="tests/roundtrip")
    (listed,) = result.values
    assert listed.endswith(".ipadpt.safetensors [output]") and result.ui == {"text": [listed]}
    assert listed in embeds_files()  # listed without moving it to input/ (#40)
    loaded = LoadEmbeds.run(listed)[0]
    assert loaded.output is original.output and loaded.features.dtype == dtype
    assert torch.equal(loaded.features.view(torch.uint8), original.features.view(torch.uint8))
    if clip:
        assert torch.equal(loaded.clip_features.view(torch.uint8), original.clip_features.view(torch.uint8))
    else:
        assert loaded.clip_features is None
    second = SaveEmbeds.run(original, "tests/roundtrip").values[0]
    assert second != listed  # the counter moves on; nothing is overwritten


def test_pickled_embeds_are_refused_with_a_clear_message():
    path = os.path.join(folder_paths.get_input_directory(), "incumbent_embeds.ipadpt")
    torch.save(torch.randn(1, 257, 64), path)
    try:
        assert "incumbent_embeds.ipadpt" in embeds_files()
        with pytest.raises(UnreadableCheckpointError, match="pickle.*Save Embeds"):
            LoadEmbeds.run("incumbent_embeds.ipadpt")
    finally:
        os.remove(path)


def test_other_files_are_refused():
    from safetensors.torch import save_file

    path = os.path.join(folder_paths.get_input_directory(), "not_embeds.ipadpt.safetensors")
    save_file({"weight": torch.zeros(2)}, path)
    try:
        with pytest.raises(UnreadableCheckpointError, match="not IPAdapter embeds"):
            LoadEmbeds.run("not_embeds.ipadpt.safetensors")
    finally:
        os.remove(path)
    with pytest.raises(InvalidInputError, match="outside"):
        LoadEmbeds.run("../../etc/passwd")


def test_combine_embeds_methods():
    a = ImageEmbeds(EncoderOutput.IMAGE_EMBEDS, torch.tensor([[1.0, -2.0]]))
    b = ImageEmbeds(EncoderOutput.IMAGE_EMBEDS, torch.tensor([[3.0, 4.0], [5.0, 0.0]]))
    assert CombineEmbeds.run(a, "concat", b)[0].count == 3
    assert CombineEmbeds.run(a, "max", b)[0].features.tolist() == [[5.0, 4.0]]
    assert CombineEmbeds.run(a, "min", b)[0].features.tolist() == [[1.0, -2.0]]
    assert CombineEmbeds.run(a, "subtract", b)[0].features.tolist() == [[-3.0, -4.0]]
    norm = CombineEmbeds.run(a, "norm average", b)[0].features
    assert norm.shape == (1, 2) and torch.isfinite(norm).all()
    other = ImageEmbeds(EncoderOutput.PENULTIMATE, torch.zeros(1, 257, 2))
    with pytest.raises(InvalidInputError, match="different encoders"):
        CombineEmbeds.run(a, "average", other)


def test_noise_node():
    img = torch.rand(1, 40, 40, 3)
    a = Noise.run("dissolve", 0.5, 3, seed=1, image_optional=img)[0]
    b = Noise.run("dissolve", 0.5, 3, seed=1, image_optional=img)[0]
    assert torch.equal(a, b) and a.shape == img.shape
    black = Noise.run("gaussian", 0.3, 0)[0]
    assert black.shape == (1, 224, 224, 3)


def test_save_and_load_round_trip_through_the_executor():
    """Encode -> Save in one prompt, then Load the '[output]' entry (validated as a combo
    value) -> Save again in another: the two files hold the same bits."""
    import nodes as comfy_nodes
    from host import run_prompt
    from safetensors.torch import load_file
    from test_executor import TinyAdapter, TinyClipVision

    comfy_nodes.NODE_CLASS_MAPPINGS.update({"T_TinyAdapter": TinyAdapter, "T_TinyClipVision": TinyClipVision})
    try:
        first = run_prompt({
            "1": {"class_type": "T_TinyAdapter", "inputs": {"arch": "sd15", "kind": "resampler"}},
            "2": {"class_type": "T_TinyClipVision", "inputs": {}},
            "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0x3366CC}},
            "4": {"class_type": "IPAK_EncodeImage", "inputs": {"ipadapter": ["1", 0], "image": ["3", 0], "clip_vision": ["2", 0]}},
            "5": {"class_type": "IPAK_SaveEmbeds", "inputs": {"embeds": ["4", 0], "filename_prefix": "tests/exec"}},
        })
        (listed,) = first["outputs"]["5"]["text"]
        second = run_prompt({
            "1": {"class_type": "IPAK_LoadEmbeds", "inputs": {"embeds": listed}},
            "2": {"class_type": "IPAK_SaveEmbeds", "inputs": {"embeds": ["1", 0], "filename_prefix": "tests/exec_again"}},
        })
        (again,) = second["outputs"]["2"]["text"]
        out = folder_paths.get_output_directory()
        a = load_file(os.path.join(out, listed.removesuffix(" [output]")))
        b = load_file(os.path.join(out, again.removesuffix(" [output]")))
        assert a.keys() == b.keys() == {"features"} and torch.equal(a["features"], b["features"])
        assert a["features"].shape[:2] == (2, 257)
    finally:
        for key in ("T_TinyAdapter", "T_TinyClipVision"):
            comfy_nodes.NODE_CLASS_MAPPINGS.pop(key, None)


@pytest.fixture(scope="module")
def encoder_setup():
    model = tiny.tiny_model("sd15")
    handle = tiny.tiny_adapter(tiny.tiny_spec(model, ProjectionKind.RESAMPLER))
    return handle, tiny.tiny_clip_vision()


def _pictures():
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 48, 64, 3, generator=g)


def test_encoder_weight_scales_the_positive_features_only(encoder_setup):
    handle, clip = encoder_setup
    pos, neg = EncodeImage.run(handle, _pictures(), clip_vision=clip)
    pos2, neg2 = EncodeImage.run(handle, _pictures(), clip_vision=clip, weight=0.6)
    torch.testing.assert_close(pos2.features, pos.features * 0.6)
    assert torch.equal(neg2.features, neg.features)


def test_encoder_mask_shows_the_encoder_only_the_masked_pixels(encoder_setup):
    handle, clip = encoder_setup
    pics = _pictures()
    mask = torch.zeros(48, 64)
    mask[:, 32:] = 1.0
    masked = EncodeImage.run(handle, pics, clip_vision=clip, mask=mask)[0]
    mean = torch.tensor(CLIP_MEAN)
    by_hand = pics.clone()
    by_hand[:, :, :32] = mean  # left half faded to the mean colour, right half untouched
    expected = EncodeImage.run(handle, by_hand, clip_vision=clip)[0]
    torch.testing.assert_close(masked.features, expected.features, atol=1e-5, rtol=1e-5)
    plain = EncodeImage.run(handle, pics, clip_vision=clip)[0]
    assert not torch.allclose(masked.features, plain.features, atol=1e-3)
    full = EncodeImage.run(handle, pics, clip_vision=clip, mask=torch.ones(1, 48, 64))[0]
    torch.testing.assert_close(full.features, plain.features)
    small = torch.zeros(2, 24, 32)  # any size and one per image: stretched over each picture
    small[0, :, 16:] = 1.0
    small[1, :12] = 1.0
    stretched = torch.nn.functional.interpolate(small[:, None], size=(48, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(
        EncodeImage.run(handle, pics, clip_vision=clip, mask=small)[0].features,
        EncodeImage.run(handle, pics, clip_vision=clip, mask=stretched)[0].features,
    )


def test_encoder_mask_count_must_match_the_images(encoder_setup):
    handle, clip = encoder_setup
    with pytest.raises(MaskInputError, match="mask has 3 masks for 2 images"):
        EncodeImage.run(handle, _pictures(), clip_vision=clip, mask=torch.ones(3, 8, 8))
    with pytest.raises(MaskInputError, match=r"^mask must be \[height, width\]"):
        EncodeImage.run(handle, _pictures(), clip_vision=clip, mask=torch.ones(8))
