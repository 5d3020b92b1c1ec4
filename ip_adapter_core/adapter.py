"""An adapter as one `nn.Module`: image projection + per-layer K/V projections."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import AdapterWeights
from .detect import describe
from .errors import EncoderMismatchError, UnknownLayoutError
from .projection import build_projection
from .spec import AdapterSpec, EncoderOutput, ProjectionKind


class KVLayer(nn.Module):
    def __init__(self, cross_dim: int, width: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, width, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, width, bias=False)


@dataclass
class LayerKV:
    """Image keys and values of one cross-attention layer: [n, tokens, width]."""

    k: torch.Tensor
    v: torch.Tensor


class IPAdapterModel(nn.Module):
    """Weights of one adapter file. `project` makes image tokens; `layer_kv` makes K/V."""

    def __init__(self, spec: AdapterSpec):
        super().__init__()
        self.spec = spec
        self.image_proj = build_projection(spec)
        self.ip_layers = nn.ModuleList(KVLayer(spec.cross_attention_dim, w) for w in spec.layer_widths)
        self.lora: dict[str, torch.Tensor] = {}

    @classmethod
    def from_weights(cls, weights: AdapterWeights, spec: AdapterSpec | None = None, dtype: torch.dtype | None = None) -> "IPAdapterModel":
        spec = spec or describe(weights)
        with torch.device("meta"):
            model = cls(spec)
        state = {f"image_proj.{k}": v for k, v in weights.image_proj.items()}
        lora = {}
        for key, value in weights.ip_adapter.items():
            number, _, rest = key.partition(".")
            if rest in ("to_k_ip.weight", "to_v_ip.weight"):
                state[f"ip_layers.{(int(number) - 1) // 2}.{rest}"] = value
            else:
                lora[key] = value
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as exc:  # size mismatch
            raise UnknownLayoutError(f"'{weights.source}': tensors do not fit the {spec.title}: {exc}") from exc
        if missing or unexpected:
            raise UnknownLayoutError(
                f"'{weights.source}': tensors do not fit the detected {spec.title} "
                f"(missing {missing[:4]}, unexpected {unexpected[:4]})."
            )
        model.lora = lora
        return model

    def project(
        self,
        features: torch.Tensor,
        clip_features: torch.Tensor | None = None,
        faceid_v2: bool = False,
        faceid_v2_scale: float = 1.0,
    ) -> torch.Tensor:
        """Image features -> tokens [n, tokens, cross_dim].

        `features` is what `spec.encoder_output` names (CLIP image_embeds [n, d], CLIP
        penultimate hidden states [n, 257, d], or face embeddings [n, 512]);
        FaceID-Plus also takes `clip_features` of the face crops."""
        spec = self.spec
        check_features(spec, features, spec.encoder_output, spec.feature_dim)
        p = next(self.image_proj.parameters())
        features = features.to(p.device, p.dtype)
        if spec.kind is ProjectionKind.FACEID_PLUS:
            if clip_features is None:
                raise EncoderMismatchError(
                    f"{spec.title} needs CLIP penultimate hidden states of the face crops as well "
                    "as the face embeddings."
                )
            check_features(spec, clip_features, EncoderOutput.PENULTIMATE, spec.clip_dim or 0)
            return self.image_proj(features, clip_features.to(p.device, p.dtype), shortcut=faceid_v2, scale=faceid_v2_scale)
        return self.image_proj(features)

    def layer_kv(self, tokens: torch.Tensor) -> list[LayerKV]:
        """Tokens [n, T, D] -> K/V for every layer, in checkpoint order."""
        w = self.ip_layers[0].to_k_ip.weight
        tokens = tokens.to(w.device, w.dtype)
        return [LayerKV(layer.to_k_ip(tokens), layer.to_v_ip(tokens)) for layer in self.ip_layers]


def check_features(spec: AdapterSpec, features: torch.Tensor, output: EncoderOutput, width: int) -> None:
    """Refuse features of the wrong kind or width with a message naming the right encoder."""
    sequence = output is EncoderOutput.PENULTIMATE
    want_ndim = 3 if sequence else 2
    clip = spec.clip_encoder
    need = f"'{clip.file_name}' ({spec.encoder.value})" if clip and output is not EncoderOutput.FACE else spec.encoder.value
    if features.ndim != want_ndim:
        found = "a token sequence" if features.ndim == 3 else "pooled vectors" if features.ndim == 2 else f"{features.ndim}-d data"
        raise EncoderMismatchError(
            f"{spec.title} needs {output.value} ({'[images, tokens, width]' if sequence else '[images, width]'}) "
            f"but got {found} of shape {list(features.shape)}. Encode the image with the encoder "
            f"the adapter needs: {need}."
        )
    if features.shape[-1] != width:
        from .spec import CLIP_ENCODERS

        guess = next(
            (
                f" (that is {info.encoder.value})"
                for info in CLIP_ENCODERS.values()
                if (info.hidden_size if sequence else info.projection_dim) == features.shape[-1]
            ),
            "",
        )
        raise EncoderMismatchError(
            f"{spec.title} needs {width}-d {output.value} but got {features.shape[-1]}-d features"
            f"{guess}. Use the image encoder {need}."
        )
    if sequence and clip is not None and output is not EncoderOutput.FACE and features.shape[1] != clip.tokens:
        raise EncoderMismatchError(
            f"{spec.title} needs {clip.tokens} tokens ({clip.image_size}px images through {need}) but "
            f"got {features.shape[1]}. Use the image encoder {need}."
        )
