#!/usr/bin/env bash
# The data-parallel GPU check, for a machine with NVIDIA GPUs, the CUDA binary built with NCCL
# (scripts/build-cuda.sh --features nccl) and SmolLM2's GGUF:
#   1. the same 10-step LoRA run twice on GPU 0: as a plain process, and as NCCL rank 0 of a world
#      of 1 (TUNELAB_DIST_ENGINE=nccl: init, rank 0's id, in-place sums on candle's stream); the
#      losses and the adapter files must be identical, and the all-reduce's time is printed;
#   2. with two or more GPUs, the run on 2 ranks (tunelab launch) against 1: the same again.
#   scripts/gpu/dist-check.sh [--bin target/cuda/release/tunelab] [--model SmolLM2.gguf]
# NCCL comes from PyTorch's wheels (site-packages/nvidia/nccl/lib) or build-cuda.sh's cache.
# Exit status: 0 passed, 1 a check failed, 2 setup.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="target/cuda/release/tunelab"
model="${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    *) echo "dist-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "dist-check: no CUDA binary at $bin (scripts/build-cuda.sh --features nccl)" >&2; exit 2; }
[ -f "$model" ] || { echo "dist-check: no model at $model (scripts/fetch-smollm2.sh)" >&2; exit 2; }
libs="$(python3 -c 'import nvidia, os; print(":".join(d for p in nvidia.__path__ for d in (os.path.join(p, "cu13", "lib"), os.path.join(p, "nccl", "lib")) if os.path.isdir(d)))' 2>/dev/null || true)"
cache="${TUNELAB_CUDA_DIR:-$HOME/.cache/tunelab/cuda13}"
for d in "$cache/nccl/nvidia/nccl/lib" "$cache/wheels/nvidia/cu13/lib"; do [ -d "$d" ] && libs="${libs:+$libs:}$d"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$bin" | grep -q 'not found'; then
  echo "dist-check: missing libraries:" >&2; ldd "$bin" | grep 'not found' >&2; exit 2
fi
out="$(mktemp -d)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
failed=0
same() {  # same LABEL DIR_A DIR_B
  if cmp -s "$2/adapter_model.safetensors" "$3/adapter_model.safetensors" \
      && diff <(grep -o '"loss":[^,]*' "$2/trainer_log.jsonl") <(grep -o '"loss":[^,]*' "$3/trainer_log.jsonl") >/dev/null; then
    echo "ok   $1: the same losses and adapter bytes"
  else
    echo "FAIL $1: the runs differ"; failed=1
  fi
}
args=(model="$model" steps=10)
"$bin" run scripts/gpu/dist_check.rhai -- "${args[@]}" out="$out/plain" | tail -1
TUNELAB_DIST_ENGINE=nccl RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \
  "$bin" run scripts/gpu/dist_check.rhai -- "${args[@]}" engine=nccl out="$out/nccl1" | tail -2
same "NCCL world size 1 against a plain run" "$out/plain" "$out/nccl1"
gpus="$(nvidia-smi -L 2>/dev/null | wc -l)"
if [ "$gpus" -ge 2 ]; then
  "$bin" launch --nproc-per-node 2 -- run scripts/gpu/dist_check.rhai -- "${args[@]}" out="$out/nccl2" | tail -2
  same "2 GPU ranks against one process" "$out/plain" "$out/nccl2"
else
  echo "skip 2 GPU ranks: $gpus GPU(s) here"
fi
exit $failed
