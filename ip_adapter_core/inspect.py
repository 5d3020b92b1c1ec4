"""Say what an adapter file is and which image encoder it needs.

    python -m ip_adapter_core.inspect FILE [FILE ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .checkpoint import load_adapter_weights, read_layout
from .detect import describe
from .dit.detect import check_file_complete, describe_dit, is_dit_state
from .dit.spec import DitAdapterSpec, format_dit_spec
from .errors import IPAdapterError
from .spec import AdapterSpec


def inspect_file(path: str) -> AdapterSpec | DitAdapterSpec:
    """Files whose tensor names are a Flux / SD3.5 adapter's are described by ip_adapter_core.dit
    (from the header: a 5 GB InstantX file is not read); every other file goes through the
    SD1.5/SDXL path exactly as before, errors included."""
    try:
        layout = read_layout(path)
    except IPAdapterError:
        layout = None  # the UNet path below reports what is wrong with the file
    if layout is not None and is_dit_state(layout):
        check_file_complete(path)
        return describe_dit(layout, os.path.basename(path))
    return describe(load_adapter_weights(path))


def format_spec(spec: AdapterSpec | DitAdapterSpec, name: str = "") -> str:
    if getattr(spec, "is_dit", False):
        return format_dit_spec(spec, name)
    lines = [f"{name}: {spec.title}" if name else spec.title]
    lines.append(f"  base model:        {spec.base.label}")
    lines.append(f"  projection:        {spec.kind.value}, {spec.tokens} tokens per image")
    lines.append(f"  cross-attention:   {spec.layers} layers, {spec.cross_attention_dim}-d tokens")
    clip = spec.clip_encoder
    if spec.needs_face:
        lines.append("  image encoder:     insightface (512-d face embedding)" + (" + CLIP" if clip else ""))
    if clip is not None:
        output = spec.clip_output or spec.encoder_output
        lines.append(f"  CLIP vision:       {clip.file_name} ({spec.encoder.value.split('+')[-1]}, {output.value})")
    if spec.resampler is not None:
        r = spec.resampler
        lines.append(f"  resampler:         dim {r.dim}, {r.heads} heads, depth {r.depth}, input {r.in_dim}")
    lines.append(f"  LoRA:              {'rank ' + str(spec.lora_rank) if spec.lora else 'none'}")
    lines.extend(f"  note: {note}" for note in spec.notes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ip_adapter_core.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="adapter files (.safetensors, .bin)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        name = os.path.basename(path)
        try:
            spec = inspect_file(path)
        except IPAdapterError as exc:
            status = 1
            if args.json:
                print(json.dumps({"file": name, "error": type(exc).__name__, "message": str(exc)}))
            else:
                print(f"{name}: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": name, **spec.to_json()}))
        else:
            print(format_spec(spec, name))
    return status


if __name__ == "__main__":
    sys.exit(main())
