"""Which layers get which weight, for every weight type and the layer-weight string."""

from __future__ import annotations

import pytest

from ip_adapter_core import layouts
from ip_adapter_core.errors import WeightSpecError
from ip_adapter_core.weights import Route, WeightType, parse_layer_weights, resolve_layer_weights

SD15, SDXL = layouts.sd15_layers(), layouts.sdxl_layers()


def by_tidx(weights, layers):
    """transformer_index -> set of (weight, route) over its blocks."""
    out: dict[int, set] = {}
    for lw, layer in zip(weights, layers):
        out.setdefault(layer.transformer_index, set()).add((round(lw.weight, 6), lw.route))
    return out


def test_transformer_index_tables():
    assert [layer.transformer_index for layer in SD15] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 6]
    assert SD15[-1].comfy_key == ("middle", 0, 0)
    assert len(SDXL) == 70 and layouts.transformer_count(SDXL) == 11
    mid = [layer for layer in SDXL if layer.block == "middle"]
    assert len(mid) == 10 and {layer.transformer_index for layer in mid} == {4}
    assert [layer.diffusers_name for layer in SDXL if layer.transformer_index == 6][0] == "up_blocks.0.attentions.1.transformer_blocks.0.attn2"
    assert [layer.diffusers_name for layer in SDXL if layer.transformer_index == 3][0] == "down_blocks.2.attentions.1.transformer_blocks.0.attn2"


def test_linear_is_uniform_and_includes_the_middle():
    for table in (SD15, SDXL):
        ws = resolve_layer_weights(WeightType.LINEAR, table, 0.8)
        assert all(w.weight == 0.8 and w.route is Route.NORMAL for w in ws)


@pytest.mark.parametrize(
    "wt, expected_sdxl",
    [
        (WeightType.STYLE_TRANSFER, {6: 1.0}),
        (WeightType.COMPOSITION, {3: 1.0}),
        (WeightType.STRONG_STYLE_TRANSFER, {t: 1.0 for t in range(11) if t != 3}),
    ],
)
def test_sdxl_instantstyle_layers(wt, expected_sdxl):
    got = by_tidx(resolve_layer_weights(wt, SDXL, 1.0), SDXL)
    for t in range(11):
        assert got[t] == {(expected_sdxl.get(t, 0.0), Route.NORMAL)}


def test_sd15_style_and_composition_layers():
    style = by_tidx(resolve_layer_weights(WeightType.STYLE_TRANSFER, SD15, 1.0), SD15)
    assert {t for t, v in style.items() if v != {(0.0, Route.NORMAL)}} == {0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15}
    comp = by_tidx(resolve_layer_weights(WeightType.COMPOSITION, SD15, 2.0), SD15)
    assert comp[4] == {(0.5, Route.NORMAL)} and comp[5] == {(2.0, Route.NORMAL)}
    assert all(comp[t] == {(0.0, Route.NORMAL)} for t in range(16) if t not in (4, 5))


def test_style_and_composition_routes_the_composition_image():
    sdxl = by_tidx(resolve_layer_weights(WeightType.STYLE_AND_COMPOSITION, SDXL, 1.0, 0.5), SDXL)
    assert sdxl[6] == {(1.0, Route.NORMAL)} and sdxl[3] == {(0.5, Route.COMPOSITION)}
    sd15 = by_tidx(resolve_layer_weights(WeightType.STYLE_AND_COMPOSITION, SD15, 1.0, 0.8), SD15)
    # composition image on the SD1.5 composition layers (t4, t5), not on style layer t3
    assert sd15[4] == {(0.2, Route.COMPOSITION)} and sd15[5] == {(0.8, Route.COMPOSITION)}
    assert sd15[3] == {(1.0, Route.NORMAL)}


def test_precise_types_send_the_other_group_to_uncond():
    st = by_tidx(resolve_layer_weights(WeightType.STYLE_TRANSFER_PRECISE, SDXL, 1.0, 0.3), SDXL)
    assert st[6] == {(1.0, Route.NORMAL)} and st[3] == {(0.3, Route.NEGATIVE)}
    cp = by_tidx(resolve_layer_weights(WeightType.COMPOSITION_PRECISE, SDXL, 1.0, 0.5), SDXL)
    assert cp[3] == {(1.0, Route.NORMAL)} and cp[6] == {(0.5, Route.NEGATIVE)} and cp[0] == {(0.05, Route.NEGATIVE)}
    off = resolve_layer_weights(WeightType.COMPOSITION_PRECISE, SDXL, 1.0, 0.0)
    assert {lw.weight for lw, layer in zip(off, SDXL) if layer.transformer_index != 3} == {0.0}


def test_ease_curves_follow_transformer_index():
    ws = resolve_layer_weights(WeightType.EASE_IN, SD15, 1.0)
    first = {layer.transformer_index: lw.weight for lw, layer in zip(ws, SD15)}
    assert first[0] == pytest.approx(1.0) and first[15] == pytest.approx(0.05 + 0.95 / 16)
    assert all(first[t] > first[t + 1] for t in range(15))
    out = resolve_layer_weights(WeightType.EASE_OUT, SD15, 1.0)
    assert {layer.transformer_index: lw.weight for lw, layer in zip(out, SD15)}[0] == pytest.approx(0.05)


def test_weak_and_strong_blocks():
    weak_mid = resolve_layer_weights(WeightType.WEAK_MIDDLE, SDXL, 1.0)
    assert {round(lw.weight, 6) for lw, layer in zip(weak_mid, SDXL) if layer.block == "middle"} == {0.2}
    strong = resolve_layer_weights(WeightType.STRONG_MIDDLE, SD15, 1.0)
    assert {layer.block: lw.weight for lw, layer in zip(strong, SD15)} == {"input": 0.2, "output": 0.2, "middle": 1.0}


def test_layer_weight_string_multiplies_the_weight_type():
    ws = resolve_layer_weights(WeightType.LINEAR, SDXL, 2.0, layer_weights="3:0.5, 6:1")
    got = by_tidx(ws, SDXL)
    assert got[3] == {(1.0, Route.NORMAL)} and got[6] == {(2.0, Route.NORMAL)} and got[0] == {(0.0, Route.NORMAL)}
    keep = by_tidx(resolve_layer_weights(WeightType.EASE_IN, SD15, 1.0, layer_weights="*:1, 0:0"), SD15)
    assert keep[0] == {(0.0, Route.NORMAL)} and keep[1] == {(round(0.05 + 0.95 * 15 / 16, 6), Route.NORMAL)}
    block = parse_layer_weights("4.3:2", SDXL)
    assert [f for f, layer in zip(block, SDXL) if f] == [2.0] and sum(block) == 2.0


@pytest.mark.parametrize("text", ["3", "a:1", "3:x", "3:1:2", "99:1", "4.12:1", "1:inf"])
def test_malformed_layer_weights_are_refused_with_the_format(text):
    with pytest.raises(WeightSpecError) as err:
        parse_layer_weights(text, SDXL)
    assert "layer_weights" in str(err.value)


def test_empty_layer_weight_string_changes_nothing():
    assert resolve_layer_weights(WeightType.LINEAR, SD15, 1.0, layer_weights="  \n") == resolve_layer_weights(WeightType.LINEAR, SD15, 1.0)


def test_ease_in_out_and_reverse_peak_in_the_middle_transformer():
    io = by_tidx(resolve_layer_weights(WeightType.EASE_IN_OUT, SD15, 1.0), SD15)
    rev = by_tidx(resolve_layer_weights(WeightType.REVERSE_IN_OUT, SD15, 1.0), SD15)
    for t, a, b in ((0, 0.05, 1.0), (4, 0.525, 0.525), (8, 1.0, 0.05), (12, 0.525, 0.525)):
        assert io[t] == {(a, Route.NORMAL)} and rev[t] == {(b, Route.NORMAL)}, t


def test_weak_input_and_weak_output_scale_only_their_blocks():
    for wt, weak in ((WeightType.WEAK_INPUT, "input"), (WeightType.WEAK_OUTPUT, "output")):
        ws = resolve_layer_weights(wt, SDXL, 2.0)
        by_block = {}
        for lw, layer in zip(ws, SDXL):
            by_block.setdefault(layer.block, set()).add(round(lw.weight, 6))
        assert by_block == {b: ({0.4} if b == weak else {2.0}) for b in ("input", "middle", "output")}, wt


def test_strong_style_and_composition_sends_the_style_image_everywhere_else():
    sdxl = by_tidx(resolve_layer_weights(WeightType.STRONG_STYLE_AND_COMPOSITION, SDXL, 1.0, 0.5), SDXL)
    assert sdxl[3] == {(0.5, Route.COMPOSITION)}
    assert all(sdxl[t] == {(1.0, Route.NORMAL)} for t in range(11) if t != 3)
    sd15 = by_tidx(resolve_layer_weights(WeightType.STRONG_STYLE_AND_COMPOSITION, SD15, 1.0, 0.8), SD15)
    assert sd15[4] == sd15[5] == {(0.8, Route.COMPOSITION)}
    assert all(sd15[t] == {(1.0, Route.NORMAL)} for t in range(16) if t not in (4, 5))


def test_every_weight_type_has_a_layer_test():
    """A new weight type must get a test above that says which layers it weights."""
    import inspect
    import sys

    text = inspect.getsource(sys.modules[__name__])
    missing = [wt.name for wt in WeightType if f"WeightType.{wt.name}" not in text]
    assert not missing, missing
