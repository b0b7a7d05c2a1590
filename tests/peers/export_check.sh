#!/usr/bin/env bash
# Issue 8's acceptance, run by hand where the peers are installed (they are not project
# dependencies): an adapter tunelab trains on SmolLM2
#   - loads in PEFT on the Hugging Face SmolLM2 folder tunelab writes, with tunelab's greedy answer;
#   - merged by tunelab into a Hugging Face folder, gives transformers the same answer and logits;
#   - as llama.cpp's LoRA GGUF, applied with --lora to the base GGUF, gives llama.cpp the answer
#     the merged GGUF gives.
#   tests/peers/export_check.sh [steps=30]
# Peers: PYTHON (default ~/.cache/tunelab/peers/bin/python, with torch, transformers, peft) and
# LLAMA_BIN (default ~/.cache/tunelab/llama.cpp/build/bin, from scripts/bench/build-llama-cpp.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-30}"
python="${PYTHON:-$HOME/.cache/tunelab/peers/bin/python}"
bin="${LLAMA_BIN:-$HOME/.cache/tunelab/llama.cpp/build/bin}"
model="$(scripts/fetch-smollm2.sh)"
out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
cargo build --release --quiet
target/release/tunelab run tests/peers/export_check.rhai -- model="$model" out="$out" steps="$steps"
"$python" tests/peers/export_check.py "$out"
prompt="$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt"], end="")' "$out/tunelab.json")"
complete() {
  LD_LIBRARY_PATH="$bin" "$bin/llama-completion" -t 2 -c 256 -n 24 --temp 0 -no-cnv --no-display-prompt \
    --simple-io -p "$prompt" "$@" 2>/dev/null
}
with_lora="$(complete -m "$out/base-f32.gguf" --lora "$out/adapter.gguf")"
merged="$(complete -m "$out/merged-f32.gguf")"
base="$(complete -m "$out/base-f32.gguf")"
echo "llama.cpp base:            ${base}"
echo "llama.cpp base --lora:     ${with_lora}"
echo "llama.cpp merged GGUF:     ${merged}"
if [ "$with_lora" = "$merged" ] && [ "$with_lora" != "$base" ]; then
  echo "llama.cpp: --lora gives the merged model's answer, which differs from the base's"
else
  echo "llama.cpp: MISMATCH (or the adapter changed nothing)"; exit 1
fi
