"""Host-free IP-Adapter core: checkpoints, recognition, projections, decoupled attention.

Nothing here imports ComfyUI; the nodes in `nodes/` wire this into the host.
"""

from .adapter import IPAdapterModel, LayerKV
from .attention import ImageBranch, add_image_attention, attention, decoupled_attention
from .checkpoint import AdapterWeights, load_adapter_weights, split_adapter_state
from .detect import describe
from .errors import IPAdapterError
from .spec import AdapterSpec, BaseModel, EncoderOutput, ImageEncoder, ProjectionKind

__all__ = [
    "AdapterSpec",
    "AdapterWeights",
    "BaseModel",
    "EncoderOutput",
    "IPAdapterError",
    "IPAdapterModel",
    "ImageBranch",
    "ImageEncoder",
    "LayerKV",
    "ProjectionKind",
    "add_image_attention",
    "attention",
    "decoupled_attention",
    "describe",
    "load_adapter_weights",
    "split_adapter_state",
]
