#!/usr/bin/env bash
# One run on a CUDA machine checks the GPU side, in under 8 minutes:
#   1. every test marked `gpu` (CUDA-graph decode step vs transformers on CUDA, vs the same
#      static step without a graph, vs the CPU; streaming, sampling and bfloat16 on CUDA;
#      finite bf16 gradients with fully masked rows under each SDPA backend);
#   2. the generation benchmark on CUDA, quick (one timed run per large case);
#   3. `seqweave train` under torchrun with FSDP2 and bf16 (the demo's task, with generation
#      in evaluation), and the training benchmark (BERT-base + GPT-2-small, batch 8 and 32).
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
timeout 300 python -m pytest -q -p no:cacheprovider -m gpu -rs tests/

echo "== generation benchmark on CUDA (quick)"
timeout 140 python benchmarks/generate.py --device cuda --quick --max-new-tokens 32

echo "== seqweave train: torchrun, FSDP2, bf16, evaluation with generation"
run=$(mktemp -d)/run
timeout 120 torchrun --standalone --nproc-per-node 1 -m seqweave train core/seqweave/data/demo.yaml -o "$run" \
    train.parallel=fsdp train.precision=bf16 train.max_steps=100 train.eval_generate=true
tail -2 "$run/metrics.jsonl"

echo "== training benchmark on CUDA"
timeout 150 python benchmarks/train.py --device cuda
