#!/usr/bin/env bash
# Benchmark: LLaMA-Factory's own example config (examples/train_lora/llama3_lora_sft.yaml, kept
# verbatim in tests/fixtures/llamafactory/) trained by `tunelab train` and by `llamafactory-cli
# train` on SmolLM2-135M-Instruct, with the same key=value overrides after the file for both:
# the model (an f32 Hugging Face folder exported from the GGUF, so both start from the same
# weights), LLaMA-Factory's demo data, the chatml template (SmolLM2's; Llama 3's special tokens
# are not in its vocabulary), STEPS steps logged every step, and bf16=false (both in f32 on the
# CPU). The two loss curves are drawn on one chart and compared step by step. Each run in turn,
# never both at once; wall times printed.
#   scripts/bench/lf_overlay.sh [PNG]         (default docs/img/lf_overlay.png)
# Env: STEPS (30), TUNELAB_PEERS (the peer venv: tests/fixtures/encoding/PEERS.md),
#      LF_DATA (LLaMA-Factory's data folder, default ../shared/llamafactory-data).
set -euo pipefail
png="${1:-docs/img/lf_overlay.png}"
cd "$(dirname "$0")/../.."
steps="${STEPS:-30}"
lf="${TUNELAB_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/peers}/bin/llamafactory-cli"
[ -x "$lf" ] || { echo "llamafactory-cli not found at $lf (tests/fixtures/encoding/PEERS.md installs it)" >&2; exit 2; }
data="$(realpath "${LF_DATA:-../shared/llamafactory-data}")"
config=tests/fixtures/llamafactory/llama3_lora_sft.yaml
work="${TMPDIR:-/tmp}/tunelab-lf-overlay"
hf="$work/SmolLM2-135M-Instruct"
mkdir -p "$work" "$(dirname "$png")"
cargo build --release --quiet
[ -f "$hf/config.json" ] || target/release/tunelab export --model "$(scripts/fetch-smollm2.sh)" --out "$hf" --dtype f32
overrides=(model_name_or_path="$hf" dataset_dir="$data" template=chatml max_steps="$steps"
    logging_steps=1 save_steps=100000 bf16=false)
echo "# $config, ${overrides[*]}; $(nproc) cores; $(date -u +%FT%TZ)" >&2
rm -rf "$work/tunelab" "$work/llamafactory"
start=$(date +%s.%N)
target/release/tunelab train "$config" "${overrides[@]}" output_dir="$work/tunelab" >"$work/tunelab.log" 2>&1
echo "tunelab train: $(echo "$(date +%s.%N) - $start" | bc) s" >&2
start=$(date +%s.%N)
(cd "$work" && "$lf" train "$OLDPWD/$config" "${overrides[@]}" output_dir="$work/llamafactory" >"$work/llamafactory.log" 2>&1)
echo "llamafactory-cli train: $(echo "$(date +%s.%N) - $start" | bc) s" >&2
target/release/tunelab run scripts/bench/overlay_curves.rhai -- a="$work/tunelab/trainer_log.jsonl" \
    b="$work/llamafactory/trainer_log.jsonl" png="$png" \
    title="llama3_lora_sft.yaml on SmolLM2-135M-Instruct (same file, same overrides)"
echo "# chart: $png; logs: $work/*.log" >&2
