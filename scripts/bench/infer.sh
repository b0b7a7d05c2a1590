#!/usr/bin/env bash
# Benchmark: inference speed on SmolLM2-135M-Instruct (Q4_1 GGUF): prompt processing of 128
# tokens and generation of 64 tokens, with 2 threads; tunelab (quantized and dequantized f32)
# and, when it is built (scripts/bench/build-llama-cpp.sh), llama.cpp's llama-bench on the same
# file and on the same weights as an F32 GGUF (the dequantized model's peer), in the same
# invocation. One JSON line per result.
#   scripts/bench/infer.sh [reps=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
reps="${1:-3}"
model="$(scripts/fetch-smollm2.sh)"
threads=2
echo "# $(basename "$model"); $threads threads; $(nproc) cores; $(date -u +%FT%TZ)" >&2
cargo build --release --quiet
# tunelab's default (CANDLE_NUM_THREADS=1: candle's element-wise pool at one thread, matrix
# products on every core), then with that pool at 2 threads as well, to show the difference.
RAYON_NUM_THREADS=$threads target/release/tunelab run scripts/bench/infer.rhai -- model="$model" reps="$reps"
CANDLE_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads target/release/tunelab run scripts/bench/infer.rhai -- model="$model" reps="$reps" \
    | sed "s/\"tool\":\"tunelab \([^\"]*\)\"/\"tool\":\"tunelab \1 (CANDLE_NUM_THREADS=$threads)\"/"
bench="${LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/llama.cpp}/build/bin/llama-bench"
if [ -x "$bench" ]; then
    # The dequantized f32 model's peer: llama.cpp on the same weights written as an F32 GGUF.
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    printf 'export_gguf(load_model("%s"), "%s/f32.gguf", #{ type: "F32" });\n' "$model" "$tmp" | target/release/tunelab >/dev/null
    LD_LIBRARY_PATH="$(dirname "$bench"):${LD_LIBRARY_PATH:-}" "$bench" -m "$model" -m "$tmp/f32.gguf" -p 128 -n 64 -t "$threads" -r "$reps" -o jsonl \
        | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    kind = "prompt_tok_s" if r["n_prompt"] > 0 else "generate_tok_s"
    print(json.dumps({"bench": "infer", "tool": "llama.cpp " + r.get("build_commit", ""), "weights": r.get("model_type", ""),
                      "prompt_tokens": r["n_prompt"], "new_tokens": r["n_gen"], kind: round(r["avg_ts"], 1)}))'
else
    echo "# llama-bench not built: scripts/bench/build-llama-cpp.sh builds it" >&2
fi
