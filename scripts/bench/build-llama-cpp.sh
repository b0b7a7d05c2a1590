#!/usr/bin/env bash
# Build llama.cpp's tools (llama-bench, llama-perplexity, llama-quantize, llama-imatrix, llama-completion,
# llama-tokenize, llama-server, and llama-cli without its web UI), the peer the benchmarks compare with. Its
# source comes from the PyPI sdist of llama-cpp-python, which vendors llama.cpp (the package registries are the only network here).
# Builds in $LLAMA_CPP_DIR (default ${XDG_CACHE_HOME:-~/.cache}/tunelab/llama.cpp), keeping the
# build folder so a failed or repeated build resumes; prints the folder holding the tools.
# Needs cmake and a C++ compiler (apt-get install cmake g++). About 15 minutes on 2 cores.
set -euo pipefail
prefix="${LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/llama.cpp}"
tools=(llama-bench llama-perplexity llama-quantize llama-completion llama-tokenize llama-cli llama-imatrix llama-server)
if [ -x "$prefix/build/bin/llama-cli" ] && [ -x "$prefix/build/bin/llama-imatrix" ] \
   && [ -x "$prefix/build/bin/llama-server" ] && [ -f "$prefix/build/.portable" ]; then
    echo "$prefix/build/bin"
    exit 0
fi
mkdir -p "$prefix"
if [ ! -d "$prefix/src" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download --quiet --no-deps llama-cpp-python -d "$work" >&2
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    mv "$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp)" "$prefix/src"
fi
# -march=native also turns on AMX where the CPU lists it, and ggml's AMX code then dies with an
# illegal instruction on VMs that do not enable AMX; so pick the vector extensions explicitly.
has() { grep -qw "$1" /proc/cpuinfo; }
flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
       -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
if has avx512f; then flags+=(-DGGML_AVX512=ON); fi
if has avx512_vnni; then flags+=(-DGGML_AVX512_VNNI=ON); fi
if has avx512_bf16; then flags+=(-DGGML_AVX512_BF16=ON); fi
if has avx512vbmi; then flags+=(-DGGML_AVX512_VBMI=ON); fi
cmake -S "$prefix/src" -B "$prefix/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_BUILD_TESTS=OFF "${flags[@]}" >&2
cmake --build "$prefix/build" -j "$(nproc)" --target "${tools[@]}" >&2
touch "$prefix/build/.portable"
echo "$prefix/build/bin"
