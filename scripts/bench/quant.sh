#!/usr/bin/env bash
# Benchmark: time to quantize SmolLM2-135M from F32 to Q8_0, Q4_0, Q4_K_M and Q6_K with
# `tunelab quantize`, and with llama.cpp's llama-quantize on the same input in the same run when
# it is installed (scripts/bench/build-llama-cpp.sh). The F32 input is tunelab's export of the
# SmolLM2 GGUF. One JSON line per measurement; seconds are wall time, the best of `reps`.
#   scripts/bench/quant.sh [reps=3] [threads=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
reps="${1:-3}"
threads="${2:-2}"
model="$(scripts/fetch-smollm2.sh)"
quantize="${LLAMA_QUANTIZE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/llama.cpp/build/bin/llama-quantize}"
cargo build --release --quiet
bin=target/release/tunelab
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
printf 'export_gguf(load_model("%s"), "%s/f32.gguf", #{ type: "F32" });\n' "$model" "$tmp" | "$bin" >/dev/null
echo "# input $(du -m "$tmp/f32.gguf" | cut -f1) MB F32; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)" >&2
best() { # best wall seconds of $reps runs of "$@"
  local b=""
  for _ in $(seq "$reps"); do
    local s e
    s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    b=$(python3 -c "print(min(float('${b:-1e9}'), $e - $s))")
  done
  echo "$b"
}
for preset in Q8_0 Q4_0 Q4_K_M Q6_K; do
  ours=$(RAYON_NUM_THREADS=$threads best "$bin" quantize "$tmp/f32.gguf" "$tmp/ours.gguf" "$preset")
  peer=null
  if [ -x "$quantize" ]; then
    peer=$(best "$quantize" "$tmp/f32.gguf" "$tmp/theirs.gguf" "$preset" "$threads")
  fi
  python3 -c "import json; o=$ours; p=$peer; print(json.dumps({'bench': 'quantize', 'preset': '$preset', 'threads': $threads, 'tunelab_s': round(o, 2), 'llama_quantize_s': None if p is None else round(p, 2), 'ratio': None if p is None else round(p / o, 2)}))"
done
