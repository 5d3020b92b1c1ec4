#!/usr/bin/env bash
# Short follow-up run: kernel check and the two cases that decide the targets.
set -uo pipefail
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export COMFYUI_PATH="${COMFYUI_PATH:-.cache/comfyui-2.22.2}" PYTHONUNBUFFERED=1
timeout 60 python3 bench/check_fused.py --json "$OUT/check_fused.json" > "$OUT/check_fused.log" 2>&1 || echo "check_fused FAILED"
tail -22 "$OUT/check_fused.log"
timeout 110 python3 bench/bench.py --device cuda --arch sdxl --res 1024 --batch 1 --kind linear --extra sdxl:1024:1:linear:2:mask:sched --extra sd15:512:1:linear:1 --repeats 5 --json "$OUT/bench_quick.json" 2>&1 | grep -v "torchaudio\|UserWarning\|_warn_once" | tee "$OUT/bench_quick.log" || echo "bench FAILED"
