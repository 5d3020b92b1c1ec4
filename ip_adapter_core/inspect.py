"""Say what an adapter file is and which image encoder it needs.

    python -m ip_adapter_core.inspect FILE [FILE ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .checkpoint import load_adapter_weights
from .detect import describe
from .errors import IPAdapterError
from .spec import AdapterSpec


def inspect_file(path: str) -> AdapterSpec:
    return describe(load_adapter_weights(path))


def format_spec(spec: AdapterSpec, name: str = "") -> str:
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
