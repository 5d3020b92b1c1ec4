"""FaceID nodes on small SD1.5/SDXL-layout UNets, with the stub face analyser (no insightface).

Every variant loads, applies and samples; frames without a face never fail the batch (and
are sampled exactly as without the adapter under unfold); the LoRA inside the file reaches
the right UNet weights through ComfyUI's patch mechanism, a separate kohya-style LoRA file
gives the same weights, and strength 0 changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch

import tiny  # noqa: I001  (host first)
import comfy.lora
import comfy.sample
import comfy.utils
from faceid_tiny import KINDS, faceid_adapter
from host import models_dir
from ipadapter_kit.ip_adapter_core.errors import InvalidInputError, OptionalDependencyError
from ipadapter_kit.ip_adapter_core.faceid import FaceIDVersion, comfy_lora_targets, lora_delta
from ipadapter_kit.ip_adapter_core.spec import ProjectionKind
from ipadapter_kit.ip_adapter_core.testing.faces import StubFaceAnalyzer, face_image
from ipadapter_kit.nodes import faceid, faceid_lora, host, insightface_backend
from ipadapter_kit.nodes.adapter_store import IPAdapterHandle

STEPS = 1
_MODELS: dict = {}
_CLIP: list = []


def model_for(arch):
    if arch not in _MODELS:
        _MODELS[arch] = tiny.tiny_model(arch)
    return _MODELS[arch]


def clip():
    if not _CLIP:
        _CLIP.append(tiny.tiny_clip_vision())
    return _CLIP[0]


def faces(n=1, blank=(), size=96, seed=0):
    """A batch of n pictures with one face each, except the frames in `blank`."""
    frames = []
    for i in range(n):
        boxes = [] if i in blank else [(12 + i, 14, 80 - i, 88)]
        frames.append(face_image(size, size, boxes, seed=seed + i))
    return torch.cat(frames)


_PLAIN: dict = {}


def plain_sample(arch, batch=1):
    """The unpatched tiny model's sample (cached: the tiny models never change)."""
    if (arch, batch) not in _PLAIN:
        _PLAIN[(arch, batch)] = sample(arch, model_for(arch), batch)
    return _PLAIN[(arch, batch)]


def sample(arch, model, batch=1, seed=0):
    return tiny.sample(model, arch, STEPS, batch, seed)


def apply(model, handle, image=None, **kw):
    args = dict(
        weight=1.0, weight_faceidv2=1.0, faceid_version=FaceIDVersion.AUTO.value, weight_type="linear",
        combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only", lora_strength=0.0,
        insightface=StubFaceAnalyzer(), clip_vision=clip() if handle.spec.clip_output else None,
    )
    args.update(kw)
    return faceid.ApplyFaceID.run(model, handle, image=image, **args)


def attn2(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


VARIANTS = [
    ("sd15", "faceid"), ("sd15", "plus"), ("sd15", "portrait"),
    ("sdxl", "faceid"), ("sdxl", "plus"), ("sdxl", "portrait"), ("sdxl", "unnorm"),
]


@pytest.mark.parametrize("arch, kind", VARIANTS, ids=[f"{a}-{k}" for a, k in VARIANTS])
def test_every_variant_applies_and_samples(arch, kind):
    model = model_for(arch)
    handle = faceid_adapter(model, KINDS[kind], seed=1)
    patched, crops = apply(model, handle, faces(2), lora_strength=1.0)
    size = 224 if arch == "sd15" else 256
    assert crops.shape == (2, size, size, 3)
    assert len(attn2(patched)) == len(host.cross_attention_layers(model))
    entry = next(iter(attn2(patched).values())).entries[0]
    tokens = handle.spec.tokens * 2  # concat: both faces' tokens
    assert entry.prompt.cond[0][0].shape[:2] == (1, tokens)
    assert entry.prompt.uncond[0][0].shape[:2] == (1, tokens)
    out = sample(arch, patched)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, plain_sample(arch))
    lora_patched = bool(patched.patches)
    assert lora_patched == (kind in ("faceid", "plus"))


def test_plus_v1_and_v2_differ_and_v2_scale_matters():
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_PLUS, seed=3, name="some-face-model.bin")
    img = faces(1)
    k = lambda m: next(iter(attn2(m).values())).entries[0].prompt.cond[0][0]  # noqa: E731
    v1 = k(apply(model, handle, img, faceid_version=FaceIDVersion.V1.value)[0])
    v2 = k(apply(model, handle, img, faceid_version=FaceIDVersion.V2.value)[0])
    v2b = k(apply(model, handle, img, faceid_version=FaceIDVersion.V2.value, weight_faceidv2=2.0)[0])
    auto = k(apply(model, handle, img)[0])  # no preset, no telling name: v2
    assert not torch.allclose(v1, v2) and not torch.allclose(v2, v2b)
    torch.testing.assert_close(auto, v2)
    preset_v1 = IPAdapterHandle(handle.adapter, extras={"faceid_v2": False})
    torch.testing.assert_close(k(apply(model, preset_v1, img)[0]), v1)
    assert faceid.resolve_v2(IPAdapterHandle(faceid_adapter(model, ProjectionKind.FACEID_PLUS, name="ip-adapter-faceid-plus_sd15.bin").adapter), FaceIDVersion.AUTO) is False


def test_portrait_concatenates_the_faces_of_several_pictures():
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.PORTRAIT, seed=4)
    one = apply(model, handle, faces(1))[0]
    three = apply(model, handle, faces(3))[0]
    k1 = next(iter(attn2(one).values())).entries[0].prompt.cond[0][0]
    k3 = next(iter(attn2(three).values())).entries[0].prompt.cond[0][0]
    assert k1.shape[1] == 16 and k3.shape[1] == 48
    torch.testing.assert_close(k3[:, :16], k1)


# --- frames without a face --------------------------------------------------------------------


def test_faceless_frame_in_unfold_batch_is_sampled_exactly_without_the_adapter(caplog):
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=5)
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        patched, crops = apply(model, handle, faces(3, blank=(1,)), unfold_batch=True)
    assert "frame(s) 1 (no face) of a batch of 3" in caplog.text
    assert crops.shape[0] == 2
    plain = plain_sample("sd15", batch=3)
    out = sample("sd15", patched, batch=3)
    assert torch.equal(out[1], plain[1])
    assert not torch.equal(out[0], plain[0]) and not torch.equal(out[2], plain[2])


def test_faceless_reference_is_left_out_when_combining(caplog):
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=6)
    img = faces(3, blank=(0,))
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        with_blank = apply(model, handle, img, combine_embeds="average")[0]
    assert "frame(s) 0 (no face)" in caplog.text and "left out" in caplog.text
    without = apply(model, handle, img[1:], combine_embeds="average")[0]
    a = next(iter(attn2(with_blank).values())).entries[0].prompt
    b = next(iter(attn2(without).values())).entries[0].prompt
    torch.testing.assert_close(a.cond[3][0], b.cond[3][0])
    torch.testing.assert_close(a.uncond[3][1], b.uncond[3][1])


def test_no_face_at_all_leaves_the_model_unpatched(caplog):
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=6)
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        patched, crops = apply(model, handle, faces(2, blank=(0, 1)))
    assert "no face was found at all" in caplog.text
    assert attn2(patched) == {} and crops.shape[0] == 1
    assert torch.equal(sample("sd15", patched), plain_sample("sd15"))


def test_fail_policy_names_the_frame():
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=6)
    with pytest.raises(InvalidInputError, match=r"frame\(s\) 2 \(no face\) of a batch of 3"):
        apply(model, handle, faces(3, blank=(2,)), no_face=faceid.NoFacePolicy.FAIL.value)


def test_face_analysis_node_then_apply_equals_apply_from_images():
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_PLUS, seed=7)
    img = faces(3, blank=(1,))
    pos, neg, crops = faceid.FaceAnalysis.run(handle, img, insightface=StubFaceAnalyzer(), clip_vision=clip())
    assert pos.count == 2 and pos.frames == (0, 2) and pos.total == 3 and crops.shape == (2, 224, 224, 3)
    assert neg.clip_features.shape == pos.clip_features[:1].shape
    direct = apply(model, handle, img, unfold_batch=True)[0]
    via = apply(model, handle, None, face_embeds=pos, neg_embeds=neg, unfold_batch=True)[0]
    pa = next(iter(attn2(direct).values())).entries[0].prompt
    pb = next(iter(attn2(via).values())).entries[0].prompt
    torch.testing.assert_close(pa.cond[0][0], pb.cond[0][0])
    assert pa.frame_weights.tolist() == pb.frame_weights.tolist() == [1.0, 0.0, 1.0]


def test_non_faceid_adapter_is_refused_with_a_pointer():
    model = model_for("sd15")
    plain = tiny.tiny_adapter(tiny.tiny_spec(model))
    with pytest.raises(Exception, match="IPAdapter Apply"):
        apply(model, plain, faces(1))


# --- LoRA ----------------------------------------------------------------------------------------


def _expected_weights(model, handle, strength):
    """W + strength * up @ down for every target weight, computed from the file's tensors."""
    layers = host.cross_attention_layers(model)
    targets = comfy_lora_targets([layer.module_path for layer in layers])
    sd = model.model.state_dict()
    return {key: sd[key].float() + strength * lora_delta(handle.adapter.model.lora, stem) for stem, key in targets.items()}


def test_in_file_lora_reaches_every_attention_weight_at_its_strength():
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=8)
    patched = faceid_lora.apply_faceid_lora(model, handle, 0.7)
    want = _expected_weights(model, handle, 0.7)
    assert set(patched.patches) == set(want)
    sd = model.model.state_dict()
    for key, w in want.items():
        got = comfy.lora.calculate_weight(patched.patches[key], sd[key].clone().float(), key)
        torch.testing.assert_close(got, w, atol=1e-5, rtol=1e-5)
    assert model.patches == {}  # the input model is untouched


def test_lora_changes_the_unet_and_strength_zero_does_not():
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=9)
    img = faces(1)
    off = apply(model, handle, img, weight=0.0, lora_strength=0.0)[0]
    on = apply(model, handle, img, weight=0.0, lora_strength=1.0)[0]
    plain = plain_sample("sd15")
    assert off.patches == {}
    assert torch.equal(sample("sd15", off), plain)
    assert not torch.equal(sample("sd15", on), plain)
    assert faceid_lora.apply_faceid_lora(model, handle, 0.0) is model
    assert faceid_lora.apply_faceid_lora(model, handle, 1.0, faceid_lora.NO_LORA) is model


def test_lora_is_not_applied_twice():
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=10)
    once = faceid_lora.apply_faceid_lora(model, handle, 0.6)
    twice = faceid_lora.apply_faceid_lora(once, handle, 0.6)
    assert twice is once
    patched = apply(once, handle, faces(1), lora_strength=0.6)[0]  # e.g. unified loader, then apply
    assert all(len(v) == 1 for v in patched.patches.values())


def _kohya_lora(model, handle) -> dict:
    """The in-file LoRA re-keyed the way the published *_lora.safetensors files are said to be
    (lora_unet_<diffusers module path with _>.lora_down/up.weight)."""
    unet_config = model.model.model_config.unet_config
    to_diffusers = {v: k for k, v in comfy.utils.unet_to_diffusers(unet_config).items()}
    layers = host.cross_attention_layers(model)
    out = {}
    for stem, key in comfy_lora_targets([layer.module_path for layer in layers]).items():
        diffusers = to_diffusers[key[len("diffusion_model."):]]
        name = "lora_unet_" + diffusers[: -len(".weight")].replace(".", "_")
        out[f"{name}.lora_down.weight"] = handle.adapter.model.lora[f"{stem}_lora.down.weight"].contiguous()
        out[f"{name}.lora_up.weight"] = handle.adapter.model.lora[f"{stem}_lora.up.weight"].contiguous()
    return out


def test_separate_lora_file_gives_the_same_weights_as_the_in_file_lora(tmp_path):
    from safetensors.torch import save_file

    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=11)
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    save_file(_kohya_lora(model, handle), str(lora_dir / "ip-adapter-faceid_sd15_lora.safetensors"))
    with models_dir(tmp_path, folders=("loras",)):
        assert "ip-adapter-faceid_sd15_lora.safetensors" in faceid_lora.lora_choices()
        from_file = faceid_lora.apply_faceid_lora(model, handle, 0.8, "ip-adapter-faceid_sd15_lora.safetensors")
        # an adapter without its LoRA finds the companion file by name
        bare = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=11, lora_rank=0, name="ip-adapter-faceid_sd15.bin")
        companion = faceid_lora.apply_faceid_lora(model, bare, 0.8)
    in_file = faceid_lora.apply_faceid_lora(model, handle, 0.8)
    assert set(from_file.patches) == set(in_file.patches) == set(companion.patches)
    sd = model.model.state_dict()
    for key in in_file.patches:
        a = comfy.lora.calculate_weight(in_file.patches[key], sd[key].clone().float(), key)
        b = comfy.lora.calculate_weight(from_file.patches[key], sd[key].clone().float(), key)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_wrong_lora_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "loras").mkdir()
    save_file({"lora_te_text_model_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "loras" / "other.safetensors"))
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=11)
    with models_dir(tmp_path, folders=("loras",)):
        with pytest.raises(InvalidInputError, match="no weights for this model"):
            faceid_lora.apply_faceid_lora(model, handle, 1.0, "other.safetensors")


# --- unified loader ----------------------------------------------------------------------------


def test_unified_loader_picks_by_content_and_applies_the_lora(monkeypatch):
    model = model_for("sd15")
    handles = {
        "my-face.bin": faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=12, name="my-face.bin"),
        "x-plusv2.bin": faceid_adapter(model, ProjectionKind.FACEID_PLUS, seed=13, name="x-plusv2.bin"),
        "y-plus.bin": faceid_adapter(model, ProjectionKind.FACEID_PLUS, seed=13, name="y-plus.bin"),
        "portrait.bin": faceid_adapter(model, ProjectionKind.PORTRAIT, seed=14, name="portrait.bin"),
    }
    monkeypatch.setattr(faceid.model_files, "installed_adapters", lambda: [(n, h.spec) for n, h in handles.items()])
    monkeypatch.setattr(faceid.paths, "adapter_path", lambda name: name)
    monkeypatch.setattr(faceid, "load_adapter", lambda path: handles[path].adapter)
    monkeypatch.setattr(faceid.model_files, "find_clip_vision", lambda enc: "tiny-clip")
    monkeypatch.setattr(faceid.model_files, "load_clip_vision", lambda name: clip())
    stub = StubFaceAnalyzer()
    run = lambda preset, s=0.6: faceid.UnifiedLoaderFaceID.run(model, preset, s, insightface=stub)  # noqa: E731

    m, h = run("FACEID")
    assert h.adapter is handles["my-face.bin"].adapter and m.patches and h.clip_vision is None
    assert h.insightface is stub
    m, h = run("FACEID PLUS V2")
    assert h.adapter.name == "x-plusv2.bin" and h.extras["faceid_v2"] is True and h.clip_vision is not None
    m, h = run("FACEID PLUS (v1, SD1.5)")
    assert h.adapter.name == "y-plus.bin" and h.extras["faceid_v2"] is False
    m, h = run("PORTRAIT")
    assert h.adapter.name == "portrait.bin" and m is model  # no LoRA for portrait
    with pytest.raises(Exception, match="ip-adapter-faceid-portrait_sdxl_unnorm.bin|SD1.5"):
        run("PORTRAIT UNNORM (SDXL)")
    # unified loader then apply: the LoRA stays applied once, the handle's analyser is used
    m, h = run("FACEID PLUS V2")
    patched, _ = faceid.ApplyFaceID.run(
        m, h, 1.0, 1.0, "auto", "linear", "concat", 0.0, 1.0, "V only", 0.6, image=faces(1),
    )
    assert all(len(v) == 1 for v in patched.patches.values()) and attn2(patched)
    assert torch.isfinite(sample("sd15", patched)).all()


# --- without insightface -------------------------------------------------------------------------


@pytest.fixture
def no_insightface(monkeypatch):
    for mod in ("insightface", "insightface.app", "onnxruntime"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import x` raises ImportError
    insightface_backend.clear_cache()
    yield
    insightface_backend.clear_cache()


def test_insightface_loader_without_the_package_says_how_to_install(no_insightface):
    with pytest.raises(OptionalDependencyError) as err:
        faceid.InsightFaceLoader.run("buffalo_l", "auto")
    msg = str(err.value)
    assert "pip install insightface onnxruntime" in msg and 'pip install ".[faceid]"' in msg
    assert not insightface_backend.available()


def test_faceid_nodes_without_an_analyser_say_how_to_install(no_insightface):
    model = model_for("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP)
    with pytest.raises(OptionalDependencyError, match="pip install insightface onnxruntime"):
        apply(model, handle, faces(1), insightface=None)
    with pytest.raises(OptionalDependencyError, match="pip install insightface onnxruntime"):
        faceid.FaceAnalysis.run(handle, faces(1))
    with pytest.raises(OptionalDependencyError, match="pip install insightface onnxruntime"):
        faceid.UnifiedLoaderFaceID.run(model, "FACEID", 0.6)
    # precomputed embeddings need no analyser
    pos, neg, _ = faceid.FaceAnalysis.run(handle, faces(1), insightface=StubFaceAnalyzer())
    patched, _ = faceid.ApplyFaceID.run(model, handle, 1.0, 1.0, "auto", "linear", "concat", 0.0, 1.0, "V only", 0.0, face_embeds=pos)
    assert attn2(patched)


def test_provider_resolution():
    cpu = "CPUExecutionProvider"
    assert insightface_backend.resolve_provider("auto", [cpu]) == [cpu]
    assert insightface_backend.resolve_provider("auto", ["CUDAExecutionProvider", cpu]) == ["CUDAExecutionProvider", cpu]
    assert insightface_backend.resolve_provider("DmlExecutionProvider", ["DmlExecutionProvider", cpu]) == ["DmlExecutionProvider", cpu]
    assert insightface_backend.resolve_provider("CUDAExecutionProvider", [cpu]) == [cpu]
    with pytest.raises(InvalidInputError):
        insightface_backend.resolve_provider("DirectMLExecutionProvider", [cpu])


def test_missing_model_pack_names_the_folder(tmp_path):
    with models_dir(tmp_path, folders=("insightface",)):
        with pytest.raises(Exception, match=r"models/insightface/models/buffalo_l"):
            insightface_backend.find_model_dir("buffalo_l")
        pack = tmp_path / "insightface" / "models" / "buffalo_l"
        pack.mkdir(parents=True)
        (pack / "det_10g.onnx").write_bytes(b"x")
        assert insightface_backend.find_model_dir("buffalo_l") == str(pack)
        assert "buffalo_l" in faceid._model_name_options()
    assert os.path.isdir(pack)


def test_raw_faceanalysis_from_another_pack_is_accepted():
    class FaceAnalysisLike:
        def __init__(self):
            self.stub = StubFaceAnalyzer()
            self.det_model = object()

        def prepare(self, ctx_id=0, det_size=(640, 640)):
            pass

        def get(self, bgr):
            return self.stub.detect(bgr[..., ::-1])

    a = insightface_backend.as_analyzer(FaceAnalysisLike())
    assert len(a.detect(faces(1)[0])) == 1
