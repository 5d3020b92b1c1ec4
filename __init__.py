"""IPAdapter Kit: IP-Adapter image prompts for ComfyUI.

ComfyUI imports this package from `custom_nodes/`. Hosts with the V3 node API
(`comfy_api`, ComfyUI >= 0.3.47) get `comfy_entrypoint`; older hosts get the classic
`NODE_CLASS_MAPPINGS` form of the same nodes.
"""

from .nodes import NODE_CLASSES
from .nodes._api import build_v1, build_v3

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:  # host older than 0.3.47
    io = None

if io is not None:

    class IPAdapterKitExtension(ComfyExtension):
        async def get_node_list(self):
            return build_v3(NODE_CLASSES, io)

    async def comfy_entrypoint() -> IPAdapterKitExtension:
        return IPAdapterKitExtension()

else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_v1(NODE_CLASSES)

NODE_IDS = [node.SPEC.node_id for node in NODE_CLASSES]
