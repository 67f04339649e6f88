#!/usr/bin/env bash
# Caption + filter images/s at base size (ViT-B/16 + BERT-base, 384 px, bf16) on one NVIDIA GPU:
# the CapFilt Ray Data graph (captioner and filter actors sharing the GPU, 0.5 each) against the
# same two models alone in one process, on the same 512 synthetic images.
#
#     bash bench/gpu.sh                      # from anywhere; the repo is this script's parent
#     IMAGES=1024 bash bench/gpu.sh --stats  # more images; extra flags go to bench.graph
#
# Needs: an NVIDIA driver (nvidia-smi) and the repo's .venv with a CUDA build of torch; when
# .venv is missing it runs `make install` first (that needs the package index). Builds its data
# and a random-weight base checkpoint (~1.7 GB) in a temporary folder and downloads nothing else.
# The benchmark is stopped after LIMIT seconds (default: what is left of 7 min 40 s since the
# script started, install included), so the whole script ends within 8 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
export PYTHONUNBUFFERED=1
IMAGES=${IMAGES:-512}
start=$(date +%s)

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bench/gpu.sh: nvidia-smi not found: this machine has no NVIDIA driver" >&2
    exit 1
fi
echo "== nvidia-smi"
nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,clocks.max.sm,power.limit \
    --format=csv
echo "cores: $(nproc), memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"

if [ ! -x .venv/bin/python ]; then
    echo "== .venv is missing: make install"
    make install
fi
PY=.venv/bin/python
$PY - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"bench/gpu.sh: torch {torch.__version__} sees no CUDA device (a CPU-only build, or no driver)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

LIMIT=${LIMIT:-$(( 460 - ($(date +%s) - start) ))}
if [ "$LIMIT" -lt 60 ]; then
    echo "bench/gpu.sh: only ${LIMIT} s of the 8 minutes left after set-up: run it again now that .venv exists" >&2
    exit 1
fi
echo "== bench.graph --preset base --images $IMAGES --precision bf16 --gpu $*"
status=0
timeout --signal=INT --kill-after=20 "$LIMIT" \
    $PY -m bench.graph --preset base --images "$IMAGES" --precision bf16 --gpu "$@" || status=$?
if [ "$status" -eq 124 ]; then
    echo "bench/gpu.sh: bench.graph stopped after ${LIMIT} s (LIMIT); try fewer IMAGES" >&2
fi

echo "== nvidia-smi after"
nvidia-smi --query-gpu=memory.used,utilization.gpu,temperature.gpu --format=csv
echo "bench/gpu.sh done in $(( $(date +%s) - start )) s (exit $status)"
exit "$status"
