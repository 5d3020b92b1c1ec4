"""Under torch.compile (ComfyUI's TorchCompileModel) the attn2 patch runs uncompiled between the
compiled parts of the UNet and gives the same result as without compile: Dynamo must not trace
its caches (tracing them crashed on a masked, scheduled adapter)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import tiny  # noqa: I001  (sets up the host first)
from ipadapter_kit.nodes.apply import Apply

set_torch_compile_wrapper = pytest.importorskip("comfy_api.torch_helpers").set_torch_compile_wrapper  # not in older ComfyUI


def test_torch_compile_model_samples_like_the_uncompiled_model(monkeypatch):
    """ComfyUI's compile wrapper (what TorchCompileModel installs) on a UNet with two adapters,
    one masked, both ending at 0.6; with the SDPA attention ComfyUI uses on a GPU (Dynamo
    then traces the whole UNet in one frame)."""
    import comfy.ldm.modules.attention as comfy_attention

    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_pytorch)
    monkeypatch.setattr(comfy_attention, "optimized_attention_masked", comfy_attention.attention_pytorch)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)  # the eager fallback comes sooner: a shorter test
    model = tiny.tiny_model("sd15")
    clip = tiny.tiny_clip_vision()
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1.0
    patched = model
    for seed, m in ((0, mask), (1, None)):
        handle = tiny.tiny_adapter(tiny.tiny_spec(model), seed=seed)
        image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(5 + seed))
        patched = Apply.run(patched, handle, image, clip_vision=clip, weight=0.8, weight_type="linear", combine_embeds="concat",
                            start_at=0.0, end_at=0.6, embeds_scaling="V only", attn_mask=m)[0]

    eager = tiny.sample(patched)
    compiled = patched.clone()
    set_torch_compile_wrapper(compiled, backend="eager")
    torch._dynamo.reset()
    try:
        out = tiny.sample(compiled)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    assert not torch.equal(eager, tiny.sample(model))  # the adapters do act
