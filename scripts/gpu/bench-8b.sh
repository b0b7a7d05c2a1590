#!/usr/bin/env bash
# LoRA at Llama-3-8B's shape on one GPU (issue 25), tunelab and PyTorch + PEFT in one invocation:
# rank 16 on every linear layer, bf16 base (and tunelab on a Q4_K_M base), sequences of 1024 and
# 2048 tokens. Needs the CUDA binary (scripts/build-cuda.sh) and, for the peer, Python with torch,
# transformers and peft. Prepared on a CPU machine; not yet run on a GPU.
# With --checkpointing both recompute each block in the backward pass (memory against time).
#   scripts/gpu/bench-8b.sh [--bin target/cuda/release/tunelab] [--batch 4] [--steps 5] [--checkpointing]
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="target/cuda/release/tunelab"; batch=4; steps=5; checkpointing=false
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --checkpointing) checkpointing=true; shift ;;
    *) echo "bench-8b: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "bench-8b: no CUDA binary at $bin (scripts/build-cuda.sh)" >&2; exit 2; }
libs="$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__ if os.path.isdir(os.path.join(p, "cu13", "lib"))))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
for seq in 1024 2048; do
  for base in bf16 q4; do
    "$bin" run scripts/gpu/bench_8b.rhai -- seq="$seq" batch="$batch" steps="$steps" base="$base" checkpointing="$checkpointing" | grep -E '^(BENCH8B|PARITY)'
  done
  if python3 -c "import torch, transformers, peft" 2>/dev/null; then
    peer_flags=()
    [ "$checkpointing" = true ] && peer_flags=(--checkpointing)
    python3 scripts/gpu/bench_8b_peft.py --seq "$seq" --batch "$batch" --steps "$steps" "${peer_flags[@]}"
  else
    echo "# PyTorch + PEFT not importable: peer skipped"
  fi
done
