"""Example workflows of IPAdapter Kit, written once in Python.

`workflows/source.py` holds every graph; `python -m workflows.build` (or
`scripts/build_workflows.py`) renders each one into the two formats ComfyUI uses:

- `example_workflows/<name>.json`: the UI ("Save") format, litegraph JSON version 0.4, which
  ComfyUI's template browser lists for this pack and which loads by drag-and-drop;
- `workflows/api/<name>.json`: the API format for `POST /prompt` (headless runs, the demo).

Widget order comes from the node definitions the host reports (object_info), so both files of
a workflow are derived from the same graph and cannot drift apart; `--check` fails if a
committed file differs from what the sources give.

Host-free modules: `graph` (the graph description), `source` (the workflows), `objectinfo`
(widget layout from node definitions), `convert` (UI -> API), `images` (reference pictures
for tests). `build` needs a ComfyUI host for the node definitions (tests/host.py).
"""
