"""Write docs/nodes.md, the node reference, from the nodes' own definitions.

    .venv/bin/python scripts/node_reference.py          # rewrite docs/nodes.md
    .venv/bin/python scripts/node_reference.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

TARGET = REPO / "docs" / "nodes.md"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _kind(i) -> str:
    if i.type == "COMBO":
        opts = i.choices()
        if len(opts) > 8 or any(len(o) > 40 for o in opts):
            return "choice"
        return "choice: " + ", ".join(f"`{o}`" for o in opts)
    extra = []
    if i.default not in (None, ""):
        extra.append(f"default {i.default}")
    if i.min is not None and i.max is not None:
        extra.append(f"{i.min}..{i.max}")
    return f"`{i.type}`" + (f" ({', '.join(extra)})" if extra else "")


def render(node_classes) -> str:
    out = [
        "# Node reference",
        "",
        "Generated from the node definitions by `scripts/node_reference.py`; do not edit by hand.",
        "Node ids (the `type` in saved workflows) never change once released.",
        "",
    ]
    by_category: dict[str, list] = {}
    for node in node_classes:
        by_category.setdefault(node.SPEC.category, []).append(node)
    for category in sorted(by_category):
        out += [f"## {category}", ""]
        for node in by_category[category]:
            spec = node.SPEC
            out += [f"### {spec.display_name} (`{spec.node_id}`)", "", _cell(spec.description), ""]
            inputs = spec.input_list()
            if inputs:
                out += ["| input | type | what it does |", "|---|---|---|"]
                for i in inputs:
                    name = f"{i.name}{' (optional)' if i.optional else ''}"
                    out.append(f"| {name} | {_cell(_kind(i))} | {_cell(i.tooltip)} |")
                out.append("")
            if spec.outputs:
                out += ["| output | type | what it is |", "|---|---|---|"]
                for o in spec.outputs:
                    out.append(f"| {o.name} | `{o.type}` | {_cell(o.tooltip)} |")
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def build() -> str:
    import host

    host.import_comfy()
    pack = host.import_pack()
    from ipadapter_kit.nodes import NODE_CLASSES

    assert pack.NODE_IDS == [n.SPEC.node_id for n in NODE_CLASSES]
    return render(NODE_CLASSES)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with docs/nodes.md instead of writing it")
    args = ap.parse_args()
    text = build()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            sys.stderr.write("docs/nodes.md is out of date: run scripts/node_reference.py\n")
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text)
    sys.stdout.write(f"wrote {TARGET.relative_to(REPO)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
