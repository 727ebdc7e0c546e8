#!/usr/bin/env bash
# One run on a CUDA machine checks the GPU side. Sections (all by default; pick with SECTIONS="..."):
#   tests   every test marked `gpu`: the CUDA-graph decode step (kept across calls, compiled or not)
#           vs transformers on CUDA, vs the same static step without a graph, vs the CPU; streaming,
#           sampling and bfloat16 on CUDA; finite bf16 gradients with fully masked rows per SDPA
#           backend. Generation parity on CUDA runs on the 8 pairings matching bert2gpt2, roberta2roberta
#           or bert2bert (all of them on the CPU).
#   decode  issue 12's table (benchmarks/gpu_decode.py, with a batch-1 sampling row): transformers dynamic / static cache vs
#           seqweave and seqweave compile=True, bf16 and fp32, ms per step, tokens equal, memory,
#           fixed cost per call, and a profile of one decode step.
#   train   `seqweave train` under torchrun with FSDP2 and bf16 (the demo's task, generation in
#           evaluation).
#   bench   the older benchmarks on CUDA: benchmarks/generate.py (quick) and benchmarks/train.py.
# DECODE_ARGS replaces the decode section's flags (default: --profile --profile-cases batch --repeats 3
# --budget-s 270: a profile of every case, batch 64 and beam search included).
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (from anywhere; uses the python on PATH; OUT_DIR gets
#        decode.json and the logs, default a temporary folder). About 8 minutes with every section.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
out=${1:-$(mktemp -d)}
mkdir -p "$out"
sections=${SECTIONS:-tests decode train bench}
status=0
py=$(command -v python || command -v python3)

"$py" - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
PY

for section in $sections; do
    case $section in
    tests)
        echo "== GPU tests"
        timeout 300 "$py" -m pytest -q -p no:cacheprovider -m gpu -rs tests/ --ignore=tests/test_generation_gpu.py \
            2>&1 | tee "$out/gpu_tests.log" | tail -15 || status=1
        timeout 360 "$py" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_generation_gpu.py \
            -k "bert2gpt2 or roberta2roberta or bert2bert or torch_compile" 2>&1 | tee "$out/gpu_generation_tests.log" | tail -15 \
            || status=1
        ;;
    decode)
        echo "== issue 12: decode on the GPU (benchmarks/gpu_decode.py)"
        # shellcheck disable=SC2086  # DECODE_ARGS is a list of flags
        timeout 330 "$py" benchmarks/gpu_decode.py ${DECODE_ARGS:---profile --profile-cases batch --repeats 3 --budget-s 270} \
            --json "$out/decode.json" \
            2>&1 | grep -v "Loading\|Writing" | tee "$out/decode.log" || status=1
        ;;
    train)
        echo "== seqweave train: torchrun, FSDP2, bf16, evaluation with generation"
        run=$(mktemp -d)/run
        timeout 150 torchrun --standalone --nproc-per-node 1 -m seqweave train core/seqweave/data/demo.yaml -o "$run" \
            train.parallel=fsdp train.precision=bf16 train.max_steps=100 train.eval_generate=true \
            2>&1 | tee "$out/train.log" | tail -5 || status=1
        tail -2 "$run/metrics.jsonl" || status=1
        ;;
    bench)
        echo "== generation benchmark on CUDA (quick)"
        timeout 140 "$py" benchmarks/generate.py --device cuda --quick --max-new-tokens 32 || status=1
        echo "== training benchmark on CUDA"
        timeout 150 "$py" benchmarks/train.py --device cuda || status=1
        ;;
    *) echo "unknown section $section"; status=1 ;;
    esac
done
exit $status
