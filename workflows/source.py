"""The example workflows, each written once (rendered by workflows/build.py).

Every workflow names the published model files and carries download hints (`properties.models`
on the loader that names a file; the workflow's `models` for files the Unified Loader finds by
itself), so ComfyUI can offer them when they are missing. Node positions are laid out in
columns; sizes are at least what the frontend computes, so nothing moves on load.
"""

from __future__ import annotations

from .graph import BLUE, BROWN, CYAN, GREEN, PURPLE, YELLOW, Graph, ModelHint, Node

PACK_CNR_ID = "ipadapter-kit"  # [project] name in pyproject.toml = the Comfy Registry id
COMFY_CORE_VERSION = "0.3.75"  # the ComfyUI the files were generated and tested with
FRONTEND_VERSION = "1.32.9"  # its comfyui-frontend-package

HF = "https://huggingface.co"
H94 = f"{HF}/h94/IP-Adapter/resolve/main"

SD15_CKPT = ModelHint("v1-5-pruned-emaonly.safetensors",
                      f"{HF}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
                      "checkpoints")
SDXL_CKPT = ModelHint("sd_xl_base_1.0.safetensors",
                      f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
                      "checkpoints")
VIT_H = ModelHint("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", f"{H94}/models/image_encoder/model.safetensors",
                  "clip_vision")
IPA_SD15 = ModelHint("ip-adapter_sd15.safetensors", f"{H94}/models/ip-adapter_sd15.safetensors", "ipadapter")
IPA_PLUS_SD15 = ModelHint("ip-adapter-plus_sd15.safetensors", f"{H94}/models/ip-adapter-plus_sd15.safetensors",
                          "ipadapter")
IPA_SDXL_VIT_H = ModelHint("ip-adapter_sdxl_vit-h.safetensors", f"{H94}/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
                           "ipadapter")
IPA_PLUS_SDXL_VIT_H = ModelHint("ip-adapter-plus_sdxl_vit-h.safetensors",
                                f"{H94}/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors", "ipadapter")
CANNY_SD15 = ModelHint("control_v11p_sd15_canny_fp16.safetensors",
                       f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                       "control_v11p_sd15_canny_fp16.safetensors", "controlnet")
FLUX_DEV = ModelHint("flux1-dev.safetensors", f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
                     "diffusion_models")
FLUX_AE = ModelHint("ae.safetensors", f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors", "vae")
FLUX_ENCODERS = f"{HF}/comfyanonymous/flux_text_encoders/resolve/main"
FLUX_T5XXL = ModelHint("t5xxl_fp16.safetensors", f"{FLUX_ENCODERS}/t5xxl_fp16.safetensors", "text_encoders")
FLUX_CLIP_L = ModelHint("clip_l.safetensors", f"{FLUX_ENCODERS}/clip_l.safetensors", "text_encoders")
CLIP_VISION_L = ModelHint("clip_vision_l.safetensors",
                          f"{HF}/openai/clip-vit-large-patch14/resolve/main/model.safetensors", "clip_vision")
SIGCLIP = ModelHint("sigclip_vision_patch14_384.safetensors",
                    f"{HF}/Comfy-Org/sigclip_vision_384/resolve/main/sigclip_vision_patch14_384.safetensors",
                    "clip_vision")
XLABS_V2 = ModelHint("flux-ip-adapter-v2.safetensors",
                     f"{HF}/XLabs-AI/flux-ip-adapter-v2/resolve/main/ip_adapter.safetensors", "ipadapter")
# Both InstantX files are published as `ip-adapter.bin`: a sub-folder per repository keeps them apart.
INSTANTX_FLUX = ModelHint("InstantX-FLUX.1-dev-IP-Adapter/ip-adapter.bin",
                          f"{HF}/InstantX/FLUX.1-dev-IP-Adapter/resolve/main/ip-adapter.bin", "ipadapter")
INSTANTX_SD35 = ModelHint("InstantX-SD3.5-Large-IP-Adapter/ip-adapter.bin",
                          f"{HF}/InstantX/SD3.5-Large-IP-Adapter/resolve/main/ip-adapter.bin", "ipadapter")
SD35 = "stabilityai/stable-diffusion-3.5-large/resolve/main"
SD35_LARGE = ModelHint("sd3.5_large.safetensors", f"{HF}/{SD35}/sd3.5_large.safetensors", "checkpoints")
SD35_CLIP_L = ModelHint("clip_l.safetensors", f"{HF}/{SD35}/text_encoders/clip_l.safetensors", "text_encoders")
SD35_CLIP_G = ModelHint("clip_g.safetensors", f"{HF}/{SD35}/text_encoders/clip_g.safetensors", "text_encoders")
SD35_T5XXL = ModelHint("t5xxl_fp16.safetensors", f"{HF}/{SD35}/text_encoders/t5xxl_fp16.safetensors", "text_encoders")

# Synthetic stand-ins the e2e suite has (tests/fixtures/host_models.py): SD1.5 only.
SYNTHETIC_SD15 = {
    SDXL_CKPT.name: SD15_CKPT.name,
    IPA_SDXL_VIT_H.name: IPA_SD15.name,
    IPA_PLUS_SDXL_VIT_H.name: IPA_PLUS_SD15.name,
    CANNY_SD15.name: "control_v11p_sd15_canny.safetensors",
}
SDXL_E2E_NOTE = ("runs end to end in the test suite with synthetic SD1.5 files standing in for the SDXL ones "
                 "(64x64, 2 steps): a full-size SDXL UNet has 2.57 B parameters, 10.3 GB in float32 on the CPU, "
                 "too much beside the rest of the suite; the SDXL layer tables are tested in-process on small "
                 "SDXL-layout UNets")
DIT_E2E = ("runs end to end in tests/e2e/test_dit_workflows_e2e.py on synthetic stand-ins (Flux at full width "
           "with 1 double + 1 single block, a depth-3 SD3 MMDiT, full-size random image encoders) with the T5 / CLIP "
           "text encoders replaced by a stub giving conditioning of the right shape (64x64, 2 steps); the DiT nodes "
           "are also tested in-process on tiny models against diffusers and the official processor")

# Node sizes: at least what the frontend's computeSize gives (so the layout holds on load).
SIZES: dict[str, tuple[float, float]] = {
    "CheckpointLoaderSimple": (315, 98),
    "IPAK_UnifiedLoader": (315, 78),
    "IPAK_ModelLoader": (315, 58),
    "CLIPVisionLoader": (315, 58),
    "IPAK_Apply": (400, 356),
    "CLIPTextEncode": (400, 150),
    "EmptyLatentImage": (315, 106),
    "EmptySD3LatentImage": (315, 106),
    "KSampler": (315, 262),
    "VAEDecode": (210, 46),
    "SaveImage": (400, 420),
    "PreviewImage": (315, 320),
    "LoadImage": (315, 360),
    "IPAK_Noise": (315, 178),
    "SolidMask": (315, 106),
    "MaskComposite": (315, 126),
    "IPAK_RegionalConditioning": (340, 214),
    "IPAK_CombineParams": (260, 106),
    "IPAK_ApplyFromParams": (340, 234),
    "ConditioningCombine": (240, 46),
    "IPAK_PrepImage": (350, 170),
    "IPAK_StyleComposition": (340, 394),
    "ImageBatch": (200, 46),
    "IPAK_Weights": (400, 424),
    "IPAK_ApplyBatch": (400, 356),
    "ControlNetLoader": (315, 58),
    "ControlNetApplyAdvanced": (315, 186),
    "Canny": (315, 82),
    "UNETLoader": (315, 82),
    "DualCLIPLoader": (315, 130),
    "TripleCLIPLoader": (315, 106),
    "VAELoader": (315, 58),
    "IPAK_ApplyDiT": (340, 258),
    "FluxGuidance": (315, 58),
}
GAP = 50  # between nodes of a group (the next node's title bar is 30 px)
GROUP_GAP = 130  # between groups stacked in one column
COL = 460  # column pitch


class Column:
    """Places nodes top to bottom at one x."""

    def __init__(self, g: Graph, index: float, y: float = 0.0):
        self.g, self.x, self.y = g, index * COL, y

    def add(self, node_type: str, /, *, _gap: float = GAP, **kw) -> Node:
        kw.setdefault("_size", SIZES[node_type])
        n = self.g.node(node_type, (self.x, self.y), **kw)
        self.y += kw["_size"][1] + _gap
        return n

    def next_group(self) -> Column:
        self.y += GROUP_GAP - GAP
        return self


NEGATIVE = "blurry, lowres, watermark, text, deformed"


def _sd_sampler(c: Column, model, positive, negative, *, width=512, height=512, batch_size=1, steps=25, cfg=6.5,
                sampler="dpmpp_2m", scheduler="karras", seed=156680208700286, latent_type="EmptyLatentImage"):
    latent = c.add(latent_type, width=width, height=height, batch_size=batch_size)
    ks = c.add("KSampler", model=model, positive=positive, negative=negative, latent_image=latent[0], seed=seed,
               _control="randomize", steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
               denoise=1.0)
    return latent, ks


def _decode_save(c: Column, samples, vae, prefix: str) -> tuple[Node, Node]:
    dec = c.add("VAEDecode", samples=samples, vae=vae)
    save = c.add("SaveImage", images=dec[0], filename_prefix=prefix)
    return dec, save


def sd15_basic() -> Graph:
    g = Graph("sd15_basic", "SD1.5: image prompt + text prompt",
              "The reference image steers the picture next to the text prompt (IPAdapter Unified Loader, "
              "standard preset, and IPAdapter Apply).")
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SD15_CKPT.name, _models=[SD15_CKPT])
    loader = c0.add("IPAK_UnifiedLoader", model=ckpt["MODEL"], preset="standard (medium strength)")
    ref = c0.next_group().add("LoadImage", _title="Reference image", image="ipak_reference.png")
    c1 = Column(g, 1)
    apply = c1.add("IPAK_Apply", model=loader["model"], ipadapter=loader["ipadapter"], image=ref["IMAGE"], weight=0.8)
    pos = c1.next_group().add("CLIPTextEncode", _title="Positive prompt", clip=ckpt["CLIP"],
                              text="a lighthouse on a cliff above the sea, evening light, detailed painting")
    neg = c1.add("CLIPTextEncode", _title="Negative prompt", clip=ckpt["CLIP"], text=NEGATIVE)
    c2 = Column(g, 2)
    latent, ks = _sd_sampler(c2, apply["model"], pos[0], neg[0])
    c3 = Column(g, 2.8)
    dec, save = _decode_save(c3, ks[0], ckpt["VAE"], "ipadapter_kit/sd15_basic")
    g.models += [IPA_SD15, VIT_H]
    g.group("Models", [ckpt, loader], BLUE)
    g.group("Reference image", [ref], BROWN)
    g.group("Image prompt", [apply], PURPLE)
    g.group("Text prompt", [pos, neg], GREEN)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - SD1.5 image prompt\n\n"
        "1. Pick your SD1.5 checkpoint in Load Checkpoint.\n"
        "2. Pick a reference picture in 'Reference image'.\n"
        "3. Change the weight in IPAdapter Apply (0.5-1.0; higher = closer to the reference) and the prompts.\n\n"
        "The Unified Loader's 'standard' preset needs ip-adapter_sd15.safetensors in models/ipadapter and "
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in models/clip_vision (any file name works: the pack "
        "recognises files by their content). 'plus (high strength)' follows the reference more closely.",
        (0, -300), size=(860, 200), title="Read me")
    return g


def sdxl_basic() -> Graph:
    g = Graph("sdxl_basic", "SDXL: image prompt with explicit loaders",
              "SDXL with the adapter file and the CLIP vision encoder loaded explicitly (IPAdapter Model Loader + "
              "Load CLIP Vision) instead of the Unified Loader.")
    g.e2e = SDXL_E2E_NOTE
    g.e2e_substitutions = dict(SYNTHETIC_SD15)
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SDXL_CKPT.name, _models=[SDXL_CKPT])
    ipa = c0.add("IPAK_ModelLoader", ipadapter_file=IPA_SDXL_VIT_H.name, _models=[IPA_SDXL_VIT_H])
    cv = c0.add("CLIPVisionLoader", clip_name=VIT_H.name, _models=[VIT_H])
    ref = c0.next_group().add("LoadImage", _title="Reference image", image="ipak_reference.png")
    c1 = Column(g, 1)
    apply = c1.add("IPAK_Apply", model=ckpt["MODEL"], ipadapter=ipa[0], image=ref["IMAGE"], clip_vision=cv[0],
                   weight=0.7)
    pos = c1.next_group().add("CLIPTextEncode", _title="Positive prompt", clip=ckpt["CLIP"],
                              text="a cozy reading corner by a large window, soft morning light, photograph")
    neg = c1.add("CLIPTextEncode", _title="Negative prompt", clip=ckpt["CLIP"], text=NEGATIVE)
    c2 = Column(g, 2)
    latent, ks = _sd_sampler(c2, apply["model"], pos[0], neg[0], width=1024, height=1024, steps=30, cfg=6.0)
    c3 = Column(g, 2.8)
    dec, save = _decode_save(c3, ks[0], ckpt["VAE"], "ipadapter_kit/sdxl_basic")
    g.group("Models", [ckpt, ipa, cv], BLUE)
    g.group("Reference image", [ref], BROWN)
    g.group("Image prompt", [apply], PURPLE)
    g.group("Text prompt", [pos, neg], GREEN)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - SDXL image prompt, explicit loaders\n\n"
        "ip-adapter_sdxl_vit-h.safetensors (models/ipadapter) goes with the ViT-H encoder "
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (models/clip_vision). For ip-adapter_sdxl.safetensors use "
        "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors instead: a mismatch is reported by name, not as a "
        "shape error.\n"
        "Change the reference image, the weight (0.5-1.0) and the prompts. 1024x1024, 30 steps.",
        (0, -300), size=(860, 200), title="Read me")
    return g


def sd15_negative_image() -> Graph:
    g = Graph("sd15_negative_image", "SD1.5: negative image prompt",
              "A noisy version of the reference is the negative image: the sampler is pushed away from its "
              "artifacts, towards the reference's content, next to the text prompt.")
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SD15_CKPT.name, _models=[SD15_CKPT])
    loader = c0.add("IPAK_UnifiedLoader", model=ckpt["MODEL"], preset="plus (high strength)")
    ref = c0.next_group().add("LoadImage", _title="Reference image", image="ipak_reference.png")
    c1 = Column(g, 1)
    noise = c1.add("IPAK_Noise", _title="Negative image (noise)", type="dissolve", strength=0.5, blur=0, seed=7,
                   _control="fixed", image_optional=ref["IMAGE"], size=224)
    preview = c1.add("PreviewImage", images=noise[0])
    c2 = Column(g, 2)
    apply = c2.add("IPAK_Apply", model=loader["model"], ipadapter=loader["ipadapter"], image=ref["IMAGE"],
                   image_negative=noise[0], weight=0.85)
    pos = c2.next_group().add("CLIPTextEncode", _title="Positive prompt", clip=ckpt["CLIP"],
                              text="a lighthouse on a cliff above the sea, clean illustration")
    neg = c2.add("CLIPTextEncode", _title="Negative prompt", clip=ckpt["CLIP"], text=NEGATIVE)
    c3 = Column(g, 3)
    latent, ks = _sd_sampler(c3, apply["model"], pos[0], neg[0])
    c4 = Column(g, 3.8)
    dec, save = _decode_save(c4, ks[0], ckpt["VAE"], "ipadapter_kit/sd15_negative_image")
    g.models += [IPA_PLUS_SD15, VIT_H]
    g.group("Models", [ckpt, loader], BLUE)
    g.group("Reference image", [ref], BROWN)
    g.group("Negative image", [noise, preview], CYAN)
    g.group("Image prompt", [apply], PURPLE)
    g.group("Text prompt", [pos, neg], GREEN)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - negative image\n\n"
        "image_negative replaces the zero image the unconditional pass normally gets. IPAdapter Noise makes one "
        "from the reference: 'dissolve' / 'shuffle' keep its colours and destroy its structure, 'fade' blends it "
        "with noise, 'gaussian' is plain noise. Any other image works too (e.g. a picture of what you do not "
        "want). The negative only matters with cfg > 1. Try strength 0.3-0.7.",
        (0, -300), size=(860, 200), title="Read me")
    return g


def sd15_regional_two_images() -> Graph:
    g = Graph("sd15_regional_two_images", "SD1.5: two image prompts, one per region",
              "Left and right half each get their own reference image, weight and text prompt (masks made with "
              "core Solid Mask + Mask Composite nodes).")
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SD15_CKPT.name, _models=[SD15_CKPT])
    loader = c0.add("IPAK_UnifiedLoader", model=ckpt["MODEL"], preset="plus (high strength)")
    left = c0.next_group().add("LoadImage", _title="Left reference", image="ipak_subject_left.png")
    right = c0.add("LoadImage", _title="Right reference", image="ipak_subject_right.png")
    c1 = Column(g, 1)
    black = c1.add("SolidMask", _title="Empty mask", value=0.0, width=512, height=512)
    half = c1.add("SolidMask", _title="Half mask", value=1.0, width=256, height=512)
    mask_l = c1.add("MaskComposite", _title="Left mask", destination=black[0], source=half[0], x=0, y=0,
                    operation="add")
    mask_r = c1.add("MaskComposite", _title="Right mask", destination=black[0], source=half[0], x=256, y=0,
                    operation="add")
    c2 = Column(g, 2)
    text_l = c2.add("CLIPTextEncode", _title="Left prompt", clip=ckpt["CLIP"],
                    text="portrait of a young woman, smiling")
    text_r = c2.add("CLIPTextEncode", _title="Right prompt", clip=ckpt["CLIP"], text="portrait of an old man, serious")
    neg = c2.add("CLIPTextEncode", _title="Negative prompt", clip=ckpt["CLIP"], text=NEGATIVE)
    c3 = Column(g, 3)
    reg_l = c3.add("IPAK_RegionalConditioning", _title="Left region", image=left["IMAGE"], mask=mask_l[0],
                   positive=text_l[0], image_weight=0.9, prompt_weight=1.0)
    reg_r = c3.add("IPAK_RegionalConditioning", _title="Right region", image=right["IMAGE"], mask=mask_r[0],
                   positive=text_r[0], image_weight=0.6, prompt_weight=1.0)
    c4 = Column(g, 3.85)
    params = c4.add("IPAK_CombineParams", params_1=reg_l["ipadapter_params"], params_2=reg_r["ipadapter_params"])
    apply = c4.add("IPAK_ApplyFromParams", model=loader["model"], ipadapter=loader["ipadapter"],
                   ipadapter_params=params[0])
    cond = c4.add("ConditioningCombine", conditioning_1=reg_l["positive"], conditioning_2=reg_r["positive"])
    c5 = Column(g, 4.7)
    latent, ks = _sd_sampler(c5, apply["model"], cond[0], neg[0], width=512, height=512)
    c6 = Column(g, 5.5)
    dec, save = _decode_save(c6, ks[0], ckpt["VAE"], "ipadapter_kit/sd15_regional")
    g.models += [IPA_PLUS_SD15, VIT_H]
    g.group("Models", [ckpt, loader], BLUE)
    g.group("Reference images", [left, right], BROWN)
    g.group("Masks (white = region)", [black, half, mask_l, mask_r], CYAN)
    g.group("Text prompts", [text_l, text_r, neg], GREEN)
    g.group("Regions", [reg_l, reg_r, params, apply, cond], PURPLE)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - regional image prompts\n\n"
        "Each IPAdapter Regional Conditioning limits one reference image (and, if connected, its text prompt) to a "
        "mask. Here the masks are the left and right half of a 512x512 canvas: keep the masks' size in the latent's "
        "aspect ratio. image_weight sets each image's strength (0.9 left, 0.6 right). Add regions with more "
        "Regional Conditioning nodes into Combine Params (up to 5).",
        (0, -300), size=(900, 200), title="Read me")
    return g


def sdxl_style_composition() -> Graph:
    g = Graph("sdxl_style_composition", "SDXL: style from one image, composition from another",
              "IPAdapter Style & Composition sends the style image to SDXL's style block and the composition "
              "image to its composition block.")
    g.e2e = SDXL_E2E_NOTE
    g.e2e_substitutions = dict(SYNTHETIC_SD15)
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SDXL_CKPT.name, _models=[SDXL_CKPT])
    loader = c0.add("IPAK_UnifiedLoader", model=ckpt["MODEL"], preset="plus (high strength)")
    style = c0.next_group().add("LoadImage", _title="Style image", image="ipak_style.png")
    comp = c0.add("LoadImage", _title="Composition image", image="ipak_composition.png")
    c1 = Column(g, 1)
    prep_opts = dict(interpolation="LANCZOS", crop_position="center", sharpening=0.0, size="auto",
                     ipadapter=loader["ipadapter"])
    prep_s = c1.add("IPAK_PrepImage", _title="Prep style image", image=style["IMAGE"], **prep_opts)
    prep_c = c1.add("IPAK_PrepImage", _title="Prep composition image", image=comp["IMAGE"], **prep_opts)
    c2 = Column(g, 1.85)
    sc = c2.add("IPAK_StyleComposition", model=loader["model"], ipadapter=loader["ipadapter"],
                image_style=prep_s[0], image_composition=prep_c[0], weight_style=1.0, weight_composition=1.0,
                expand_style=False, combine_embeds="average", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    pos = c2.next_group().add("CLIPTextEncode", _title="Positive prompt", clip=ckpt["CLIP"],
                              text="a small village by a lake, wide view")
    neg = c2.add("CLIPTextEncode", _title="Negative prompt", clip=ckpt["CLIP"], text=NEGATIVE)
    c3 = Column(g, 2.85)
    latent, ks = _sd_sampler(c3, sc["model"], pos[0], neg[0], width=1024, height=1024, steps=30, cfg=6.0)
    c4 = Column(g, 3.65)
    dec, save = _decode_save(c4, ks[0], ckpt["VAE"], "ipadapter_kit/sdxl_style_composition")
    g.models += [IPA_PLUS_SDXL_VIT_H, VIT_H]
    g.group("Models", [ckpt, loader], BLUE)
    g.group("Style and composition images", [style, comp], BROWN)
    g.group("Prepare for CLIP vision", [prep_s, prep_c], CYAN)
    g.group("Style & composition", [sc], PURPLE)
    g.group("Text prompt", [pos, neg], GREEN)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - style and composition (SDXL)\n\n"
        "The style image acts only on SDXL's style block, the composition image only on its composition block, "
        "so the colours/texture of one meet the layout of the other. weight_style / weight_composition balance "
        "them; expand_style also sends the style to the other blocks (stronger style). Needs "
        "ip-adapter-plus_sdxl_vit-h.safetensors + the ViT-H encoder ('plus' preset). SD1.5 works too, less "
        "cleanly separated.",
        (0, -300), size=(900, 200), title="Read me")
    return g


def sd15_batch_weight_schedule() -> Graph:
    g = Graph("sd15_batch_weight_schedule", "SD1.5: cross-fade reference images over a batch",
              "IPAdapter Weights turns three reference images into per-frame weights; two IPAdapter Batch nodes "
              "cross-fade from one image to the next across the latent batch (one frame per latent).")
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SD15_CKPT.name, _models=[SD15_CKPT])
    loader = c0.add("IPAK_UnifiedLoader", model=ckpt["MODEL"], preset="plus (high strength)")
    f1 = c0.next_group().add("LoadImage", _title="Frame 1", image="ipak_frame_1.png")
    f2 = c0.add("LoadImage", _title="Frame 2", image="ipak_frame_2.png")
    f3 = c0.add("LoadImage", _title="Frame 3", image="ipak_frame_3.png")
    c1 = Column(g, 1, y=590)
    b1 = c1.add("ImageBatch", image1=f1["IMAGE"], image2=f2["IMAGE"])
    b2 = c1.add("ImageBatch", image1=b1[0], image2=f3["IMAGE"])
    prep = c1.add("IPAK_PrepImage", image=b2[0], interpolation="LANCZOS", crop_position="center", sharpening=0.0,
                  size="auto", ipadapter=loader["ipadapter"])
    c2 = Column(g, 1.95)
    weights = c2.add("IPAK_Weights", weights="1.0, 0.0", timing="ease_in_out", frames=8, start_frame=0,
                     end_frame=9999, add_starting_frames=2, add_ending_frames=2, method="shift batches",
                     image=prep[0], seed=0, _control="fixed")
    c3 = Column(g, 2.95)
    batch_opts = dict(weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only", encode_batch_size=0)
    ab1 = c3.add("IPAK_ApplyBatch", _title="IPAdapter Batch (fading out)", model=loader["model"],
                 ipadapter=loader["ipadapter"], image=weights["image_1"], weight=weights["weights"], **batch_opts)
    ab2 = c3.add("IPAK_ApplyBatch", _title="IPAdapter Batch (fading in)", model=ab1[0], ipadapter=loader["ipadapter"],
                 image=weights["image_2"], weight=weights["weights_invert"], **batch_opts)
    c4 = Column(g, 3.95)
    pos = c4.add("CLIPTextEncode", _title="Positive prompt", clip=ckpt["CLIP"],
                 text="a landscape at different times of day")
    neg = c4.add("CLIPTextEncode", _title="Negative prompt", clip=ckpt["CLIP"], text=NEGATIVE)
    latent, ks = _sd_sampler(c4.next_group(), ab2[0], pos[0], neg[0], batch_size=weights["total_frames"])
    c5 = Column(g, 4.9, y=latent.pos[1])
    dec, save = _decode_save(c5, ks[0], ckpt["VAE"], "ipadapter_kit/sd15_batch")
    g.models += [IPA_PLUS_SD15, VIT_H]
    g.group("Models", [ckpt, loader], BLUE)
    g.group("Reference frames", [f1, f2, f3], BROWN)
    g.group("Batch + prep", [b1, b2, prep], CYAN)
    g.group("Per-frame weights", [weights, ab1, ab2], PURPLE)
    g.group("Text prompt", [pos, neg], GREEN)
    g.group("Generate (batch = total_frames)", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - cross-fade over a batch\n\n"
        "IPAdapter Weights spreads the reference images over 'frames' latents per transition, easing weights from "
        "1.0 to 0.0 ('weights'); image_1 / image_2 are the outgoing / incoming image of every frame. The two Batch "
        "nodes apply them with weights and weights_invert, and the latent batch size comes from total_frames. "
        "Change frames, timing and add_starting/ending_frames for the length; feed the batch to an animation "
        "node pack for video.",
        (0, -300), size=(900, 200), title="Read me")
    return g


def sd15_controlnet() -> Graph:
    g = Graph("sd15_controlnet", "SD1.5: image prompt + ControlNet (canny)",
              "The reference image gives style and content, a canny edge map of a second image fixes the layout "
              "(core Canny node + Apply ControlNet).")
    g.e2e_substitutions = dict(SYNTHETIC_SD15)
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SD15_CKPT.name, _models=[SD15_CKPT])
    loader = c0.add("IPAK_UnifiedLoader", model=ckpt["MODEL"], preset="standard (medium strength)")
    ref = c0.next_group().add("LoadImage", _title="Reference image", image="ipak_reference.png")
    c1 = Column(g, 1)
    ctrl = c1.add("LoadImage", _title="Layout image", image="ipak_control.png")
    canny = c1.add("Canny", image=ctrl["IMAGE"], low_threshold=0.4, high_threshold=0.8)
    preview = c1.add("PreviewImage", images=canny[0])
    c2 = Column(g, 2)
    apply = c2.add("IPAK_Apply", model=loader["model"], ipadapter=loader["ipadapter"], image=ref["IMAGE"], weight=0.75)
    pos = c2.next_group().add("CLIPTextEncode", _title="Positive prompt", clip=ckpt["CLIP"],
                              text="a small house in a meadow, evening, painting")
    neg = c2.add("CLIPTextEncode", _title="Negative prompt", clip=ckpt["CLIP"], text=NEGATIVE)
    c3 = Column(g, 3)
    cn = c3.add("ControlNetLoader", control_net_name=CANNY_SD15.name, _models=[CANNY_SD15])
    cna = c3.add("ControlNetApplyAdvanced", positive=pos[0], negative=neg[0], control_net=cn[0], image=canny[0],
                 vae=ckpt["VAE"], strength=0.8, start_percent=0.0, end_percent=1.0)
    c4 = Column(g, 3.85)
    latent, ks = _sd_sampler(c4, apply["model"], cna["positive"], cna["negative"])
    c5 = Column(g, 4.65)
    dec, save = _decode_save(c5, ks[0], ckpt["VAE"], "ipadapter_kit/sd15_controlnet")
    g.models += [IPA_SD15, VIT_H]
    g.group("Models", [ckpt, loader], BLUE)
    g.group("Reference image", [ref], BROWN)
    g.group("Edges of the layout image", [ctrl, canny, preview], CYAN)
    g.group("Image prompt", [apply], PURPLE)
    g.group("Text prompt", [pos, neg], GREEN)
    g.group("ControlNet", [cn, cna], BROWN)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - image prompt + ControlNet\n\n"
        "IP-Adapter patches the model, ControlNet rides on the conditioning: they combine freely. The layout "
        "image goes through the core Canny node (lower the thresholds for more edges) into Apply ControlNet with "
        "control_v11p_sd15_canny (models/controlnet). Lower the ControlNet strength or end_percent if the "
        "reference's style is lost; lower the IPAdapter weight if the edges are ignored.",
        (0, -300), size=(900, 200), title="Read me")
    return g


def _flux(name: str, title: str, description: str, clip_vision: ModelHint, adapter: ModelHint, weight: float,
          note: str) -> Graph:
    g = Graph(name, title, description)
    g.e2e = DIT_E2E
    c0 = Column(g, 0)
    unet = c0.add("UNETLoader", unet_name=FLUX_DEV.name, weight_dtype="default", _models=[FLUX_DEV])
    clip = c0.add("DualCLIPLoader", clip_name1=FLUX_T5XXL.name, clip_name2=FLUX_CLIP_L.name, type="flux",
                  device="default", _models=[FLUX_T5XXL, FLUX_CLIP_L])
    vae = c0.add("VAELoader", vae_name=FLUX_AE.name, _models=[FLUX_AE])
    ref = c0.next_group().add("LoadImage", _title="Reference image", image="ipak_reference.png")
    c1 = Column(g, 1)
    cv = c1.add("CLIPVisionLoader", clip_name=clip_vision.name, _models=[clip_vision])
    ipa = c1.add("IPAK_ModelLoader", ipadapter_file=adapter.name, _models=[adapter])
    apply = c1.add("IPAK_ApplyDiT", model=unet[0], ipadapter=ipa[0], image=ref["IMAGE"], clip_vision=cv[0],
                   weight=weight, start_at=0.0, end_at=1.0, combine_embeds="concat", crop="auto")
    c2 = Column(g, 2)
    pos = c2.add("CLIPTextEncode", _title="Positive prompt", clip=clip[0],
                 text="a lighthouse on a cliff above the sea at sunset, photograph")
    guide = c2.add("FluxGuidance", conditioning=pos[0], guidance=3.5)
    neg = c2.add("CLIPTextEncode", _title="Negative prompt (unused at cfg 1)", clip=clip[0], text="")
    c3 = Column(g, 3)
    latent, ks = _sd_sampler(c3, apply["model"], guide[0], neg[0], width=1024, height=1024, steps=20, cfg=1.0,
                             sampler="euler", scheduler="simple", latent_type="EmptySD3LatentImage")
    c4 = Column(g, 3.8)
    dec, save = _decode_save(c4, ks[0], vae[0], f"ipadapter_kit/{name}")
    g.group("Flux models", [unet, clip, vae], BLUE)
    g.group("Reference image", [ref], BROWN)
    g.group("Image prompt", [cv, ipa, apply], PURPLE)
    g.group("Text prompt", [pos, guide, neg], GREEN)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(note, (0, -300), size=(900, 200), title="Read me")
    return g


def flux_xlabs() -> Graph:
    return _flux(
        "flux_xlabs", "Flux.1-dev: XLabs IP-Adapter v2",
        "FLUX.1-dev with XLabs' flux-ip-adapter-v2 (CLIP-L image embeds, 16 tokens) through IPAdapter Apply "
        "(Flux / SD3.5).", CLIP_VISION_L, XLABS_V2, 0.8,
        "IPAdapter Kit - Flux, XLabs IP-Adapter v2\n\n"
        "Files: flux1-dev (models/diffusion_models), t5xxl + clip_l (models/text_encoders), ae (models/vae), "
        "XLabs' ip_adapter.safetensors from XLabs-AI/flux-ip-adapter-v2 saved as flux-ip-adapter-v2.safetensors "
        "(models/ipadapter; v1 works too, recognised by content) and the CLIP-L vision encoder as "
        "clip_vision_l.safetensors (models/clip_vision). Flux runs at cfg 1 with Flux Guidance; weight 0.6-1.0.")


def flux_instantx() -> Graph:
    return _flux(
        "flux_instantx", "Flux.1-dev: InstantX IP-Adapter",
        "FLUX.1-dev with InstantX's FLUX.1-dev-IP-Adapter (SigLIP so400m, 128 tokens) through IPAdapter Apply "
        "(Flux / SD3.5).", SIGCLIP, INSTANTX_FLUX, 0.7,
        "IPAdapter Kit - Flux, InstantX IP-Adapter\n\n"
        "InstantX's ip-adapter.bin (5.3 GB) goes to models/ipadapter/InstantX-FLUX.1-dev-IP-Adapter/ (both InstantX "
        "files are called ip-adapter.bin), the SigLIP encoder sigclip_vision_patch14_384.safetensors to "
        "models/clip_vision: the pack reads its pooling head from that file. .bin files cannot be downloaded from "
        "the missing-models dialog: fetch them from the URL it shows. weight 0.5-0.9; instantx_v_norm switches "
        "to the Shakker-Labs value normalisation.")


def sd35_instantx() -> Graph:
    g = Graph("sd35_instantx", "SD3.5 Large: InstantX IP-Adapter",
              "Stable Diffusion 3.5 Large with InstantX's SD3.5-Large-IP-Adapter (SigLIP hidden states, per-step "
              "resampler) through IPAdapter Apply (Flux / SD3.5).")
    g.e2e = DIT_E2E
    c0 = Column(g, 0)
    ckpt = c0.add("CheckpointLoaderSimple", ckpt_name=SD35_LARGE.name, _models=[SD35_LARGE])
    clip = c0.add("TripleCLIPLoader", clip_name1=SD35_CLIP_L.name, clip_name2=SD35_CLIP_G.name,
                  clip_name3=SD35_T5XXL.name, _models=[SD35_CLIP_L, SD35_CLIP_G, SD35_T5XXL])
    ref = c0.next_group().add("LoadImage", _title="Reference image", image="ipak_reference.png")
    c1 = Column(g, 1)
    cv = c1.add("CLIPVisionLoader", clip_name=SIGCLIP.name, _models=[SIGCLIP])
    ipa = c1.add("IPAK_ModelLoader", ipadapter_file=INSTANTX_SD35.name, _models=[INSTANTX_SD35])
    apply = c1.add("IPAK_ApplyDiT", model=ckpt["MODEL"], ipadapter=ipa[0], image=ref["IMAGE"], clip_vision=cv[0],
                   weight=0.5, start_at=0.0, end_at=1.0, combine_embeds="concat", crop="auto")
    c2 = Column(g, 2)
    pos = c2.add("CLIPTextEncode", _title="Positive prompt", clip=clip[0],
                 text="a lighthouse on a cliff above the sea at sunset, photograph")
    neg = c2.add("CLIPTextEncode", _title="Negative prompt", clip=clip[0], text=NEGATIVE)
    c3 = Column(g, 3)
    latent, ks = _sd_sampler(c3, apply["model"], pos[0], neg[0], width=1024, height=1024, steps=28, cfg=4.5,
                             sampler="euler", scheduler="sgm_uniform", latent_type="EmptySD3LatentImage")
    c4 = Column(g, 3.8)
    dec, save = _decode_save(c4, ks[0], ckpt["VAE"], "ipadapter_kit/sd35_instantx")
    g.group("SD3.5 Large models", [ckpt, clip], BLUE)
    g.group("Reference image", [ref], BROWN)
    g.group("Image prompt", [cv, ipa, apply], PURPLE)
    g.group("Text prompt", [pos, neg], GREEN)
    g.group("Generate", [latent, ks, dec, save], YELLOW)
    g.note(
        "IPAdapter Kit - SD3.5 Large, InstantX IP-Adapter\n\n"
        "sd3.5_large.safetensors (models/checkpoints) has no text encoders: clip_l, clip_g and t5xxl go to "
        "models/text_encoders. InstantX's ip-adapter.bin goes to models/ipadapter/InstantX-SD3.5-Large-IP-Adapter/, "
        "the SigLIP encoder sigclip_vision_patch14_384.safetensors to models/clip_vision. InstantX's pipeline "
        "uses scale 0.5 (the weight here); try 0.4-0.8.",
        (0, -300), size=(900, 200), title="Read me")
    return g


GRAPHS = (
    sd15_basic,
    sdxl_basic,
    sd15_negative_image,
    sd15_regional_two_images,
    sdxl_style_composition,
    sd15_batch_weight_schedule,
    sd15_controlnet,
    flux_xlabs,
    flux_instantx,
    sd35_instantx,
)


def all_graphs() -> list[Graph]:
    graphs = [make() for make in GRAPHS]
    names = [g.name for g in graphs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate workflow names: {names}")
    return graphs
