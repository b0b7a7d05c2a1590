#!/usr/bin/env bash
# Benchmark: LoRA training speed and peak memory on SmolLM2-135M-Instruct (dequantized f32),
# batch 4 × 256 tokens, rank 8, targets q_proj,v_proj and all, 2 threads; tunelab and, when the
# peer venv exists (scripts/bench/setup-peers.sh: PyTorch + transformers + PEFT), the same step
# in PyTorch, in the same invocation, from tunelab's f32 Hugging Face export of the same GGUF.
# One JSON line per result.
# DTYPE=bf16 runs tunelab with dtype bf16 and the peer under bf16 autocast (transformers'
# bf16=True), both for CPUs with bfloat16 instructions.
#   [DTYPE=f32|bf16] scripts/bench/sft.sh [steps=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-3}"
dtype="${DTYPE:-f32}"
peer_flags=()
[ "$dtype" = bf16 ] && peer_flags=(--bf16)
model="$(scripts/fetch-smollm2.sh)"
threads=2
echo "# $(basename "$model"); $threads threads; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)" >&2
cargo build --release --quiet
peers="${TUNELAB_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/peers}/bin/python"
hf="${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/bench/smollm2-hf"
if [ -x "$peers" ] && [ ! -e "$hf/config.json" ]; then
    target/release/tunelab run scripts/bench/hf_folder.rhai -- model="$model" out="$hf" >&2
fi
for targets in q_proj,v_proj all; do
    RAYON_NUM_THREADS=$threads target/release/tunelab run scripts/bench/sft.rhai -- \
        model="$model" targets="$targets" steps="$steps" dtype="$dtype"
    if [ -x "$peers" ]; then
        "$peers" scripts/bench/sft_peft.py --hf "$hf" --targets "$targets" --steps "$steps" \
            --threads "$threads" "${peer_flags[@]}" 2>/dev/null
    else
        echo "# PyTorch peer not installed: run scripts/bench/setup-peers.sh" >&2
    fi
done
