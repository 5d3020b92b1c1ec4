"""Embeds utilities: combine, save/load (safetensors only), and noise images for negatives.

Saved embeds are `.ipadpt.safetensors` files: tensors `features` (and `clip_features` for
FaceID-Plus) plus metadata naming the encoder output. They never go through pickle; an
incumbent `.ipadpt` file (a torch pickle) is refused with what to do instead. Save writes
to ComfyUI's output folder; Load lists the input folder *and* the output folder (entries
marked "[output]"), so a saved file can be loaded back without moving it.
"""

from __future__ import annotations

import os

import torch

from ..ip_adapter_core.embeds import CombineMethod, combine
from ..ip_adapter_core.errors import InvalidInputError, UnreadableCheckpointError
from ..ip_adapter_core.imageops import NoiseType, gaussian_blur, noise_image
from ..ip_adapter_core.spec import EncoderOutput
from ._api import Input, NodeResult, NodeSpec, Output, PackNode
from .apply import EMBEDS
from .apply_helpers import as_embeds, same_kind
from .encoding import ImageEmbeds, validate_images

EXTENSION = ".ipadpt.safetensors"
LEGACY_EXTENSION = ".ipadpt"
FORMAT = "ipadapter_kit.embeds"
FORMAT_VERSION = "1"
OUTPUT_TAG = " [output]"


class CombineEmbeds(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_CombineEmbeds",
        display_name="IPAdapter Combine Embeds",
        category="ipadapter/embeds",
        description="Merges up to five embeds (of the same adapter kind): concat keeps every image; add, subtract "
        "(first minus the mean of the rest), average, norm average (average of unit-length embeds, rescaled to "
        "their mean length), max and min reduce them to one.",
        inputs=lambda: [
            Input("embed1", EMBEDS, "Embeds (Encode Image / Load / another Combine)."),
            Input("method", "COMBO", "How to merge.", default=CombineMethod.CONCAT.value, options=[m.value for m in CombineMethod]),
            *[Input(f"embed{i}", EMBEDS, "More embeds.", optional=True) for i in range(2, 6)],
        ],
        outputs=[Output(EMBEDS, "embeds", "The merged embeds.")],
    )

    @classmethod
    def run(cls, embed1, method, embed2=None, embed3=None, embed4=None, embed5=None):
        parts = [as_embeds(e, f"embed{i}") for i, e in enumerate((embed1, embed2, embed3, embed4, embed5), start=1) if e is not None]
        same_kind(parts, "embed")
        how = CombineMethod(method)
        features = combine(torch.cat([p.features for p in parts]), how)
        clip = None
        if parts[0].clip_features is not None:
            clip = combine(torch.cat([p.clip_features for p in parts]), how)
        return (ImageEmbeds(parts[0].output, features, clip),)


def save_embeds(embeds: ImageEmbeds, path: str) -> None:
    from safetensors.torch import save_file

    tensors = {"features": embeds.features.detach().cpu().contiguous()}
    if embeds.clip_features is not None:
        tensors["clip_features"] = embeds.clip_features.detach().cpu().contiguous()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "output": embeds.output.value, "count": str(embeds.count)}
    save_file(tensors, path, metadata=meta)


def _refuse_pickle(path: str, head: bytes) -> None:
    if head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        return
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise UnreadableCheckpointError(
            f"'{os.path.basename(path)}' is a pickle (torch.save) file, the incumbent IPAdapter pack's .ipadpt format. "
            "Pickles can run code when loaded, so this pack does not open them. Re-create the embeds with IPAdapter "
            "Encode Image and save them with IPAdapter Save Embeds (safetensors)."
        )


def load_embeds(path: str) -> ImageEmbeds:
    with open(path, "rb") as fh:
        head = fh.read(16)
    _refuse_pickle(path, head)
    name = os.path.basename(path)
    if len(head) < 9:
        raise UnreadableCheckpointError(f"'{name}' is empty or truncated; it is not a saved embeds file.")
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise UnreadableCheckpointError(f"'{name}' is not a readable safetensors file ({e}).") from None
    if meta.get("format") != FORMAT or "features" not in tensors:
        raise UnreadableCheckpointError(
            f"'{name}' is a safetensors file but not IPAdapter embeds (no '{FORMAT}' metadata / 'features' tensor). "
            "Save embeds with IPAdapter Save Embeds."
        )
    try:
        output = EncoderOutput(meta.get("output"))
    except ValueError:
        raise UnreadableCheckpointError(f"'{name}' names an unknown encoder output {meta.get('output')!r}.") from None
    return ImageEmbeds(output, tensors["features"], tensors.get("clip_features"))


def _dirs():
    import folder_paths

    return folder_paths.get_input_directory(), folder_paths.get_output_directory()


def embeds_files() -> list[str]:
    """Saved embeds in the input folder, then the output folder (marked '[output]')."""
    found = []
    for base, tag in zip(_dirs(), ("", OUTPUT_TAG)):
        if not os.path.isdir(base):
            continue
        entries = []
        for root, dirs, files in os.walk(base, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                if f.endswith(EXTENSION) or f.endswith(LEGACY_EXTENSION):
                    entries.append(os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/") + tag)
        found += sorted(entries)
    return found


def resolve(name: str) -> str:
    """A listed name -> its path, refusing anything outside the input/output folders."""
    import folder_paths

    path = os.path.abspath(folder_paths.get_annotated_filepath(name))
    roots = [os.path.abspath(d) for d in _dirs()]
    if not any(os.path.commonpath([path, r]) == r for r in roots):
        raise InvalidInputError(f"'{name}' is outside the input and output folders.")
    if not os.path.isfile(path):
        raise InvalidInputError(f"embeds file '{name}' was not found (looked at {path}).")
    return path


class SaveEmbeds(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_SaveEmbeds",
        display_name="IPAdapter Save Embeds",
        category="ipadapter/embeds",
        description="Saves embeds as a .ipadpt.safetensors file in the output folder (no pickle). IPAdapter Load "
        "Embeds lists it right away (as '... [output]') after the node list refreshes.",
        inputs=lambda: [
            Input("embeds", EMBEDS, "Embeds to save."),
            Input("filename_prefix", "STRING", "File name prefix; may include sub-folders.", default="IP_embeds"),
        ],
        outputs=[Output("STRING", "filename", "The saved file as Load Embeds lists it.")],
        output_node=True,
    )

    @classmethod
    def run(cls, embeds, filename_prefix="IP_embeds"):
        import folder_paths

        embeds = as_embeds(embeds, "embeds")
        out_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix or "IP_embeds", out_dir)
        os.makedirs(folder, exist_ok=True)
        name = f"{filename}_{counter:05}_{EXTENSION}"
        save_embeds(embeds, os.path.join(folder, name))
        listed = (f"{subfolder}/{name}" if subfolder else name).replace(os.sep, "/") + OUTPUT_TAG
        return NodeResult((listed,), ui={"text": [listed]})


class LoadEmbeds(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_LoadEmbeds",
        display_name="IPAdapter Load Embeds",
        category="ipadapter/embeds",
        description="Loads embeds saved by IPAdapter Save Embeds, from the input folder or the output folder "
        "('[output]' entries). Pickled .ipadpt files from the incumbent pack are refused (they can run code).",
        inputs=lambda: [
            Input("embeds", "COMBO", "A saved embeds file (input folder, or output folder marked [output]).", options=embeds_files),
        ],
        outputs=[Output(EMBEDS, "embeds", "The loaded embeds, bit-identical to what was saved.")],
    )

    @classmethod
    def run(cls, embeds):
        return (load_embeds(resolve(embeds)),)


class Noise(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_Noise",
        display_name="IPAdapter Noise",
        category="ipadapter/utils",
        description="Makes a noisy image to use as image_negative: the adapter then steers away from noise (or from "
        "a scrambled copy of the reference) instead of from a black image. Same seed, same image.",
        inputs=lambda: [
            Input("type", "COMBO", "fade: blend with uniform noise; dissolve: replace a share of pixels with noise; "
                  "gaussian: add Gaussian noise; shuffle: swap a share of 16px blocks (colours stay, layout goes).",
                  default=NoiseType.FADE.value, options=[t.value for t in NoiseType]),
            Input("strength", "FLOAT", "Amount of noise (share of pixels/blocks for dissolve/shuffle).", default=1.0, min=0.0, max=1.0, step=0.05),
            Input("blur", "INT", "Gaussian blur size in pixels after the noise (0 = none).", default=0, min=0, max=32, step=1),
            Input("seed", "INT", "Noise seed.", optional=True, default=0, min=0, max=0xFFFFFFFFFFFFFFFF, step=1),
            Input("image_optional", "IMAGE", "Image to add noise to; without it a black image is used.", optional=True),
            Input("size", "INT", "Side of the black image when no image is connected.", optional=True, default=224, min=16, max=2048, step=8),
        ],
        outputs=[Output("IMAGE", "image", "The noise image.")],
    )

    @classmethod
    def run(cls, type, strength, blur, seed=0, image_optional=None, size=224):  # noqa: A002 - incumbent's input name
        base = validate_images(image_optional, "image_optional") if image_optional is not None else torch.zeros(1, int(size), int(size), 3)
        out = noise_image(base, NoiseType(type), float(strength), int(seed))
        return (gaussian_blur(out, int(blur)),)


NODES = [CombineEmbeds, SaveEmbeds, LoadEmbeds, Noise]
