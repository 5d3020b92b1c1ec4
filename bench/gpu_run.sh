#!/usr/bin/env bash
# One prepared run on the lent GPU (see bench/RESULTS.md): kernel and direct-launch check, then the
# benchmark (none, floor, ours = direct launch, ours-triton = Triton's launcher, ours-plain).
# Try it on CPU first: TRITON_INTERPRET=1 python bench/check_fused.py --smoke
# Needs the ComfyUI tree and the torchsde/trampoline wheels carried along:
#   carry: .cache/comfyui-2.22.2, .whl
set -uo pipefail
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export COMFYUI_PATH="${COMFYUI_PATH:-.cache/comfyui-2.22.2}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 90 python3 bench/check_fused.py --json "$OUT/check_fused.json" 2>&1 | tee "$OUT/check_fused.log" || echo "check_fused FAILED"
timeout 180 python3 bench/bench.py --device cuda --arch sd15 --res 512 --batch 1 4 --kind linear plus --repeats 5 --json "$OUT/bench_sd15.json" 2>&1 | grep -v "torchaudio" | tee "$OUT/bench_sd15.log" || echo "bench sd15 FAILED"
timeout 240 python3 bench/bench.py --device cuda --arch sdxl --res 1024 --batch 1 --kind linear plus --extra sdxl:1024:1:linear:2:mask:sched --repeats 5 --json "$OUT/bench_sdxl.json" 2>&1 | grep -v "torchaudio" | tee "$OUT/bench_sdxl.log" || echo "bench sdxl FAILED"
