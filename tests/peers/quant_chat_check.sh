#!/usr/bin/env bash
# Issue 7's acceptance, run by hand where llama.cpp is built (it is not a project dependency):
# llama-cli chats with a Q8_0 GGUF that tunelab exported from a LoRA-tuned SmolLM2 (the adapter
# merged on the way), using the chat template the file carries, and answers as the tuned model
# does in tunelab; the base model's Q8_0 file does not give that answer.
#   tests/peers/quant_chat_check.sh [steps=30]
# LLAMA_BIN: llama.cpp's tools (default ~/.cache/tunelab/llama.cpp/build/bin; llama-cli is built by
# scripts/bench/build-llama-cpp.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-30}"
bin="${LLAMA_BIN:-$HOME/.cache/tunelab/llama.cpp/build/bin}"
model="$(scripts/fetch-smollm2.sh)"
out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
cargo build --release --quiet
target/release/tunelab run tests/peers/quant_chat_check.rhai -- model="$model" out="$out" steps="$steps"
question="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["question"], end="")' "$out/tunelab.json")"
# One greedy turn of llama-cli's chat; its answer is the text between the echoed question and
# "Exiting...".
ask() {
  LD_LIBRARY_PATH="$bin" "$bin/llama-cli" -m "$1" -p "$question" -st --temp 0 -n 24 -t 2 \
    --simple-io --no-show-timings --no-warmup </dev/null 2>/dev/null |
    sed -n "/^> /,/^Exiting/p" | sed '1d;/^Exiting/d' | tr '\n' ' ' | sed 's/  */ /g;s/^ //;s/ $//'
}
base="$(ask "$out/base-q8_0.gguf")"
tuned="$(ask "$out/tuned-q8_0.gguf")"
echo "llama-cli, base Q8_0:  $base"
echo "llama-cli, tuned Q8_0: $tuned"
if [[ "$tuned" == *Tuna* ]] && [[ "$base" != *Tuna* ]]; then
  echo "llama-cli: the tuned Q8_0 file answers as the tuned model (Tuna); the base file does not"
else
  echo "llama-cli: the tuned answer is missing"; exit 1
fi
