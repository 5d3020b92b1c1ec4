"""ComfyUI nodes of the pack. One module per node family; ids never change once shipped."""

from . import paths
from .apply import NODES as _APPLY
from .batch import NODES as _BATCH
from .dit import NODES as _DIT
from .embeds import NODES as _EMBEDS
from .faceid import NODES as _FACEID
from .info import NODES as _INFO
from .loaders import NODES as _LOADERS
from .regional import NODES as _REGIONAL
from .style import NODES as _STYLE
from .tiled import NODES as _TILED

paths.register_model_folders()

NODE_CLASSES = [*_LOADERS, *_APPLY, *_INFO, *_FACEID, *_STYLE, *_BATCH, *_TILED, *_REGIONAL, *_EMBEDS, *_DIT]
