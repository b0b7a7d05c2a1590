#!/usr/bin/env bash
# A low-rank compensation adapter, exported as a llama.cpp LoRA GGUF, measured by llama-perplexity
# beside tunelab's own figure for the same base, adapter and text (README "Activations and
# low-rank"). tunelab computes as llama.cpp's CPU kernels do here (activations: "ggml").
#
#   scripts/bench/lowrank_llama_cpp.sh [SMOLLM2.gguf]
#
# Needs llama-perplexity (scripts/bench/build-llama-cpp.sh) and a release build of tunelab.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
model="${1:-$HOME/.cache/tunelab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
llama="${LLAMA_CPP_BIN:-$HOME/.cache/tunelab/llama.cpp/build/bin}"
[ -x "$llama/llama-perplexity" ] || { echo "no llama-perplexity in $llama: run scripts/bench/build-llama-cpp.sh" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
eval_text=/usr/share/common-licenses/Apache-2.0
cat > "$out/make.rhai" <<RHAI
let model = load_model("$model");
let q = quantize(model, "Q4_0");
export_gguf(model, "$out/q4_0.gguf", #{ type: "Q4_0" });
let a = lowrank(q, model, #{ rank: 8, scale: "diag", text: "/usr/share/common-licenses/GPL-3", chunks: 8 });
export_lora_gguf(a, model, "$out/lowrank.gguf");
let opts = #{ text: "$eval_text", ctx: 512, chunks: 4, activations: "ggml", quiet: true };
let bare = quant_report(q, model, opts);
let compensated = quant_report(q, model, opts + #{ adapter: a });
print(\`tunelab Q4_0: \${bare.ppl}\`);
print(\`tunelab Q4_0 + lowrank: \${compensated.ppl}\`);
RHAI
"$root/target/release/tunelab" run "$out/make.rhai"
ppl() { "$llama/llama-perplexity" -m "$out/q4_0.gguf" "$@" -f "$eval_text" -c 512 --chunks 4 -t "$(nproc)" 2>&1 | grep -o "Final estimate: PPL = [0-9.]*" | grep -o "[0-9.]*$"; }
echo "llama-perplexity Q4_0: $(ppl)"
echo "llama-perplexity Q4_0 + lowrank: $(ppl --lora "$out/lowrank.gguf")"
