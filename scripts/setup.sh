#!/usr/bin/env bash
# Create .venv with speckv and its dependencies (CPU torch wheel here, CUDA where present), and the
# llama.cpp backend (llama-cpp-python, compiled here for this CPU: about 3 minutes on 2 cores, then
# cached by pip). Without a C++ toolchain the llama.cpp build is skipped and speckv runs on transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "building the llama.cpp backend (llama-cpp-python, native CPU kernels; a few minutes, once)"
  start=$(date +%s)
  # Only the library: no tools, examples, tests, or network code; kernels for this CPU (AVX2/AVX-512).
  if CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
     CMAKE_BUILD_PARALLEL_LEVEL=$(nproc 2>/dev/null || echo 2) \
     .venv/bin/python -m pip install -q -e '.[llamacpp]' >.venv/llamacpp-build.log 2>&1; then
    echo "llama.cpp backend built in $(( $(date +%s) - start )) s"
  else
    echo "note: the llama.cpp backend did not build (see .venv/llamacpp-build.log); speckv runs on transformers" >&2
  fi
fi
echo "speckv environment ready: .venv"
