"""Info node: what an adapter file is and which image encoder it needs."""

from __future__ import annotations

from ..ip_adapter_core.inspect import format_spec, inspect_file
from . import paths
from ._api import Input, NodeResult, NodeSpec, Output, PackNode


class AdapterInfo(PackNode):
    SPEC = NodeSpec(
        node_id="IPAK_AdapterInfo",
        display_name="IPAdapter Info",
        category="ipadapter/utils",
        description="Reads an adapter file and says what it is: base model, projection, tokens, and "
        "which CLIP vision / insightface encoder it needs. Use it to check a download.",
        inputs=lambda: [
            Input("ipadapter_file", "COMBO", "An adapter file from the models/ipadapter folders.", options=paths.adapter_files),
        ],
        outputs=[Output("STRING", "info", "Human-readable description of the file.")],
        output_node=True,
    )

    @classmethod
    def run(cls, ipadapter_file: str) -> NodeResult:
        text = format_spec(inspect_file(paths.adapter_path(ipadapter_file)), ipadapter_file)
        return NodeResult((text,), ui={"text": [text]})


NODES = [AdapterInfo]
