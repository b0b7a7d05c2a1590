#!/usr/bin/env bash
# Benchmark: the chapter's LoRA run (scripts/bench/chapter_run.yaml) as a user runs it, by
# `llamafactory-cli train` and by tunelab — the script `tunelab train --print-script` writes for
# the same file, run with `tunelab run` — on SmolLM2-135M-Instruct (tunelab's f32 Hugging Face
# export of the GGUF, so both start from the same weights), f32 on the CPU. Each run in turn,
# never both at once. Prints each wall time (the whole command: start-up, data, model, training,
# saving), the tokens each trained, and the mean loss difference; draws both loss curves on one
# chart.
#   scripts/bench/chapter_run.sh [PNG]          (default docs/img/chapter_run.png)
# Env: TUNELAB_PEERS (the peer venv: scripts/bench/setup-peers.sh), LF_DATA (LLaMA-Factory's
#      data folder, default ../shared/llamafactory-data).
set -euo pipefail
png="${1:-docs/img/chapter_run.png}"
cd "$(dirname "$0")/../.."
lf="${TUNELAB_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/peers}/bin/llamafactory-cli"
[ -x "$lf" ] || { echo "llamafactory-cli not found at $lf: run scripts/bench/setup-peers.sh" >&2; exit 2; }
data="$(realpath "${LF_DATA:-../shared/llamafactory-data}")"
config=scripts/bench/chapter_run.yaml
work="${TMPDIR:-/tmp}/tunelab-chapter-run"
hf="${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/bench/smollm2-hf"
mkdir -p "$work" "$(dirname "$png")"
cargo build --release --quiet
[ -f "$hf/config.json" ] || target/release/tunelab run scripts/bench/hf_folder.rhai -- model="$(scripts/fetch-smollm2.sh)" out="$hf" >&2
overrides=(model_name_or_path="$hf" dataset_dir="$data")
echo "# $config, ${overrides[*]}; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)" >&2
rm -rf "$work/tunelab" "$work/llamafactory"
target/release/tunelab train "$config" "${overrides[@]}" output_dir="$work/tunelab" --print-script >"$work/chapter_run.rhai"
start=$(date +%s.%N)
target/release/tunelab run "$work/chapter_run.rhai" >"$work/tunelab.log" 2>&1
t_tunelab=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
(cd "$work" && "$lf" train "$OLDPWD/$config" "${overrides[@]}" output_dir="$work/llamafactory" >"$work/llamafactory.log" 2>&1)
t_lf=$(echo "$(date +%s.%N) - $start" | bc)
echo "tunelab (script): $t_tunelab s; llamafactory-cli train: $t_lf s; ratio $(echo "scale=3; $t_tunelab / $t_lf" | bc)"
target/release/tunelab run scripts/bench/overlay_curves.rhai -- a="$work/tunelab/trainer_log.jsonl" \
    b="$work/llamafactory/trainer_log.jsonl" png="$png" label_a="tunelab (script)" \
    title="the chapter's LoRA run on SmolLM2-135M-Instruct (alpaca_zh_demo, 20 steps)"
# Trained tokens, as each log counts them (LLaMA-Factory's with include_num_input_tokens_seen).
for who in tunelab llamafactory; do
    echo "$who: $(grep -o '"total_tokens": *[0-9]*' "$work/$who/trainer_log.jsonl" | tail -1)"
done
echo "# chart: $png; logs: $work/*.log" >&2
