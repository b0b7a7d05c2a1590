#!/usr/bin/env bash
# The KL divergence of a quantized SmolLM2 file from SmolLM2 itself, measured twice on the same
# text: by llama-perplexity (--kl-divergence against tunelab's F32 export, llama.cpp's reference
# kernels: --no-repack, GGML_CPU_TILED_MM=0) and by tunelab's quant_report (activations "ggml":
# rounded to 8 bits as those kernels round them). One JSON line: both means, both top-1 agreements
# and their ratio. Checks that a file tunelab wrote (a mixed one from auto_mix, say) is read and
# run by llama.cpp as tunelab predicts.
#   scripts/bench/kl_vs_llama.sh QUANT.gguf TEXT [chunks=8] [path/to/llama.cpp/build/bin]
set -euo pipefail
cd "$(dirname "$0")/../.."
quant="$(realpath "$1")"; text="$(realpath "$2")"; chunks="${3:-8}"
bin="${4:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/llama.cpp/build/bin}"
model="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet
tunelab=target/release/tunelab
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
printf 'export_gguf(load_model("%s"), "%s/f32.gguf", #{ type: "F32" });\n' "$model" "$tmp" | "$tunelab" >/dev/null
ppl() { GGML_CPU_TILED_MM=0 "$bin/llama-perplexity" -t 2 -c 512 --no-repack --chunks "$chunks" "$@" 2>&1; }
ppl -m "$tmp/f32.gguf" -f "$text" --kl-divergence-base "$tmp/base.kld" >/dev/null
out="$(ppl -m "$quant" --kl-divergence-base "$tmp/base.kld" --kl-divergence)"
kl="$(echo "$out" | sed -n 's/^Mean *KLD: *\([0-9.]*\).*/\1/p')"
top="$(echo "$out" | sed -n 's/^Same top p: *\([0-9.]*\).*/\1/p')"
ours="$(printf 'let r = quant_report("%s", load_model("%s"), #{ text: "%s", ctx: 512, chunks: %s, activations: "ggml", quiet: true });\nprint(`${r.kl_mean} ${r.top1}`);\n' \
  "$quant" "$tmp/f32.gguf" "$text" "$chunks" | "$tunelab")"
read -r our_kl our_top <<<"$ours"
python3 -c "import json; print(json.dumps({'file': '$1', 'chunks': $chunks, 'llama_perplexity_kl': $kl, 'tunelab_kl': $our_kl, 'ratio': $our_kl / $kl, 'llama_perplexity_top1_percent': $top, 'tunelab_top1': $our_top}))"
