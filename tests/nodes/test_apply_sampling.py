"""Apply on small ComfyUI UNets with SD1.5 and SDXL layouts: which keys are patched, how
often they run, exactness at weight 0, and that the input model is never changed."""

from __future__ import annotations

import copy

import pytest
import torch

import tiny  # noqa: I001  (sets up the host first)
from ipadapter_kit.ip_adapter_core import layouts
from ipadapter_kit.ip_adapter_core.spec import ProjectionKind
from ipadapter_kit.nodes import host, patch
from ipadapter_kit.nodes.apply import Apply

STEPS = 2


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def setup(request):
    arch = request.param
    model = tiny.tiny_model(arch)
    handle = tiny.tiny_adapter(tiny.tiny_spec(model))
    return arch, model, handle, tiny.tiny_clip_vision()


def _apply(setup, **kw):
    arch, model, handle, clip = setup
    args = dict(weight=1.0, weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    args.update(kw)
    image = kw.pop("image", None)
    args.pop("image", None)
    if image is None:
        image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(5))
    return Apply.run(model, args.pop("ipadapter", handle), image, clip_vision=clip, **args)[0]


def _sample(arch, model, seed=0):
    return tiny.sample(model, arch, STEPS, seed=seed)


def _attn2(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def test_every_cross_attention_key_is_patched_middle_included(setup):
    arch, model, _, _ = setup
    patched = _apply(setup)
    table = layouts.sd15_layers() if arch == "sd15" else layouts.sdxl_layers()
    assert set(_attn2(patched)) == {layer.comfy_key for layer in table}
    assert any(key[0] == "middle" for key in _attn2(patched))
    assert [layer.key for layer in host.cross_attention_layers(model)] == [layer.comfy_key for layer in table]


def test_each_key_runs_once_per_model_evaluation(setup, monkeypatch):
    arch, model, _, _ = setup
    patched = _apply(setup)
    calls: list[tuple] = []
    original = patch.Attn2Patch.__call__

    def spy(self, q, k, v, extra):
        calls.append((self.layer.key, tuple(extra["cond_or_uncond"])))
        return original(self, q, k, v, extra)

    monkeypatch.setattr(patch.Attn2Patch, "__call__", spy)
    evaluations = []
    patched = patched.clone()
    patched.set_model_unet_function_wrapper(lambda f, a: evaluations.append(1) or f(a["input"], a["timestep"], **a["c"]))
    _sample(arch, patched)
    keys = {layer.comfy_key for layer in (layouts.sd15_layers() if arch == "sd15" else layouts.sdxl_layers())}
    assert len(calls) == len(keys) * len(evaluations)
    per_key = {k: sum(1 for c in calls if c[0] == k) for k in keys}
    assert set(per_key.values()) == {len(evaluations)}


def test_weight_zero_and_end_zero_reproduce_unpatched_sampling_exactly(setup):
    arch, model, _, _ = setup
    plain = _sample(arch, model)
    assert torch.equal(_sample(arch, _apply(setup, weight=0.0)), plain)
    assert torch.equal(_sample(arch, _apply(setup, start_at=0.0, end_at=0.0)), plain)
    assert not torch.equal(_sample(arch, _apply(setup, weight=1.0)), plain)


def test_apply_never_changes_the_input_model(setup):
    arch, model, handle, _ = setup
    options_before = copy.deepcopy(model.model_options)
    weights_before = {k: v.clone() for k, v in model.model.state_dict().items()}
    sibling = model.clone()
    patched = _apply(setup)
    _sample(arch, patched)
    assert model.model_options == options_before
    assert sibling.model_options == options_before
    assert all(torch.equal(v, weights_before[k]) for k, v in model.model.state_dict().items())
    # a clone of the patched model shares (does not copy) the patch objects
    again = patched.clone()
    assert all(again_p is p for again_p, p in zip(_attn2(again).values(), _attn2(patched).values()))


def test_two_adapters_stack_into_one_patch_per_key(setup):
    arch, model, handle, clip = setup
    first = _apply(setup, weight=0.6)
    second = Apply.run(first, handle, torch.rand(2, 32, 32, 3), 0.4, "style transfer", "average", 0.0, 1.0, "K+V", clip_vision=clip)[0]
    stacked = _attn2(second)
    assert all(len(p.entries) in (1, 2) for p in stacked.values())
    assert sum(len(p.entries) == 2 for p in stacked.values()) > 0
    assert all(len(p.entries) == 1 for p in _attn2(first).values())  # the first clone is untouched
    out = _sample(arch, second)
    assert torch.isfinite(out).all()


def test_plus_adapter_samples(setup):
    arch, model, _, clip = setup
    handle = tiny.tiny_adapter(tiny.tiny_spec(model, ProjectionKind.RESAMPLER), seed=2)
    patched = _apply(setup, ipadapter=handle)
    assert torch.isfinite(_sample(arch, patched)).all()
    assert not torch.equal(_sample(arch, patched), _sample(arch, model))
