#!/usr/bin/env bash
# One run on a CUDA machine checks all of generation's GPU side, in under 5 minutes:
#   1. the GPU tests (CUDA-graph decode step vs transformers on CUDA, vs the same static
#      step without a graph, vs the CPU; streaming, sampling and bfloat16 on CUDA);
#   2. the generation benchmark on CUDA, quick (one timed run per large case).
# Usage: benchmarks/gpu_check.sh   (from anywhere; uses the python on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
PY

echo "== GPU tests"
timeout 300 python -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_generation_gpu.py tests/test_finetuning_helpers.py

echo "== generation benchmark on CUDA (quick)"
timeout 140 python benchmarks/generate.py --device cuda --quick --max-new-tokens 32
