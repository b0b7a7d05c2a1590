#!/usr/bin/env bash
# Benchmark: LoRA training on long sequences on the CPU — the fused attention (no T×T matrices)
# against the composed one it replaced, and gradient checkpointing (recompute each block in the
# backward pass) for memory against time. SmolLM2-135M-Instruct (dequantized f32), LoRA rank 8 on
# every linear layer, batch 4 × 1024 tokens, 2 threads. tunelab fused, tunelab composed
# (TUNELAB_PLAIN_OPS=flash_attention), tunelab fused with checkpointing and, when the peer venv
# exists (scripts/bench/setup-peers.sh), PyTorch + PEFT without and with transformers'
# gradient_checkpointing_enable, in the same invocation. One process per configuration, so each
# peak_rss_mb is that configuration's. One JSON line per result.
#   scripts/bench/long_seq.sh [steps=3] [seq=1024] [batch=4]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-3}"
seq="${2:-1024}"
batch="${3:-4}"
model="$(scripts/fetch-smollm2.sh)"
threads=2
cargo build --release --quiet
echo "# $(basename "$model"); $threads threads; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)" >&2
peers="${TUNELAB_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/peers}/bin/python"
hf="${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/bench/smollm2-hf"
if [ -x "$peers" ] && [ ! -e "$hf/config.json" ]; then
    target/release/tunelab run scripts/bench/hf_folder.rhai -- model="$model" out="$hf" >&2
fi
tunelab() {
    RAYON_NUM_THREADS=$threads target/release/tunelab run scripts/bench/sft.rhai -- \
        model="$model" targets=all steps="$steps" seq="$seq" batch="$batch" "$@"
}
peer() {
    if [ -x "$peers" ]; then
        "$peers" scripts/bench/sft_peft.py --hf "$hf" --targets all --steps "$steps" --seq "$seq" \
            --batch "$batch" --threads "$threads" "$@" 2>/dev/null
    else
        echo "# PyTorch peer not installed: run scripts/bench/setup-peers.sh" >&2
    fi
}
tunelab checkpointing=false
TUNELAB_PLAIN_OPS=flash_attention tunelab checkpointing=false attention=composed
tunelab checkpointing=true
peer
peer --checkpointing
