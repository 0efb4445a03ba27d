#!/usr/bin/env bash
# build_llama_server.sh - llama.cpp's own HTTP server (llama-server: parallel
# slots, continuous batching), built from the llama.cpp sources vendored in
# the PyPI sdist of llama-cpp-python 0.3.36 (the same llama.cpp the Python
# binding runs), for this CPU (GGML_NATIVE=ON). The Python package's
# `python -m llama_cpp.server` serves one request at a time (a global lock),
# so the concurrent rows need this to be a fair peer.
# Where setup_bench_venv.sh found llama.cpp's AMX path faulting (the marker
# $CACHE/llama-cpp-no-amx), the server is built without AMX too.
#   -> ${VLLM_METAL_CACHE:-~/.cache/vllm-metal}/llama-server-0.3.36/bin/llama-server
set -euo pipefail
CACHE="${VLLM_METAL_CACHE:-$HOME/.cache/vllm-metal}"
V="$CACHE/venv-bench"
D="$CACHE/llama-server-0.3.36"
flavor=native
if [ -f "$CACHE/llama-cpp-no-amx" ]; then
    flavor=no-amx
    export CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"   # (as setup_bench_venv.sh's rebuild)
    export CXXFLAGS="$CFLAGS"
fi
if [ -x "$D/bin/llama-server" ] && [ "$(cat "$D/bin/flavor" 2>/dev/null || echo native)" = "$flavor" ]; then
    echo "$D/bin/llama-server"; exit 0
fi
rm -rf "$D/build"   # (CMake keeps the first configure's flags in its cache)
mkdir -p "$D/src"
if [ ! -f "$D/src/CMakeLists.txt" ]; then
    "$V/bin/pip" download -q --no-deps --no-binary llama-cpp-python -d "$D/dl" llama-cpp-python==0.3.36
    tar -xzf "$D"/dl/llama_cpp_python-0.3.36.tar.gz -C "$D/src" --strip-components=1
fi
L="$D/src/vendor/llama.cpp"
cmake -S "$L" -B "$D/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >/dev/null
cmake --build "$D/build" --target llama-server -j "$(nproc)" >/dev/null
mkdir -p "$D/bin" && cp "$D/build/bin/llama-server" "$D/bin/" && echo "$flavor" > "$D/bin/flavor"
echo "$D/bin/llama-server"
