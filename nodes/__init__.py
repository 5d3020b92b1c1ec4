"""ComfyUI nodes of the pack. One module per node family; ids never change once shipped."""

from . import paths
from .apply import NODES as _APPLY
from .info import NODES as _INFO
from .loaders import NODES as _LOADERS

paths.register_model_folders()

NODE_CLASSES = [*_LOADERS, *_APPLY, *_INFO]
