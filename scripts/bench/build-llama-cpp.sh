#!/usr/bin/env bash
# Build llama.cpp's tools (llama-bench, llama-perplexity, llama-quantize, llama-completion,
# llama-tokenize), the peer the benchmarks compare with. Its source comes from the PyPI sdist of
# llama-cpp-python, which vendors llama.cpp (the package registries are the only network here).
# Builds in $LLAMA_CPP_DIR (default ${XDG_CACHE_HOME:-~/.cache}/tunelab/llama.cpp), keeping the
# build folder so a failed or repeated build resumes; prints the folder holding the tools.
# Needs cmake and a C++ compiler (apt-get install cmake g++). About 15 minutes on 2 cores.
set -euo pipefail
prefix="${LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tunelab/llama.cpp}"
tools=(llama-bench llama-perplexity llama-quantize llama-completion llama-tokenize)
if [ -x "$prefix/build/bin/llama-completion" ]; then
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
cmake -S "$prefix/src" -B "$prefix/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$prefix/build" -j "$(nproc)" --target "${tools[@]}" >&2
echo "$prefix/build/bin"
