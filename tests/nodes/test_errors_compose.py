"""Adapters compose with everything else on the model, through ComfyUI's executor: several
adapters, the same adapter twice, a LoRA loaded by ComfyUI's LoraLoaderModelOnly (before or
after), and another pack's attn2 replace patch on the same keys (kept as the text part)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import robust_nodes as rn  # noqa: I001  (sets up the host first)
from host import models_dir, run_prompt

pytestmark = pytest.mark.slow

SD15_KEYS = 16


@pytest.fixture(scope="module", autouse=True)
def setup(tmp_path_factory):
    """Test nodes registered; models/loras holds a small LoRA for the tiny SD1.5 UNet's attn2 K/V."""
    root = tmp_path_factory.mktemp("models")
    (root / "loras").mkdir()
    g = torch.Generator().manual_seed(5)
    state = {}
    for key, weight in rn.model("sd15").model.state_dict().items():
        if ".attn2.to_k.weight" in key or ".attn2.to_v.weight" in key:
            name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
            state[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 4, generator=g) * 0.3
            state[f"{name}.lora_down.weight"] = torch.randn(4, weight.shape[1], generator=g) * 0.3
    save_file(state, str(root / "loras" / "tiny-attn-lora.safetensors"))
    with models_dir(root, folders=("loras", "ipadapter")), rn.registered():
        yield


def _lora(g: dict, model_ref: list, name: str = "lora") -> list:
    g[name] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model_ref, "lora_name": "tiny-attn-lora.safetensors",
                                                               "strength_model": 1.0}}
    return [name, 0]


def _second_apply(g: dict, model_ref: list, adapter: str, weight: float, name: str = "apply2") -> list:
    g[f"{name}_adapter"] = {"class_type": "R_Adapter", "inputs": {"name": adapter, "fresh": False}}
    g[name] = {"class_type": "IPAK_Apply", "inputs": {**g["apply"]["inputs"], "model": model_ref,
                                                      "ipadapter": [f"{name}_adapter", 0], "weight": weight}}
    return [name, 0]


def _sampled(g: dict, model_ref: list) -> torch.Tensor:
    rn.add_sampler(g, model_ref, "sd15")
    g["info"]["inputs"]["model"] = model_ref
    result = run_prompt(g)
    return rn.stats(result)["tensor"], rn.info(result)


def test_two_different_adapters_stack_on_every_key():
    g = rn.apply_graph(weight=0.7)
    out, info = _sampled(g, _second_apply(g, ["apply", 0], "sd15-plus", 0.5))
    single, _ = _sampled(rn.apply_graph(weight=0.7), ["apply", 0])
    assert info["keys"] == SD15_KEYS and set(info["entries"].values()) == {2}
    assert torch.isfinite(out).all() and not torch.equal(out, single)


def test_the_same_adapter_twice_adds_up_like_one_with_the_summed_weight():
    """V-only scaling: text + 0.4 Attn(img) + 0.6 Attn(img) = text + 1.0 Attn(img)."""
    g = rn.apply_graph(weight=0.4)
    twice, info = _sampled(g, _second_apply(g, ["apply", 0], "sd15-linear", 0.6))
    once, _ = _sampled(rn.apply_graph(weight=1.0), ["apply", 0])
    nearby, _ = _sampled(rn.apply_graph(weight=0.9), ["apply", 0])
    assert set(info["entries"].values()) == {2}
    # equal up to float rounding (amplified by the random tiny UNet), far closer than a 10% weight change
    assert (twice - once).abs().max() < 0.02 * (nearby - once).abs().max()


def test_apply_after_a_lora_keeps_the_lora_and_adds_the_adapter():
    g = rn.apply_graph()
    g["apply"]["inputs"]["model"] = _lora(g, ["model", 0])
    both, info = _sampled(g, ["apply", 0])
    assert info["weight_patches"] > 0 and info["keys"] == SD15_KEYS
    adapter_only, _ = _sampled(rn.apply_graph(), ["apply", 0])
    g = rn.apply_graph(weight=0.0)
    g["apply"]["inputs"]["model"] = _lora(g, ["model", 0])
    lora_only, _ = _sampled(g, ["apply", 0])
    assert torch.isfinite(both).all()
    assert not torch.equal(both, adapter_only) and not torch.equal(both, lora_only)
    # the LoRA after the adapter gives the same model: weight patches and attn2 patches are independent
    g = rn.apply_graph()
    after, info_after = _sampled(g, _lora(g, ["apply", 0], "lora_after"))
    assert info_after["keys"] == SD15_KEYS and info_after["weight_patches"] == info["weight_patches"]
    torch.testing.assert_close(after, both, atol=1e-5, rtol=1e-5)


def test_another_packs_attn2_patch_is_kept_as_the_text_part():
    """The foreign patch computes plain attention (and counts its calls): with the adapter on top
    it still runs on its keys, and the result equals the adapter alone, exactly."""
    rn.FOREIGN_CALLS.clear()
    g = rn.apply_graph()
    g["foreign"] = {"class_type": "R_ForeignPatch", "inputs": {"model": ["model", 0]}}
    g["apply"]["inputs"]["model"] = ["foreign", 0]
    composed, info = _sampled(g, ["apply", 0])
    assert len(info["inner"]) == 2 and info["keys"] == SD15_KEYS
    assert rn.FOREIGN_CALLS, "the other pack's patch was dropped"
    adapter_only, _ = _sampled(rn.apply_graph(), ["apply", 0])
    assert torch.equal(composed, adapter_only)
