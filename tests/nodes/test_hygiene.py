"""Model hygiene through ComfyUI's executor: applying never changes the input MODEL or other
clones; what ComfyUI's "free memory" does (`PromptExecutor.reset()` + `unload_all_models()` +
gc, the server's POST /free) releases every adapter, patch and K/V tensor; offloading drops the
K/V copies made for the compute device; the same prompt run 20 times does not grow memory.

Memory is measured by what the pack could leak: live tensors (count and bytes of distinct
storages, found by gc) and live pack objects (LoadedAdapter, PreparedPrompt, Attn2Patch), with
RSS as a loose backstop (glibc keeps freed pages, so only a large growth means anything)."""

from __future__ import annotations

import gc
import uuid
import weakref

import pytest
import torch

import robust_nodes as rn  # noqa: I001  (sets up the host first)
import comfy.model_management as mm
import execution
import host
from ipadapter_kit.ip_adapter_core.testing import write_adapter
from ipadapter_kit.nodes import adapter_store, patch


@pytest.fixture(scope="module", autouse=True)
def robust_nodes():
    with rn.registered():
        yield


class Executor:
    """One PromptExecutor kept across prompts, as the server keeps it (its cache included)."""

    def __init__(self):
        cache_type = getattr(getattr(execution, "CacheType", None), "CLASSIC", False)
        self.ex = execution.PromptExecutor(host._QuietServer(), cache_type=cache_type, cache_args={"lru": 0, "ram": 0})

    def run(self, prompt: dict) -> dict:
        outputs, _ = host.validate(prompt)
        self.ex.execute(prompt, str(uuid.uuid4()), {}, outputs)
        assert self.ex.success, [m for m in self.ex.status_messages if m[0] == "execution_error"]
        return self.ex.history_result

    def free(self) -> None:
        """What main.py does for POST /free {"unload_models": true, "free_memory": true}."""
        mm.unload_all_models()
        self.ex.reset()
        gc.collect()


PACK_TYPES = (adapter_store.LoadedAdapter, patch.PreparedPrompt, patch.Attn2Patch)
TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def live() -> dict:
    """Live tensors (count, bytes of distinct storages), pack objects and RSS, after a gc."""
    gc.collect()
    count, storages, objects = 0, {}, dict.fromkeys((t.__name__ for t in PACK_TYPES), 0)
    for obj in gc.get_objects():
        kind = type(obj)  # exact types: isinstance() on every object is slow and pokes lazy modules
        if kind in TENSOR_TYPES:
            if obj.device.type == "meta":
                continue
            count += 1
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif kind in PACK_TYPES:
            objects[kind.__name__] += 1
    with open("/proc/self/statm") as fh:
        rss = int(fh.read().split()[1]) * 4096
    return {"tensors": count, "bytes": sum(storages.values()), "rss": rss, **objects}


def _canon(x):
    if isinstance(x, dict):
        return tuple(sorted((repr(k), _canon(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return type(x).__name__, tuple(_canon(v) for v in x)
    if isinstance(x, torch.Tensor):
        return "tensor", tuple(x.shape), float(x.double().sum())
    if isinstance(x, (int, float, str, bool, type(None))):
        return x
    return "object", id(x)  # patch objects, wrappers: the same objects, not equal copies


def fingerprint(model_patcher) -> dict:
    return {
        "options": _canon(model_patcher.model_options),
        "patches": _canon(model_patcher.patches),
        "object_patches": _canon(model_patcher.object_patches),
        "uuid": model_patcher.patches_uuid,
        "weights": {k: v.detach().clone() for k, v in model_patcher.model.state_dict().items()},
    }


def same(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "weights"} == {k: v for k, v in b.items() if k != "weights"} and all(
        torch.equal(v, b["weights"][k]) for k, v in a["weights"].items()
    )


def test_apply_never_changes_the_input_model_or_other_clones():
    """Two applies, a masked one and another pack's patch in one graph, then sampling: the
    cached input MODEL, a clone made before, and the first apply's output are as they were."""
    base = rn.model("sd15")
    sibling = base.clone()
    sibling.set_model_attn2_replace(rn.foreign_attn2, "output", 3, 0)
    before_base, before_sibling = fingerprint(base), fingerprint(sibling)
    g = rn.apply_graph(mask="left_half")
    g["foreign"] = {"class_type": "R_ForeignPatch", "inputs": {"model": ["model", 0]}}
    g["apply2"] = {"class_type": "IPAK_Apply", "inputs": {**g["apply"]["inputs"], "model": ["foreign", 0], "weight": 0.5}}
    g["apply3"] = {"class_type": "IPAK_Apply", "inputs": {**g["apply"]["inputs"], "model": ["apply2", 0], "weight": 0.3,
                                                          "weight_type": "style transfer"}}
    g["info2"] = {"class_type": "R_ModelInfo", "inputs": {"model": ["apply2", 0]}}
    rn.add_sampler(g, ["apply3", 0], "sd15")
    result = host.run_prompt(g)
    mm.unload_all_models()  # ComfyUI restores any weights it patched for sampling
    assert same(fingerprint(base), before_base)
    assert same(fingerprint(sibling), before_sibling)
    assert "attn2" not in base.model_options.get("transformer_options", {}).get("patches_replace", {})
    first, second = rn.info(result), rn.info(result, "info2")
    assert set(first["entries"].values()) == {1} and not first["inner"]  # untouched by apply2 / apply3
    assert set(second["entries"].values()) == {1} and len(second["inner"]) == 2


def test_adapter_loaded_once_and_released_by_free(tmp_path):
    """The real loader: one LoadedAdapter per file while a node output uses it (the cache is
    weak), shared by later prompts; after ComfyUI frees memory it is gone, tensors included."""
    write_adapter(tmp_path / "ipadapter", "ip-adapter_sd15.safetensors")
    with host.models_dir(tmp_path):
        ex = Executor()
        ex.free()
        baseline = live()
        ex.run(rn.loader_graph("ip-adapter_sd15.safetensors"))
        (loaded,) = [a for a in adapter_store.load_adapter.values() if a.name == "ip-adapter_sd15.safetensors"]
        ref = weakref.ref(loaded)
        held = live()
        assert held["LoadedAdapter"] == baseline["LoadedAdapter"] + 1
        assert held["bytes"] - baseline["bytes"] > 80e6  # 22 M fp32 parameters
        host.run_prompt(rn.loader_graph("ip-adapter_sd15.safetensors"))  # another executor: the same object
        assert [a for a in adapter_store.load_adapter.values() if a.name == "ip-adapter_sd15.safetensors"] == [loaded]
        del loaded
        ex.free()
        assert ref() is None, gc.get_referrers(ref())
        after = live()
        assert after["LoadedAdapter"] == baseline["LoadedAdapter"]
        assert after["bytes"] - baseline["bytes"] < 1e6
        assert not [a for a in adapter_store.load_adapter.values() if a.name == "ip-adapter_sd15.safetensors"]


def test_offload_drops_device_copies_and_free_releases_patches():
    """After sampling, ComfyUI's unload calls Attn2Patch.to(offload device): K/V copies made
    for another device go (a CUDA-keyed entry stands in for them on this CPU machine). Then
    /free leaves no patch, prompt or adapter of that prompt alive."""
    ex = Executor()
    ex.free()
    baseline = live()
    ex.run(rn.apply_graph(mask="left_half", sample=True, fresh=True))
    patches = [o for o in gc.get_objects() if type(o) is patch.Attn2Patch]
    assert len(patches) == 16
    fake = (torch.device("cuda", 0), torch.float16, "K/V placed for the GPU")
    prompts = [e.prompt for p in patches for e in p.entries]
    for prompt in prompts:
        prompt.cache._data[fake] = torch.zeros(4096)
    moved = []
    original = patch.Attn2Patch.to
    try:
        patch.Attn2Patch.to = lambda self, d: moved.append(d) or original(self, d)
        mm.unload_all_models()
    finally:
        patch.Attn2Patch.to = original
    assert len(moved) == 16 and {torch.device(d).type for d in moved} == {mm.unet_offload_device().type}
    assert all(fake not in prompt.cache._data for prompt in prompts)
    assert all(prompt.cache._data for prompt in prompts)  # the offload device's own copies stay
    del patches, prompts, prompt
    ex.free()
    after = live()
    for name in ("LoadedAdapter", "PreparedPrompt", "Attn2Patch"):
        assert after[name] == baseline[name], (name, after, baseline)


@pytest.mark.slow
def test_the_same_prompt_20_times_does_not_grow_memory():
    """Fresh executor per run (every node re-executes, a new adapter each time) on the same
    prompt: after the 5th run, live tensors and pack objects stay flat."""
    prompt = rn.apply_graph(mask="batch5", image="batch3", sample=True, fresh=True)
    samples = {}
    for run in range(1, 21):
        host.run_prompt(prompt)
        if run in (5, 10, 15, 20):
            samples[run] = live()
    first, last = samples[5], samples[20]
    print("memory after runs 5/10/15/20:", samples)
    assert last["bytes"] - first["bytes"] < 1e6, samples
    assert last["tensors"] - first["tensors"] <= 8, samples
    assert last["rss"] - first["rss"] < 48e6, samples
    assert last["LoadedAdapter"] == first["LoadedAdapter"]
    assert last["PreparedPrompt"] == first["PreparedPrompt"] == 0
    assert last["Attn2Patch"] == first["Attn2Patch"] == 0


@pytest.mark.slow
def test_a_server_like_executor_does_not_accumulate_patched_models():
    """One executor, the prompt re-run with the weight changed each time (apply and sampler
    re-execute, the cached outputs are replaced): what the previous run made is released."""
    ex = Executor()
    samples = {}
    for run in range(1, 11):
        ex.run(rn.apply_graph(sample=True, weight=0.5 + 0.05 * run, mask="odd"))
        if run in (5, 10):
            samples[run] = live()
    first, last = samples[5], samples[10]
    print("memory after runs 5/10:", samples)
    assert last["bytes"] - first["bytes"] < 1e6, samples
    assert last["tensors"] - first["tensors"] <= 8, samples
    assert last["PreparedPrompt"] == first["PreparedPrompt"] <= 1
    ex.free()
    assert live()["PreparedPrompt"] == 0
