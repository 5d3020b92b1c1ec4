"""The real insightface path (FaceAnalysis -> onnxruntime -> SCRFD decoding -> ArcFace) on a
synthetic model pack built here with `onnx`. Skipped when insightface is not installed (the
default test environment: it is an optional dependency).

The synthetic pack mimics buffalo_l's interface, not its weights: the detector (9 outputs,
strides 8/16/32, 2 anchors, 5 landmarks, as SCRFD-10G) finds the bounding box of the bright
pixels and reports it at the anchor nearest its centre, with the ArcFace template as
landmarks; the recogniser (112x112 input) is a fixed linear map of a 7x7 thumbnail.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

insightface = pytest.importorskip("insightface")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tiny  # noqa: E402,I001  (host first)
from faceid_tiny import faceid_adapter  # noqa: E402
from host import models_dir  # noqa: E402
from ipadapter_kit.ip_adapter_core.face import ARCFACE_TEMPLATE, analyse_frames  # noqa: E402
from ipadapter_kit.ip_adapter_core.spec import ProjectionKind  # noqa: E402
from ipadapter_kit.ip_adapter_core.testing.faces import face_image  # noqa: E402
from ipadapter_kit.nodes import faceid, insightface_backend  # noqa: E402

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSET = 13


def _const(name, value, dtype=np.float32):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def detector_model() -> onnx.ModelProto:
    n = []
    n += [helper.make_node("ReduceMean", ["input.1"], ["lum"], axes=[1], keepdims=1)]
    n += [_const("zero", 0.0), helper.make_node("Greater", ["lum", "zero"], ["mask_b"]),
          helper.make_node("Cast", ["mask_b"], ["mask"], to=TensorProto.FLOAT)]
    n += [helper.make_node("ReduceMax", ["mask"], ["col"], axes=[2], keepdims=0),  # [1,1,W]
          helper.make_node("ReduceMax", ["mask"], ["row"], axes=[3], keepdims=0),  # [1,1,H]
          helper.make_node("ReduceMax", ["mask"], ["has"], axes=[1, 2, 3], keepdims=0)]  # [1]
    for name, src, last in (("x1", "col", 0), ("x2", "col", 1), ("y1", "row", 0), ("y2", "row", 1)):
        n += [helper.make_node("ArgMax", [src], [name + "_i"], axis=2, keepdims=0, select_last_index=last),
              helper.make_node("Cast", [name + "_i"], [name + "_f"], to=TensorProto.FLOAT),
              helper.make_node("Reshape", [name + "_f", "scalar_shape"], [name])]
    n.insert(0, _const("scalar_shape", [1], np.int64))
    n += [_const("one", 1.0), _const("half", 0.5),
          helper.make_node("Add", ["x2", "one"], ["x2e"]), helper.make_node("Add", ["y2", "one"], ["y2e"]),
          helper.make_node("Sub", ["x2e", "x1"], ["bw"]), helper.make_node("Sub", ["y2e", "y1"], ["bh"]),
          helper.make_node("Add", ["x1", "x2e"], ["cx2"]), helper.make_node("Mul", ["cx2", "half"], ["cx"]),
          helper.make_node("Add", ["y1", "y2e"], ["cy2"]), helper.make_node("Mul", ["cy2", "half"], ["cy"])]
    for k, (tx, ty) in enumerate(ARCFACE_TEMPLATE / 112.0):
        n += [_const(f"tx{k}", tx), _const(f"ty{k}", ty),
              helper.make_node("Mul", ["bw", f"tx{k}"], [f"kxo{k}"]), helper.make_node("Add", ["x1", f"kxo{k}"], [f"kx{k}"]),
              helper.make_node("Mul", ["bh", f"ty{k}"], [f"kyo{k}"]), helper.make_node("Add", ["y1", f"kyo{k}"], [f"ky{k}"])]
    outputs = {"score": [], "bbox": [], "kps": []}
    n += [_const("ax2", 2, np.int64), _const("ax3", 3, np.int64)]
    for s in (8, 16, 32):
        p = f"s{s}_"
        n += [helper.make_node("AveragePool", ["lum"], [p + "pool"], kernel_shape=[s, s], strides=[s, s]),
              helper.make_node("Mul", [p + "pool", "zero"], [p + "z"]), helper.make_node("Add", [p + "z", "one"], [p + "ones"]),
              helper.make_node("CumSum", [p + "ones", "ax3"], [p + "cx"]), helper.make_node("CumSum", [p + "ones", "ax2"], [p + "cy"]),
              _const(p + "stride", float(s)), _const(p + "inv", 1.0 / s),
              helper.make_node("Sub", [p + "cx", "one"], [p + "cx0"]), helper.make_node("Mul", [p + "cx0", p + "stride"], [p + "ax"]),
              helper.make_node("Sub", [p + "cy", "one"], [p + "cy0"]), helper.make_node("Mul", [p + "cy0", p + "stride"], [p + "ay"])]
        # score: gaussian of the anchor's distance to the box centre (sigma = stride), 0 without bright pixels
        n += [helper.make_node("Sub", [p + "ax", "cx"], [p + "dx"]), helper.make_node("Sub", [p + "ay", "cy"], [p + "dy"]),
              helper.make_node("Mul", [p + "dx", p + "dx"], [p + "dx2"]), helper.make_node("Mul", [p + "dy", p + "dy"], [p + "dy2"]),
              helper.make_node("Add", [p + "dx2", p + "dy2"], [p + "d2"]), _const(p + "k", -0.5 / (s * s)),
              helper.make_node("Mul", [p + "d2", p + "k"], [p + "e"]), helper.make_node("Exp", [p + "e"], [p + "g"]),
              helper.make_node("Mul", [p + "g", "has"], [p + "score1"])]
        maps = {
            "score": [p + "score1"],
            "bbox": [],
            "kps": [],
        }
        for name, a, b in (("l", p + "ax", "x1"), ("t", p + "ay", "y1"), ("r", "x2e", p + "ax"), ("b", "y2e", p + "ay")):
            n += [helper.make_node("Sub", [a, b], [p + name + "d"]), helper.make_node("Mul", [p + name + "d", p + "inv"], [p + name])]
            maps["bbox"].append(p + name)
        for k in range(5):
            for axis, anchor in (("x", p + "ax"), ("y", p + "ay")):
                src = f"k{axis}{k}"
                n += [helper.make_node("Sub", [src, anchor], [f"{p}{src}d"]), helper.make_node("Mul", [f"{p}{src}d", p + "inv"], [f"{p}{src}o"])]
                maps["kps"].append(f"{p}{src}o")
        for kind, chans in maps.items():
            width = len(chans)
            n += [helper.make_node("Concat", chans, [p + kind + "_c"], axis=1),  # [1, C, h, w]
                  helper.make_node("Transpose", [p + kind + "_c"], [p + kind + "_t"], perm=[0, 2, 3, 1]),  # [1, h, w, C]
                  helper.make_node("Unsqueeze", [p + kind + "_t", "ax3"], [p + kind + "_u"]),  # [1, h, w, 1, C]
                  helper.make_node("Concat", [p + kind + "_u", p + kind + "_u"], [p + kind + "_a"], axis=3),  # 2 anchors
                  _const(p + kind + "_shape", [-1, width], np.int64),
                  helper.make_node("Reshape", [p + kind + "_a", p + kind + "_shape"], [f"{kind}_{s}"])]
            outputs[kind].append(f"{kind}_{s}")
    names = outputs["score"] + outputs["bbox"] + outputs["kps"]
    widths = {"score": 1, "bbox": 4, "kps": 10}
    graph = helper.make_graph(
        n, "synthetic_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", widths[o.split("_")[0]]]) for o in names],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def recognizer_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (147, 512)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pool"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        _const("w", w), helper.make_node("MatMul", ["flat", "w"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes, "synthetic_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface-root")
    pack = root / "insightface" / "models" / "synthetic"
    pack.mkdir(parents=True)
    onnx.save(detector_model(), str(pack / "det_synthetic.onnx"))
    onnx.save(recognizer_model(), str(pack / "w_synthetic.onnx"))
    return root


@pytest.fixture
def analyzer(pack_root):
    insightface_backend.clear_cache()
    with models_dir(pack_root, folders=("insightface",)):
        a = insightface_backend.load_analyzer("synthetic", "CPUExecutionProvider")
        assert insightface_backend.load_analyzer("synthetic", "CPUExecutionProvider") is a  # cached across prompts
        yield a
    insightface_backend.clear_cache()


def test_real_analyser_finds_the_face_and_its_landmarks(analyzer):
    assert analyzer.providers == ["CPUExecutionProvider"]
    img = face_image(128, 160, [(40, 20, 120, 110)], seed=1)[0]
    faces = analyzer.detect(img)
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.bbox, [40, 20, 120, 110], atol=2.0)
    want_kps = np.stack([40 + ARCFACE_TEMPLATE[:, 0] / 112 * 80, 20 + ARCFACE_TEMPLATE[:, 1] / 112 * 90], -1)
    np.testing.assert_allclose(face.kps, want_kps, atol=2.0)
    assert face.embedding.shape == (512,) and np.isfinite(face.embedding).all()
    assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0, rel=1e-5)
    assert analyzer.detect(face_image(128, 128, [])[0]) == []
    # the raw FaceAnalysis API stays reachable for other packs
    assert callable(analyzer.get) and "recognition" in analyzer.models


def test_real_analyser_through_the_faceid_node(analyzer, caplog):
    model = tiny.tiny_model("sd15")
    handle = faceid_adapter(model, ProjectionKind.FACEID_MLP, seed=1)
    frames = torch.cat([face_image(128, 128, [(20, 16, 108, 120)], seed=2), face_image(128, 128, [])])
    batch = analyse_frames(analyzer, frames, 224)
    assert batch.found == [True, False]
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        patched, crops = faceid.ApplyFaceID.run(
            model, handle, 1.0, 1.0, "auto", "linear", "concat", 0.0, 1.0, "V only", 0.0,
            image=frames, insightface=analyzer, unfold_batch=True,
        )
    assert "frame(s) 1 (no face) of a batch of 2" in caplog.text
    assert crops.shape == (1, 224, 224, 3)
    prompt = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())).entries[0].prompt
    assert prompt.frame_weights.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("size", [224, 256, 336])
def test_alignment_matches_insightface_norm_crop(size):
    """Our torch alignment against insightface's own face_align.norm_crop (skimage + cv2)."""
    from insightface.utils import face_align

    from ipadapter_kit.ip_adapter_core.face import align_face

    rng = np.random.default_rng(size)
    img = (rng.random((300, 280, 3)) * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(np.repeat(img[::4, ::4], 4, 0), 4, 1)[:300, :280])  # blocky: bilinear-friendly
    c, s = np.cos(0.25), np.sin(0.25)
    kps = ARCFACE_TEMPLATE @ (1.7 * np.array([[c, s], [-s, c]])) + np.array([60.0, 40.0])
    ref = face_align.norm_crop(img, landmark=kps.astype(np.float32), image_size=size).astype(np.float32)
    ours = align_face(torch.from_numpy(img).float() / 255.0, kps, size).numpy() * 255.0
    diff = np.abs(ours - ref)
    assert diff.mean() < 0.3, diff.mean()  # measured 0.11: cv2's uint8 rounding
    assert diff.max() < 1.0, diff.max()
