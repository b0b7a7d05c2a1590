#!/usr/bin/env bash
# Benchmark: load + convert 1,000,000 alpaca records from JSON Lines.
# tunelab against Hugging Face `datasets` (load_dataset("json") + LLaMA-Factory's alpaca
# conversion), run side by side in the same invocation; one JSON line per result, then the ratio.
#   scripts/bench/data_load.sh [N=1000000]
# Needs a release build (cargo build --release); the datasets side runs when `datasets` imports.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-1000000}"
# The generated file is kept in the cache folder (generating 1M records takes minutes).
cache="${TUNELAB_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab}/bench"
file="$cache/alpaca-$n.jsonl"
if [ ! -s "$file" ]; then
    mkdir -p "$cache"
    python3 scripts/bench/gen_alpaca.py "$file.part" "$n" && mv "$file.part" "$file"
fi
echo "# $(du -h "$file" | cut -f1) of JSON Lines, $n records; $(nproc) cores; $(date -u +%FT%TZ)" >&2
cargo build --release --quiet
ours=$(target/release/tunelab run scripts/bench/data_load.rhai -- path="$file")
echo "$ours"
if python3 -c "import datasets" 2>/dev/null; then
    theirs=$(python3 scripts/bench/data_load_hf.py "$file")
    echo "$theirs"
    python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"bench": "data_load", "ratio_records_per_s": round(a["records_per_s"] / b["records_per_s"], 2),
                  "ratio_peak_rss": round(a["peak_rss_mb"] / b["peak_rss_mb"], 2)}))
PY
else
    echo "# datasets is not installed: pip install datasets to run the comparison" >&2
fi
