#!/usr/bin/env bash
# The peers the benchmarks run beside tunelab, in one venv outside the repository, at pinned
# versions so two machines measure the same thing: PyTorch + transformers + PEFT, LLaMA-Factory,
# bitsandbytes, gguf (and the openai client). None of them is a tunelab dependency.
#
#   scripts/bench/setup-peers.sh            # creates or completes ${TUNELAB_PEERS:-~/.cache/tunelab/peers}
#
# Everything comes from PyPI. PyPI has no CPU-only torch (the +cpu wheels live on pytorch.org's
# index), so the CUDA wheel and its nvidia-* packages come too (~6 GB); on the CPU it runs as is.
# torch, torchaudio and torchvision are pinned as a matching trio: with the newest torch and an
# older torchaudio, importing llamafactory.data fails ("compiled with different CUDA versions").
set -euo pipefail

peers="${TUNELAB_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/peers}"
python="${PYTHON:-python3}"

if [ ! -x "$peers/bin/python" ]; then
    echo "creating the peer venv in $peers" >&2
    "$python" -m venv "$peers"
fi
pip=("$peers/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -U pip
"${pip[@]}" \
    "torch==2.11.0" "torchaudio==2.11.0" "torchvision==0.26.0" \
    "transformers==5.6.0" "peft==0.18.1" "accelerate==1.11.0" \
    "llamafactory==0.9.5" "datasets==4.0.0" "trl==0.24.0" "tokenizers==0.22.2" \
    "bitsandbytes==0.50.2" "gguf==0.19.0" "numpy==2.4.6" "openai"
"$peers/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
names = ["torch", "transformers", "peft", "llamafactory", "bitsandbytes", "gguf"]
print("peers: " + ", ".join(f"{n} {version(n)}" for n in names))
import torch, transformers, peft, llamafactory, gguf  # each imports
PY
