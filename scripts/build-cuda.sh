#!/usr/bin/env bash
# Build tunelab's CUDA binary on a machine without a GPU or a system CUDA toolkit.
#
# The CUDA 13.0 compiler, headers and libraries come from PyPI wheels (the CUDA 12 wheels carry no
# nvcc), pinned to 13.0.x: nvcc 13.1+ writes PTX that a CUDA 13.0 driver (the 580 series) cannot
# load. They unpack into one toolkit-shaped tree, nvidia/cu13/. Beside it this script makes the
# folder candle's build expects as CUDA_HOME: bin/include/nvvm linked to the tree, unversioned
# library links, and a link-time stub libcuda.so (the real one comes with the driver at run time).
# The default build stays CPU-only; the CUDA binary lands in its own target folder.
#
#   scripts/build-cuda.sh                 # toolkit in ~/.cache/tunelab/cuda13, binary in target/cuda
#   TUNELAB_CUDA_DIR=/opt/cu13 CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh   # A100
#   scripts/build-cuda.sh --features nccl   # with NCCL, for data-parallel training on several GPUs
#
# CUDA_COMPUTE_CAP (default 90: H100/H200) picks the GPU family candle's quantized kernels are
# compiled for. Running the binary needs the driver and the CUDA 13 libraries (see docs/gpu.md).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
toolkit="${TUNELAB_CUDA_DIR:-$HOME/.cache/tunelab/cuda13}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
wheels="$toolkit/wheels"
home="$toolkit/home"
tree="$wheels/nvidia/cu13"

need() { command -v "$1" >/dev/null || { echo "build-cuda: '$1' is missing; install it ($2)" >&2; exit 1; }; }
need python3 "apt-get install python3 python3-pip"
need gcc "apt-get install build-essential"
need cargo "https://rustup.rs"

# 1. The toolkit from PyPI (≈ 1.2 GB, once).
if [ ! -x "$tree/bin/nvcc" ]; then
  echo "build-cuda: installing the CUDA 13.0 wheels into $wheels"
  python3 -m pip install --quiet --disable-pip-version-check --target "$wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3 \
    nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
fi
[ -x "$tree/bin/nvcc" ] || { echo "build-cuda: $tree/bin/nvcc is missing after the install; remove $wheels and run again" >&2; exit 1; }

# 1b. NCCL for `--features nccl` (multi-GPU training): the version PyTorch 2.11 ships (2.28.9), in
# a folder of its own (pip --target will not add to the toolkit's nvidia/ package folder).
nccl="$toolkit/nccl"
case " $* " in
  *nccl*)
    if [ ! -e "$nccl/nvidia/nccl/lib/libnccl.so.2" ]; then
      echo "build-cuda: installing NCCL 2.28.9 into $nccl"
      python3 -m pip install --quiet --disable-pip-version-check --target "$nccl" --no-deps \
        nvidia-nccl-cu13==2.28.9
    fi
    mkdir -p "$home/lib64"
    ln -sfn "$nccl/nvidia/nccl/lib/libnccl.so.2" "$home/lib64/libnccl.so"
    ;;
esac

# 2. A CUDA_HOME: links into the wheel tree, unversioned .so links, and a libcuda stub.
mkdir -p "$home/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$tree/$d" "$home/$d"; done
for lib in "$tree"/lib/lib*.so.*; do
  base="$(basename "$lib")"
  ln -sfn "$lib" "$home/lib64/${base%%.so.*}.so"
done
if [ ! -f "$home/lib64/stubs/libcuda.so" ]; then
  # Every cu* entry point cuda.h declares (as written and as its version macros rename them)
  # returns CUDA_ERROR_STUB_LIBRARY (34). Only the linker sees this library.
  stub="$home/lib64/stubs/libcuda_stub.c"
  {
    grep -ohE '\bcu[A-Za-z0-9_]+\s*\(' "$tree/include/cuda.h"
    gcc -E -P -I"$tree/include" "$tree/include/cuda.h" | grep -ohE '\bcu[A-Za-z0-9_]+\s*\('
  } | tr -d ' (' | sort -u | awk '{ printf "int %s(void) { return 34; }\n", $1 }' > "$stub"
  gcc -shared -fPIC -o "$home/lib64/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$stub"
fi

# 3. The build, in its own target folder.
export CUDA_HOME="$home" CUDA_PATH="$home"
export PATH="$home/bin:$PATH" NVCC="$home/bin/nvcc"
export CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda}"
export LIBRARY_PATH="$home/lib64:$home/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "build-cuda: nvcc $("$NVCC" --version | grep -oE 'release [0-9.]+'), compute capability $CUDA_COMPUTE_CAP"
cd "$root"
cargo build --release --features cuda "$@"
echo "build-cuda: built $CARGO_TARGET_DIR/release/tunelab"
echo "build-cuda: to run it, put the CUDA 13 libraries on LD_LIBRARY_PATH (docs/gpu.md)"
