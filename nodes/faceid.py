"""FaceID nodes: insightface loader, face analysis (crops + embeds), apply, unified loader.

Every FaceID variant funnels into `apply_core.apply_embeds` like the other adapters; this
module only turns pictures into face embeddings (and, for FaceID-Plus, CLIP features of the
aligned face crops), decides what happens to frames without a face, and puts the FaceID
LoRA on the model.

Frames without a usable face never fail the batch unless asked to: with unfold_batch each
latent frame gets its own reference, and a face-less frame gets weight 0 (its latent is
sampled exactly as without the adapter); otherwise the face-less references are left out of
the reference set. Either way a warning names the frames.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass

import torch


from ..ip_adapter_core.errors import EncoderMismatchError, InvalidInputError, MissingModelFileError
from ..ip_adapter_core.face import FaceBatch, FaceOrder, analyse_frames, crop_size
from ..ip_adapter_core.faceid import (
    DEFAULT_LORA_STRENGTH,
    DEFAULT_V2_SCALE,
    FACEID_RULES,
    FaceIDPreset,
    FaceIDVersion,
    faceid_suggested_file,
    faceid_supported,
    is_faceid,
    rank_faceid,
    uses_raw_embedding,
    v2_from_name,
)
from ..ip_adapter_core.spec import BaseModel, EncoderOutput, ImageEncoder, ProjectionKind
from . import host, insightface_backend, model_files, paths
from ._api import Input, NodeSpec, Output, PackNode
from .adapter_store import IPAdapterHandle, load_adapter
from .apply import COMBINE, EMBEDS, END, LAYER_WEIGHTS, MASK, SCALING, START, WEIGHT_TYPE
from .apply_core import ApplySettings, apply_embeds
from .apply_helpers import settings_for
from .encoding import CropMode, ImageEmbeds, check_clip_vision, encode_clip, validate_images, zero_pixel_features
from .faceid_lora import FROM_ADAPTER, apply_faceid_lora, lora_choices

log = logging.getLogger("ipadapter_kit")

INSIGHTFACE = "INSIGHTFACE"
IPADAPTER = "IPADAPTER"

insightface_backend.register_folder()


class NoFacePolicy(str, enum.Enum):
    SKIP = "skip frame (warn)"
    FAIL = "fail"


@dataclass(eq=False)
class FaceEmbeds(ImageEmbeds):
    """Face embeddings of the frames where a face was found (plus, for FaceID-Plus, the CLIP
    features of their aligned crops). `frames` are the source frame indices of the rows,
    `total` the number of frames analysed, `negative` the matching uncond embeds."""

    frames: tuple[int, ...] = ()
    total: int = 0
    negative: ImageEmbeds | None = None

    def __deepcopy__(self, memo):
        return self


# --- analysis ------------------------------------------------------------------------------


def _require_faceid(handle: IPAdapterHandle) -> None:
    if not is_faceid(handle.spec):
        raise EncoderMismatchError(
            f"'{handle.adapter.name}' is an {handle.spec.title}, which takes CLIP image features, not faces. "
            "Use IPAdapter Apply for it; the FaceID nodes are for the ip-adapter-faceid* files."
        )


def resolve_analyzer(insightface=None, handle: IPAdapterHandle | None = None):
    obj = insightface if insightface is not None else (handle.insightface if handle is not None else None)
    if obj is None:
        insightface_backend.import_insightface()  # the install message when the packages are missing
        raise InvalidInputError(
            "FaceID needs a face analyser: connect an IPAdapter InsightFace Loader to 'insightface', or use "
            "the IPAdapter Unified Loader FaceID, which supplies one."
        )
    return insightface_backend.as_analyzer(obj)


def _clip_for(handle: IPAdapterHandle, clip_vision):
    clip = clip_vision if clip_vision is not None else handle.clip_vision
    if clip is None:
        info = handle.spec.clip_encoder
        raise EncoderMismatchError(
            f"'{handle.adapter.name}' ({handle.spec.title}) also reads the aligned face crop with CLIP "
            f"{info.encoder.value}: connect a CLIPVisionLoader with '{info.file_name}' to clip_vision, or use "
            "the IPAdapter Unified Loader FaceID."
        )
    check_clip_vision(handle.spec, clip, handle.adapter.name)
    return clip


def default_negative(handle: IPAdapterHandle, clip_vision=None) -> ImageEmbeds:
    """The reference uncond: a zero identity embedding; for FaceID-Plus also the CLIP features of
    an all-zero (normalised) image."""
    zeros = torch.zeros(1, 512)
    if handle.spec.clip_output is None:
        return ImageEmbeds(EncoderOutput.FACE, zeros)
    clip = _clip_for(handle, clip_vision)
    return ImageEmbeds(EncoderOutput.FACE, zeros, zero_pixel_features(clip, EncoderOutput.PENULTIMATE))


def _report_missing(batch: FaceBatch, policy: NoFacePolicy, unfold: bool | None) -> None:
    if not batch.missing:
        return
    where = f"frame(s) {batch.describe_missing()} of a batch of {batch.frames} (counting from 0)"
    if policy is NoFacePolicy.FAIL:
        raise InvalidInputError(
            f"IPAdapter FaceID: no usable face in {where}. Set no_face to '{NoFacePolicy.SKIP.value}' to go on "
            "without them, or crop/upscale those frames so the face is larger."
        )
    if unfold is None:
        what = "they are skipped (with unfold_batch those frames are sampled without the face)"
    elif unfold:
        what = "those frames are sampled without the face (weight 0 there)"
    else:
        what = "those images are left out of the reference set"
    if not batch.present:
        what = "no face was found at all: the adapter is not applied"
    log.warning("IPAdapter FaceID: no usable face in %s; %s.", where, what)


def analyse_faces(
    handle: IPAdapterHandle,
    image: torch.Tensor,
    analyzer,
    clip_vision=None,
    order: FaceOrder = FaceOrder.SIZE,
    index: int = 0,
    policy: NoFacePolicy = NoFacePolicy.SKIP,
    unfold: bool | None = None,
) -> tuple[FaceEmbeds, FaceBatch]:
    """Detect, align and embed one face per frame; FaceID-Plus also encodes the crops with CLIP."""
    _require_faceid(handle)
    spec = handle.spec
    images = validate_images(image)
    batch = analyse_frames(analyzer, images, crop_size(spec.base), raw=uses_raw_embedding(spec), order=order, index=index)
    _report_missing(batch, policy, unfold)
    present = batch.present
    features = batch.embeds[present]
    clip_features = None
    negative = None
    if spec.clip_output is not None:
        clip = _clip_for(handle, clip_vision)
        if present:
            clip_features = encode_clip(clip, batch.crops[present], EncoderOutput.PENULTIMATE, CropMode.CENTER).float()
        else:
            clip_features = torch.zeros(0, 1, spec.clip_dim or 1)
        negative = default_negative(handle, clip)
    else:
        negative = default_negative(handle)
    embeds = FaceEmbeds(
        EncoderOutput.FACE, features, clip_features, frames=tuple(present), total=batch.frames, negative=negative
    )
    return embeds, batch


def crops_image(batch: FaceBatch) -> torch.Tensor:
    """The aligned crops of the frames with a face, as an IMAGE (one black crop if none)."""
    if batch.present:
        return batch.crops[batch.present].clone()
    return torch.zeros(1, *batch.crops.shape[1:])


def _unfolded(embeds: FaceEmbeds, negative: ImageEmbeds) -> tuple[ImageEmbeds, list[float] | None]:
    """One row per analysed frame (face-less frames get the uncond features) and the per-frame
    weights that switch the face-less frames off."""
    total = max(embeds.total, embeds.count)
    frames = list(embeds.frames) if embeds.frames else list(range(embeds.count))
    if len(frames) == total:
        return embeds, None
    feats = negative.features[:1].expand(total, -1).clone().to(embeds.features.dtype)
    feats[frames] = embeds.features
    clip = None
    if embeds.clip_features is not None:
        base = negative.clip_features[:1].to(embeds.clip_features.dtype)
        clip = base.expand(total, *base.shape[1:]).clone()
        clip[frames] = embeds.clip_features
    weights = [0.0] * total
    for f in frames:
        weights[f] = 1.0
    return ImageEmbeds(EncoderOutput.FACE, feats, clip), weights


def resolve_v2(handle: IPAdapterHandle, version: FaceIDVersion) -> bool:
    if handle.spec.kind is not ProjectionKind.FACEID_PLUS:
        return False
    if version is FaceIDVersion.V2:
        return True
    if version is FaceIDVersion.V1:
        return False
    preset = handle.extras.get("faceid_v2")
    if preset is not None:
        return bool(preset)
    by_name = v2_from_name(handle.adapter.name)
    if by_name is None:
        log.info(
            "IPAdapter FaceID: '%s' does not say whether it is FaceID-Plus v1 or v2 (the files are alike); "
            "using v2. Set faceid_version to choose.", handle.adapter.name,
        )
        return True
    return by_name


def apply_faceid(
    model,
    handle: IPAdapterHandle,
    embeds: FaceEmbeds | ImageEmbeds,
    negative: ImageEmbeds | None,
    settings: ApplySettings,
    clip_vision=None,
):
    """Patch a clone of `model` with face embeds; face-less frames handled as described above."""
    _require_faceid(handle)
    if embeds.output is not EncoderOutput.FACE:
        raise InvalidInputError(
            f"'{handle.adapter.name}' needs face embeddings (IPAdapter FaceID Face Analysis), but the embeds "
            f"hold {embeds.output.value}."
        )
    if negative is None:
        negative = getattr(embeds, "negative", None) or default_negative(handle, clip_vision)
    if embeds.count == 0:
        return model.clone()
    frame_weights = None
    if settings.unfold and isinstance(embeds, FaceEmbeds):
        embeds, frame_weights = _unfolded(embeds, negative)
    settings.frame_weights = frame_weights if frame_weights is not None else settings.frame_weights
    return apply_embeds(model, handle, embeds, negative, settings)


# --- shared inputs -------------------------------------------------------------------------------

FACE_ORDER = Input(
    "face_order", "COMBO", "When a picture shows several faces, how they are ranked for face_index.",
    optional=True, default=FaceOrder.SIZE.value, options=[o.value for o in FaceOrder],
)
FACE_INDEX = Input(
    "face_index", "INT", "Which face to use in each picture: 0 = the first in face_order (the largest by default).",
    optional=True, default=0, min=0, max=63, step=1,
)
NO_FACE = Input(
    "no_face", "COMBO",
    "A picture without a usable face: skip it with a warning (with unfold_batch that frame is sampled without the "
    "face; otherwise it is left out of the references), or fail the run.",
    optional=True, default=NoFacePolicy.SKIP.value, options=[p.value for p in NoFacePolicy],
)
INSIGHTFACE_IN = Input(
    "insightface", INSIGHTFACE, "Face analyser (IPAdapter InsightFace Loader); optional when the Unified Loader FaceID supplied one.",
    optional=True,
)
CLIP_IN = Input(
    "clip_vision", "CLIP_VISION", "CLIP ViT-H, needed by FaceID-Plus to read the aligned face crop; optional when the Unified Loader FaceID supplied it.",
    optional=True,
)
LORA_STRENGTH = Input(
    "lora_strength", "FLOAT",
    "Strength of the FaceID LoRA on the UNet (FaceID and FaceID-Plus were trained with it; portrait models have none). "
    "0 = off. A LoRA a FaceID node already applied to this model is not applied twice; if you load it yourself with a "
    "LoRA loader, set 0 here.",
    default=DEFAULT_LORA_STRENGTH, min=0.0, max=2.0, step=0.01,
)
LORA_SOURCE = Input(
    "lora", "COMBO",
    "Where the FaceID LoRA comes from: the adapter file itself (the .bin files carry it), none, or a LoRA file "
    "(e.g. the published ip-adapter-faceid*_lora.safetensors) from the loras folder.",
    optional=True, default=FROM_ADAPTER, options=lora_choices,
)
PROVIDER = Input(
    "provider", "COMBO",
    "onnxruntime execution provider for insightface: auto = the first GPU provider onnxruntime has, else the CPU. "
    "An unavailable provider falls back to the CPU with a warning.",
    default=insightface_backend.AUTO, options=list(insightface_backend.PROVIDERS),
)


def _model_name_options() -> list[str]:
    names = list(insightface_backend.MODEL_NAMES)
    for root in insightface_backend.model_roots():
        for sub in (os.path.join(root, "models"), root):
            if os.path.isdir(sub):
                for entry in sorted(os.listdir(sub)):
                    if entry not in names and entry != "models" and os.path.isdir(os.path.join(sub, entry)):
                        names.append(entry)
    return names


# --- nodes ------------------------------------------------------------------------------------------


class InsightFaceLoader(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_InsightFaceLoader",
        display_name="IPAdapter InsightFace Loader",
        category="ipadapter/faceid",
        description="Loads an insightface model pack (face detection + identity recognition) from "
        "models/insightface/models/<name>. Needs the optional packages insightface and onnxruntime "
        f"({insightface_backend.INSTALL_COMMAND}). Loaded once and kept between runs.",
        inputs=lambda: [
            Input("model_name", "COMBO", "insightface model pack: buffalo_l, which the h94 FaceID adapters were trained with.", default="buffalo_l", options=_model_name_options),
            PROVIDER,
        ],
        outputs=[Output(INSIGHTFACE, "insightface", "The face analyser; also usable by other packs' INSIGHTFACE inputs.")],
    )

    @classmethod
    def run(cls, model_name: str = "buffalo_l", provider: str = insightface_backend.AUTO):
        return (insightface_backend.load_analyzer(model_name, provider),)


class FaceAnalysis(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_FaceAnalysis",
        display_name="IPAdapter FaceID Face Analysis",
        category="ipadapter/faceid",
        description="Finds one face per picture, aligns and crops it to the size the adapter expects (224 SD1.5, "
        "256 SDXL) and computes its identity embedding (and, for FaceID-Plus, the CLIP features "
        "of the crop). Pictures without a face are skipped with a warning naming them, or fail, per no_face.",
        inputs=lambda: [
            Input("ipadapter", IPADAPTER, "The FaceID adapter the embeddings are for (it decides the crop size and inputs)."),
            Input("image", "IMAGE", "Pictures with a face (a batch is analysed picture by picture)."),
            INSIGHTFACE_IN, CLIP_IN, FACE_ORDER, FACE_INDEX, NO_FACE,
        ],
        outputs=[
            Output(EMBEDS, "face_embeds", "Identity embeddings of the faces found (for IPAdapter Apply FaceID)."),
            Output(EMBEDS, "neg_embeds", "The matching negative (a zero identity; zero-pixel CLIP features for FaceID-Plus)."),
            Output("IMAGE", "face_image", "The aligned face crops, for preview or as a reference for another adapter."),
        ],
    )

    @classmethod
    def run(cls, ipadapter, image, insightface=None, clip_vision=None, face_order=FaceOrder.SIZE.value,
            face_index=0, no_face=NoFacePolicy.SKIP.value):
        analyzer = resolve_analyzer(insightface, ipadapter)
        embeds, batch = analyse_faces(
            ipadapter, image, analyzer, clip_vision, FaceOrder(face_order), int(face_index), NoFacePolicy(no_face)
        )
        return embeds, embeds.negative, crops_image(batch)


class ApplyFaceID(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_ApplyFaceID",
        display_name="IPAdapter Apply FaceID",
        category="ipadapter/faceid",
        description="Adds a face identity prompt with a FaceID adapter (FaceID, FaceID-Plus v1/v2, Portrait, "
        "Portrait unnorm) and puts the FaceID LoRA on the UNet. Several pictures: their faces are combined per "
        "combine_embeds (portrait: concat = every face's tokens), or with unfold_batch picture i acts on latent i. "
        "Pictures without a face never fail the batch unless no_face says so.",
        inputs=lambda: [
            Input("model", "MODEL", "The diffusion model to patch (SD1.5 or SDXL UNet)."),
            Input("ipadapter", IPADAPTER, "A FaceID adapter (IPAdapter Model Loader or Unified Loader FaceID)."),
            Input("weight", "FLOAT", "Strength of the face prompt. 0 = off.", default=1.0, min=-1.0, max=5.0, step=0.05),
            Input("weight_faceidv2", "FLOAT", "FaceID-Plus v2 only: scale of the shortcut, tokens = id + s * perceiver(id, CLIP). The reference default is 1.", default=DEFAULT_V2_SCALE, min=-1.0, max=5.0, step=0.05),
            Input("faceid_version", "COMBO", "FaceID-Plus v1 and v2 files hold the same tensors: auto takes the Unified Loader's preset, else the file name ('plusv2'), else v2.", default=FaceIDVersion.AUTO.value, options=[v.value for v in FaceIDVersion]),
            WEIGHT_TYPE, COMBINE, START, END, SCALING, LORA_STRENGTH,
            Input("image", "IMAGE", "Pictures with the face (not needed when face_embeds is connected).", optional=True),
            Input("face_embeds", EMBEDS, "Face embeddings from IPAdapter FaceID Face Analysis, instead of image.", optional=True),
            Input("unfold_batch", "BOOLEAN", "Picture i of the batch acts on latent frame i (video); a frame without a face is then sampled without the face prompt.", optional=True, default=False),
            NO_FACE, FACE_ORDER, FACE_INDEX, LORA_SOURCE, INSIGHTFACE_IN, CLIP_IN, MASK,
            Input("neg_embeds", EMBEDS, "Optional negative embeds (default: the reference's zero identity).", optional=True),
            LAYER_WEIGHTS,
        ],
        outputs=[
            Output("MODEL", "model", "A patched clone of the model (with the FaceID LoRA)."),
            Output("IMAGE", "face_image", "The aligned face crops that were used."),
        ],
    )

    @classmethod
    def run(cls, model, ipadapter, weight, weight_faceidv2, faceid_version, weight_type, combine_embeds, start_at,
            end_at, embeds_scaling, lora_strength, image=None, face_embeds=None, unfold_batch=False,
            no_face=NoFacePolicy.SKIP.value, face_order=FaceOrder.SIZE.value, face_index=0, lora=FROM_ADAPTER,
            insightface=None, clip_vision=None, attn_mask=None, neg_embeds=None, layer_weights=""):
        _require_faceid(ipadapter)
        settings = settings_for(
            weight, weight_type, start_at, end_at, embeds_scaling, combine_embeds, attn_mask, layer_weights,
            unfold_batch, faceid_v2=resolve_v2(ipadapter, FaceIDVersion(faceid_version)),
            faceid_v2_scale=float(weight_faceidv2),
        )
        settings.validate()
        if face_embeds is None:
            if image is None:
                raise InvalidInputError("Connect the pictures with the face to 'image' (or face embeddings to 'face_embeds').")
            analyzer = resolve_analyzer(insightface, ipadapter)
            face_embeds, batch = analyse_faces(
                ipadapter, image, analyzer, clip_vision, FaceOrder(face_order), int(face_index), NoFacePolicy(no_face),
                unfold=settings.unfold,
            )
            crops = crops_image(batch)
        else:
            crops = torch.zeros(1, crop_size(ipadapter.spec.base), crop_size(ipadapter.spec.base), 3)
        patched = apply_faceid_lora(model, ipadapter, lora_strength, lora)
        patched = apply_faceid(patched, ipadapter, face_embeds, neg_embeds, settings, clip_vision)
        return patched, crops



def find_faceid_adapter(preset: FaceIDPreset, base: BaseModel) -> str:
    return model_files.pick_installed(preset, base, faceid_supported, rank_faceid, faceid_suggested_file)


class UnifiedLoaderFaceID(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_UnifiedLoaderFaceID",
        display_name="IPAdapter Unified Loader FaceID",
        category="ipadapter/faceid",
        description="Finds the FaceID adapter for a preset among the installed files by what they contain, for the "
        "connected model's base, with the CLIP encoder FaceID-Plus needs and the insightface analyser, and "
        "returns the model with the FaceID LoRA applied at lora_strength.",
        inputs=lambda: [
            Input("model", "MODEL", "The model the adapter will be applied to; its base (SD1.5/SDXL) decides the files."),
            Input("preset", "COMBO", "FACEID: 4 identity tokens. FACEID PLUS V2 / v1: identity refined by CLIP features of the face crop. PORTRAIT: 16 tokens per face, several faces at once, no LoRA. PORTRAIT UNNORM: SDXL, stronger.", default=FaceIDPreset.PLUS_V2.value, options=[p.value for p in FaceIDPreset]),
            LORA_STRENGTH, PROVIDER,
            LORA_SOURCE,
            Input("insightface_model", "COMBO", "insightface model pack (buffalo_l for these adapters).", optional=True, default="buffalo_l", options=_model_name_options),
            INSIGHTFACE_IN,
        ],
        outputs=[
            Output("MODEL", "model", "The model with the FaceID LoRA (unchanged for portrait presets or strength 0)."),
            Output(IPADAPTER, "ipadapter", "The FaceID adapter with its face analyser (and CLIP encoder for Plus)."),
        ],
    )

    @classmethod
    def run(cls, model, preset, lora_strength, provider=insightface_backend.AUTO, lora=FROM_ADAPTER,
            insightface_model="buffalo_l", insightface=None):
        preset = FaceIDPreset(preset)
        if insightface is None:
            insightface_backend.import_insightface()  # the install message before any file is read
        layers = host.cross_attention_layers(model)
        family = host.model_family(model, layers)
        try:
            base = BaseModel(family)
        except ValueError:
            raise MissingModelFileError(f"No published FaceID adapter fits this model: {family}.") from None
        name = find_faceid_adapter(preset, base)
        adapter = load_adapter(paths.adapter_path(name))
        rule = FACEID_RULES[preset]
        by_name = v2_from_name(name)
        if rule.faceid_v2 is not None and by_name is not None and by_name != rule.faceid_v2:
            log.warning(
                "IPAdapter FaceID: preset '%s' uses '%s', whose name says FaceID-Plus %s; its tensors fit either, "
                "so it is used with the preset's %s math.", preset.value, name, "v2" if by_name else "v1",
                "v2" if rule.faceid_v2 else "v1",
            )
        clip = None
        if adapter.spec.clip_output is not None:
            clip_name = model_files.find_clip_vision(ImageEncoder.VIT_H)
            clip = model_files.load_clip_vision(clip_name)
        analyzer = insightface_backend.as_analyzer(insightface) if insightface is not None else (
            insightface_backend.load_analyzer(insightface_model, provider)
        )
        handle = IPAdapterHandle(
            adapter, clip_vision=clip, insightface=analyzer,
            extras={"faceid_v2": rule.faceid_v2, "preset": preset.value},
        )
        patched = apply_faceid_lora(model, handle, lora_strength, lora)
        log.info("IPAdapter FaceID preset '%s' on %s: %s", preset.value, base.label, name)
        return patched, handle


NODES = [InsightFaceLoader, FaceAnalysis, ApplyFaceID, UnifiedLoaderFaceID]
