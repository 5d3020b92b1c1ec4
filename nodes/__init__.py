"""ComfyUI nodes of the pack. One module per node family; ids never change once shipped."""

from . import paths
from .info import NODES as _INFO

paths.register_model_folders()

NODE_CLASSES = [*_INFO]
