#!/usr/bin/env bash
# Build llama.cpp's tools (llama-bench, llama-perplexity, llama-cli, llama-quantize), the peer the
# benchmarks compare with. Its source comes from the PyPI sdist of llama-cpp-python, which vendors
# llama.cpp (the registries are the only network here). Installs into $LLAMA_CPP_DIR
# (default ${XDG_CACHE_HOME:-~/.cache}/tunelab/llama.cpp); prints the bin folder.
# Needs cmake and a C++ compiler (apt-get install cmake g++). Takes ~10-20 minutes on 2 cores.
set -euo pipefail
prefix="${LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/llama.cpp}"
if [ -x "$prefix/bin/llama-bench" ]; then
    echo "$prefix/bin"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps llama-cpp-python -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_INSTALL_PREFIX="$prefix" >&2
cmake --build "$work/build" -j "$(nproc)" --target llama-bench llama-perplexity llama-cli llama-quantize >&2
mkdir -p "$prefix/bin"
find "$work/build/bin" -maxdepth 1 -type f -name 'llama-*' -exec cp {} "$prefix/bin/" \;
find "$work/build" -name '*.so*' -exec cp -P {} "$prefix/bin/" \; 2>/dev/null || true
echo "$prefix/bin"
