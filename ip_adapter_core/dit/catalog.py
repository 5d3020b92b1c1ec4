"""The published DiT IP-Adapter files: descriptions, sizes, dtypes and key tables.

Facts from the project reference (HF listings, strict loaders and size arithmetic); the real
files were not available here, so dtypes marked `dtype_known=False` are inferred.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layouts
from .spec import DitAdapterSpec, DitKind


@dataclass(frozen=True)
class PublishedDitAdapter:
    file_name: str
    repo: str
    spec: DitAdapterSpec
    container: str  # "safetensors" (flat, published names) or "bin" (pickled nested dict)
    dtype: str  # "bf16" / "fp16"; for XLabs a 2-byte type that the listings do not name
    dtype_known: bool
    listed_size: str  # as the HF listing shows it
    parameters: int  # from the key table; x2 bytes = the listed size
    sha256: str | None = None
    aliases: tuple[str, ...] = ()
    licence: str = ""

    @property
    def approx_bytes(self) -> int:
        return self.parameters * 2

    def layout(self) -> dict[str, tuple[int, ...]]:
        return layouts.published_layout(self.spec)


XLABS_V1 = PublishedDitAdapter(
    "ip_adapter.safetensors", "XLabs-AI/flux-ip-adapter", layouts.xlabs_spec(4), "safetensors", "2-byte (bf16 or fp16)",
    False, "982 MB", 490_874_880, "750f912149b84bbb0c2a6ce90ffa7e78afd1795821407718724ebcd36372dc2d",
    aliases=("flux-ip-adapter.safetensors",), licence="FLUX.1-dev non-commercial",
)
XLABS_V2 = PublishedDitAdapter(
    "ip_adapter.safetensors", "XLabs-AI/flux-ip-adapter-v2", layouts.xlabs_spec(16), "safetensors",
    "2-byte (bf16 or fp16)", False, "1.06 GB", 528_672_768,
    "8f2bfddaffc4fe2a6667bef24c8ce6075e81d01d0f6b0f9adbe46ad686057ee2", licence="apache-2.0 (model card)",
)
INSTANTX_FLUX = PublishedDitAdapter(
    "ip-adapter.bin", "InstantX/FLUX.1-dev-IP-Adapter", layouts.instantx_flux_spec(), "bin", "bf16", True,
    "5.29 GB", 2_645_600_512, licence="FLUX.1-dev non-commercial",
)
INSTANTX_SD35 = PublishedDitAdapter(
    "ip-adapter.bin", "InstantX/SD3.5-Large-IP-Adapter", layouts.sd35_spec(), "bin", "fp16", True, "1.6 GB",
    797_925_888, aliases=("ip-adapter_diffusers.safetensors", "ip-adapter_diffusers.bin"),
    licence="stabilityai-ai-community",
)

PUBLISHED_DIT: tuple[PublishedDitAdapter, ...] = (XLABS_V1, XLABS_V2, INSTANTX_FLUX, INSTANTX_SD35)


def published_for(spec: DitAdapterSpec) -> PublishedDitAdapter | None:
    """The published file with exactly this description, if any."""
    for entry in PUBLISHED_DIT:
        if entry.spec == spec:
            return entry
    return None


def suggested_download(kind: DitKind, tokens: int | None = None) -> str:
    for entry in PUBLISHED_DIT:
        if entry.spec.kind is kind and (tokens is None or entry.spec.tokens == tokens):
            return f"'{entry.file_name}' from huggingface.co/{entry.repo}"
    raise KeyError(kind)
