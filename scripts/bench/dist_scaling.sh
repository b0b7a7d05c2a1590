#!/usr/bin/env bash
# Benchmark: data-parallel CPU training on one machine. The same LoRA fine-tune of SmolLM2 (global
# batch 4 × 2 micro-batches, cutoff 256, rank 8, alpaca_en_demo) as 1 rank using every core and as
# N ranks under MPI sharing them (each rank gets cores/N threads), in one invocation: tokens/s over
# all ranks and the share of rank 0's time spent in the all-reduce. One JSON line per run.
# Needs a tunelab built with --features mpi (this script builds it) and Open MPI.
#   scripts/bench/dist_scaling.sh [steps=10] [ranks=2] [targets=q_proj,v_proj]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-10}"
ranks="${2:-2}"
targets="${3:-q_proj,v_proj}"
model="$(scripts/fetch-smollm2.sh)"
data="${LLAMAFACTORY_DATA:-../shared/llamafactory-data}"
[ -e "$data/alpaca_en_demo.json" ] || { echo "dist_scaling: no $data/alpaca_en_demo.json; set LLAMAFACTORY_DATA to LLaMA-Factory's data folder" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "dist_scaling: mpirun is missing (Debian: apt install openmpi-bin libopenmpi-dev libclang-dev)" >&2; exit 1; }
cargo build --release --quiet --features mpi
echo "# $(basename "$model"); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)" >&2
args=(-- model="$model" data="$data" steps="$steps" targets="$targets" accumulation="$ranks")
RAYON_NUM_THREADS="$(nproc)" target/release/tunelab run scripts/bench/dist_scaling.rhai "${args[@]}" out=runs/bench_dist_1
target/release/tunelab launch --nproc-per-node "$ranks" -- run scripts/bench/dist_scaling.rhai "${args[@]}" out="runs/bench_dist_$ranks"
