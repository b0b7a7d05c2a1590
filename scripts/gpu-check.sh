#!/usr/bin/env bash
# The GPU check: one self-contained script for a machine with an NVIDIA GPU, the CUDA binary
# (scripts/build-cuda.sh) and SmolLM2's GGUF, and no network. It prints the GPU, then runs
# scripts/gpu/check.rhai with the CUDA binary (CPU-vs-GPU parity of logits and LoRA gradients,
# chat and perplexity on the GPU, a LoRA SFT run on SmolLM2 whose loss must fall, and the
# training throughput at batch 8 × 512, rank 8, every linear layer), runs PyTorch + PEFT on the
# same benchmark when Python has torch, transformers and peft, and ends with a table and the ratio.
# Finishes in well under 5 minutes on an H100.
#
#   scripts/gpu-check.sh [--bin target/cuda/release/tunelab] [--model SmolLM2.gguf]
#                        [--device cuda] [--out DIR] [-- key=value ...]
#
# Values after `--` go to check.rhai (e.g. `-- sft_steps=2 bench_batch=1 bench_seq=64` for a quick
# dry run with `--device cpu` on a machine without a GPU).
#
# The binary needs the NVIDIA driver (libcuda.so.1) and the CUDA 13 libraries libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10, libcudart.so.13 and libnvrtc.so.13. PyTorch's CUDA 13
# wheels install them under site-packages/nvidia/cu13/lib; this script finds them there and
# puts them on LD_LIBRARY_PATH. Exit status: 0 all checks passed, 1 a check failed, 2 setup.
set -uo pipefail
cd "$(dirname "$0")/.."

bin="target/cuda/release/tunelab"
model="${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
device="cuda"
out="$(mktemp -d)"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "gpu-check: unknown argument $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "gpu-check: no CUDA binary at $bin; build it with scripts/build-cuda.sh, or pass --bin" >&2; exit 2; }
[ -f "$model" ] || { echo "gpu-check: no model at $model; copy SmolLM2's GGUF there (scripts/fetch-smollm2.sh) or pass --model" >&2; exit 2; }
mkdir -p "$out"

# The CUDA 13 libraries from Python's nvidia wheels (PyTorch's), when there are any.
py="$(command -v python3 || true)"
if [ -n "$py" ]; then
  wheels="$("$py" -c 'import nvidia, os; print(":".join(d for d in (os.path.join(p, "cu13", "lib") for p in nvidia.__path__) if os.path.isdir(d)))' 2>/dev/null || true)"
  [ -n "$wheels" ] && export LD_LIBRARY_PATH="$wheels${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if ldd "$bin" | grep -q 'libcublas.so.13 => not found'; then
  # Elsewhere on the machine (a CUDA 13 toolkit, another Python's wheels)?
  found="$(find /usr/local /opt /usr/lib -name libcublas.so.13 2>/dev/null | head -1)"
  [ -n "$found" ] && export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
missing="$(ldd "$bin" | grep 'not found' | awk '{print $1}' | tr '\n' ' ')"
if [ -n "$missing" ]; then
  echo "gpu-check: the CUDA binary cannot start, missing: $missing" >&2
  echo "  libcuda.so.1 comes with the NVIDIA driver; the others with CUDA 13 (pip install nvidia-cublas nvidia-curand nvidia-cuda-runtime nvidia-cuda-nvrtc, then add site-packages/nvidia/cu13/lib to LD_LIBRARY_PATH)" >&2
  exit 2
fi

echo "== GPU"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  echo "(no nvidia-smi)"
fi
"$bin" --version | sed -n '1p;$p'
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

echo "== tunelab checks ($device)"
start=$SECONDS
timeout 270 "$bin" run scripts/gpu/check.rhai -- model="$model" device="$device" out="$out" "$@" 2>&1 | tee "$out/tunelab.log"
status=${PIPESTATUS[0]}
echo "(tunelab checks: $((SECONDS - start)) s, exit $status)"

echo "== tunelab's benchmark again with its fused CUDA kernels off (TUNELAB_CUDA_FUSED=0)"
composed_json="$(TUNELAB_CUDA_FUSED=0 timeout 120 "$bin" run scripts/bench/sft.rhai -- model="$model" \
  device="$device" targets=all batch=8 seq=512 steps=10 2>"$out/composed.err" | tail -1)"
echo "${composed_json:-(no result: $(tail -1 "$out/composed.err"))}"

echo "== PyTorch + PEFT, the same benchmark"
peer_json=""
if [ -n "$py" ] && "$py" -c 'import torch' 2>/dev/null; then
  start=$SECONDS
  peer_json="$(timeout 150 "$py" scripts/bench/sft_peft_gpu.py 2>"$out/peer.err" | tail -1)"
  echo "${peer_json:-(no result: $(tail -1 "$out/peer.err"))}"
  echo "(peer: $((SECONDS - start)) s)"
else
  echo "(no PyTorch here: only tunelab's figure)"
fi

echo "== Training throughput: batch 8 × 512 tokens, LoRA rank 8 on every linear layer"
ours="$(grep '^BENCH ' "$out/tunelab.log" | tail -1 | cut -d' ' -f2-)"
OURS="$ours" COMPOSED="$composed_json" PEER="$peer_json" "${py:-python3}" - <<'EOF' || true
import json, os
rows = []
for key in ("OURS", "COMPOSED", "PEER"):
    text = os.environ.get(key, "").strip()
    if text:
        try:
            row = json.loads(text)
        except ValueError:
            continue
        if key == "COMPOSED":
            row["impl"] += " (fused CUDA kernels off)"
            row["step_s"] = row.get("step_s_median", "")
        rows.append(row)
if not rows:
    print("(no benchmark figures)")
else:
    print(f"| {'implementation':<58} | {'tokens/s':>9} | {'step s':>7} |")
    print(f"|{'-' * 60}|{'-' * 11}|{'-' * 9}|")
    for r in rows:
        print(f"| {r['impl'][:58]:<58} | {r['tokens_per_s']:>9} | {r['step_s']:>7} |")
    peer = [r for r in rows if r["impl"].startswith("torch")]
    if peer and peer[0]["tokens_per_s"] and rows[0]["impl"].startswith("tunelab"):
        print(f"tunelab / PyTorch+PEFT: {rows[0]['tokens_per_s'] / peer[0]['tokens_per_s']:.2f}x")
EOF

if [ "$status" -eq 0 ]; then echo "GPU CHECK PASSED"; else echo "GPU CHECK FAILED (exit $status)"; fi
[ "$status" -eq 0 ] || exit 1
